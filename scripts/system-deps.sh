#!/usr/bin/env bash
# System packages the project needs beyond Python: bubblewrap (the code-verifier sandbox) and
# Chromium (the report's browser test). Installed with apt when missing and we may; otherwise a
# warning, and the features that need them refuse with a clear message.
set -u
want=()
command -v bwrap >/dev/null 2>&1 || want+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || want+=(chromium)

[ ${#want[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "installing system packages: ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null 2>&1 \
      || echo "warning: could not install ${want[*]}" >&2
    exit 0
  fi
fi
echo "warning: missing system packages (${want[*]}); install them for the code sandbox and report tests" >&2
