"""bstar's log lines and progress in the Prefect UI: a forwarding handler and one progress helper.

    from bstar import logs
    logs.install()          # once per process (bstar.tasks.common does it at import)

    log = logging.getLogger(__name__)       # any bstar.* module
    log.info("sample round: %d candidates", n)   # console, and the run's Logs tab inside a run

    with logs.progress(total=len(rows), desc="sample k=8 t=0.7", unit="gen") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

`install()` puts one handler on the `bstar` logger that hands every record to Prefect's
`APILogHandler` when a Prefect flow run or task run is active in this process (the record lands
in that run's Logs tab, on the task run when inside a task), and drops it silently otherwise:
plain scripts, tests and torchrun children see no "missing flow run id" warnings. It
also sets the `bstar` logger to INFO when it has no level of its own. The handler prints
nothing: the console line comes from Prefect's console handler on the root logger, as for any
library, so a record is printed at most once.

`progress(...)` returns a tqdm-compatible bar (`update`, `n`, `set_postfix`, `close`, a context
manager). It draws the terminal bar unless disabled; inside a Prefect run it also keeps a Prefect
progress artifact up to date (created at 0 %, updated at most every `artifact_every_s` seconds
and once more on close) and logs a one-line progress message (`sample k=8 t=0.7: 1200/4000
(30%), 41/s, eta 68s`) at most every `log_every_s` seconds. Updates cost a clock read; an API
that cannot be reached turns the artifact off for that bar (logged at debug), never the loop.
"""

from __future__ import annotations

import logging
import sys
import time

ROOT_LOGGER = "bstar"
ARTIFACT_EVERY_S = 5.0  # progress artifact updates: often enough for a UI, rare enough to cost nothing
LOG_EVERY_S = 30.0  # progress log lines: one every half minute reads as a heartbeat, not noise

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# forwarding bstar records to the run's logs
# ----------------------------------------------------------------------------------------------


def in_run() -> bool:
    """Whether a Prefect flow run or task run is active here (in this thread's context)."""
    # Without prefect.context imported there can be no run: no import (and no cost) for plain code.
    ctx = sys.modules.get("prefect.context")
    if ctx is None:
        return False
    return ctx.TaskRunContext.get() is not None or ctx.FlowRunContext.get() is not None


class RunLogForwarder(logging.Handler):
    """Hands records to Prefect's API log handler inside a run; drops them outside one."""

    def __init__(self) -> None:
        super().__init__()
        self._api = None  # Prefect's APILogHandler, made on first use (importing it imports prefect)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not in_run():
                _last_resort(record)
                return
            if _has_api_handler(logging.getLogger(ROOT_LOGGER)):
                return
            if self._api is None:
                from prefect.logging.handlers import APILogHandler

                self._api = APILogHandler()
            # APILogHandler finds the flow / task run in the context and queues the record for
            # its background batch sender: no request is made in this thread
            self._api.emit(record)
        except Exception:  # noqa: BLE001 - a log line must never break the code that logs it
            pass


def _last_resort(record: logging.LogRecord) -> None:
    """Outside a run, keep what logging did before this handler existed: with no other handler on
    the way to the root, Python's last-resort handler prints WARNING and above to stderr."""
    if record.levelno < logging.WARNING or logging.lastResort is None:
        return
    logger = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not None and not getattr(h, "_bstar_forwarder", False) for h in logger.handlers):
            return  # someone else prints it
        if not logger.propagate:
            break
        logger = logger.parent
    logging.lastResort.handle(record)


def _has_api_handler(logger: logging.Logger) -> bool:
    """True when Prefect itself sends this logger's records (PREFECT_LOGGING_EXTRA_LOGGERS=bstar):
    forwarding them as well would put every line twice in the UI."""
    return any(type(h).__name__ == "APILogHandler" for h in logger.handlers)


def install() -> None:
    """Attach the forwarder to the `bstar` logger and let its INFO lines through; idempotent."""
    logger = logging.getLogger(ROOT_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)  # the root logger's WARNING would drop every stage line
    if not any(getattr(h, "_bstar_forwarder", False) for h in logger.handlers):
        handler = RunLogForwarder()
        handler._bstar_forwarder = True  # marks it across reloads of this module
        logger.addHandler(handler)


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------


def rate_line(desc: str, n: int, total: int | None, elapsed: float, unit: str = "it") -> str:
    """`desc: 1200/4000 (30%), 41/s, eta 68s` (no total: `desc: 1200 it, 41/s, 29s`)."""
    rate = n / elapsed if elapsed > 0 else 0.0
    speed = f"{rate:.3g}/s" if rate < 100 else f"{rate:.0f}/s"
    if not total:
        return f"{desc}: {n} {unit}, {speed}, {elapsed:.0f}s"
    pct = 100.0 * n / total
    if n >= total:
        return f"{desc}: {n}/{total} ({pct:.0f}%), {speed}, {elapsed:.0f}s"
    eta = f"eta {(total - n) / rate:.0f}s" if rate > 0 else "eta ?"
    return f"{desc}: {n}/{total} ({pct:.0f}%), {speed}, {eta}"


class Progress:
    """A progress bar that also reports to the Prefect run it runs in (see the module docstring).

    `n` counts whatever `update` was told, even when the terminal bar is disabled."""

    def __init__(self, total: int | None, desc: str, *, disable: bool = False, unit: str = "it",
                 logger: logging.Logger | None = None, artifact_every_s: float = ARTIFACT_EVERY_S,
                 log_every_s: float = LOG_EVERY_S, **tqdm_kwargs):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.log = logger or logging.getLogger(f"{ROOT_LOGGER}.progress")
        self.artifact_every_s, self.log_every_s = artifact_every_s, log_every_s
        self.closed = False
        self._bar = None
        if not disable:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, **tqdm_kwargs)
        # a disabled bar is a quiet call (a sub-step its caller reports on): nothing in the UI either
        self.report = not disable and in_run()
        self._t0 = self._last_artifact = self._last_log = time.monotonic()
        self._artifact_id = None
        self._logged = False
        if self.report:
            install()
            self._artifact_id = self._call(_create_artifact, self._percent(), desc)

    # -- the tqdm surface the loops use --------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        if self.report:
            now = time.monotonic()
            if self._artifact_id is not None and now - self._last_artifact >= self.artifact_every_s:
                self._last_artifact = now
                self._call(_update_artifact, self._artifact_id, self._percent())
            if now - self._last_log >= self.log_every_s:
                self._last_log, self._logged = now, True
                self.info(self.log, "%s", rate_line(self.desc, self.n, self.total, now - self._t0, self.unit))

    def set_postfix(self, **kwargs) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**kwargs)

    def info(self, logger: logging.Logger, msg: str, *args) -> None:
        """`logger.info(msg, *args)` without breaking the terminal bar: it is cleared while the
        console line is written, then drawn again."""
        if self._bar is None:
            logger.info(msg, *args)
            return
        with self._bar.external_write_mode():
            logger.info(msg, *args)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        if not self.report:
            return
        if self._artifact_id is not None:
            self._call(_update_artifact, self._artifact_id, self._percent())
        if self._logged:  # a long loop: say how it ended (short ones are told by their stage's line)
            self.log.info("%s", rate_line(self.desc, self.n, self.total, time.monotonic() - self._t0, self.unit))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # -- helpers ---------------------------------------------------------------------------------
    def _percent(self) -> float:
        if not self.total:  # nothing to do (or an unknown amount): done once closed
            return 100.0 if self.closed else 0.0
        return max(0.0, min(100.0, 100.0 * self.n / self.total))

    def _call(self, call, *args):
        """One artifact call; on any failure the artifact is off for this bar, the loop goes on."""
        try:
            return call(*args)
        except Exception as err:  # noqa: BLE001 - server away, timeout, a Prefect without artifacts
            _log.debug("progress artifact of %r turned off: %s: %s", self.desc, type(err).__name__, err)
            self._artifact_id = None
            return None


def _create_artifact(percent: float, desc: str):
    from prefect.artifacts import create_progress_artifact

    # _sync: the loop is synchronous code even when an event loop runs in its thread
    return create_progress_artifact(percent, description=desc, _sync=True)


def _update_artifact(artifact_id, percent: float) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(artifact_id, percent, _sync=True)


def progress(total: int | None, desc: str, disable: bool = False, unit: str = "it", **kwargs) -> Progress:
    """A `Progress` bar over `total` units named `desc`: what every long bstar loop uses instead
    of tqdm. Other keyword arguments: `logger` (default `bstar.progress`), `artifact_every_s`,
    `log_every_s`, and tqdm's own (`leave`, `dynamic_ncols`, ...)."""
    return Progress(total, desc, disable=disable, unit=unit, **kwargs)
