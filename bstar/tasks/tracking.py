"""The `track-round` task: after a round is in the lake, mirror it to MLflow / TensorBoard.

    track_round_task(run_id, iteration, summary, cfg.to_json())   # in a flow, after each round

Does nothing unless the config's `tracking` section names a tracker (off by default). The
round's rows of the lake's `metrics` table are sent along with `summary`. A tracker that cannot
be reached is retried twice; after that the task logs a WARNING naming the tracker and where it
writes, and returns False: the round is safe in the lake, so the run goes on. See
docs/tracking.md.
"""

from __future__ import annotations

import logging
import os

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from bstar.tasks.common import lake_of, load_cfg

RETRIES = 2
RETRY_DELAY_S = 5
# MLflow's HTTP client retries 7 times with exponential backoff and waits 120 s per request by
# default: minutes of a stalled run per round while a server is down. These shorter defaults
# apply unless the variables are set; the task's own retries cover a short outage.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
METRIC_COLUMNS = ["split", "name", "k", "s", "value"]
# bstar.* records reach the task run's logs inside a run (bstar.logs), and plain logging outside one
log = logging.getLogger(__name__)


def lake_rows(cfg, run_id: str, iteration: int) -> list[dict]:
    """The round's rows of the `metrics` table (none when its evaluation wrote none)."""
    lake = lake_of(cfg)
    if not lake.exists("metrics", run_id, iteration):
        return []
    return lake.read("metrics", run_id, iteration).select(METRIC_COLUMNS).to_dicts()


def _last_attempt() -> bool:
    # run_count is 1 on the first attempt: before the last one, re-raising lets Prefect retry;
    # called outside a run (`.fn`) there is no retry to wait for
    ctx = TaskRunContext.get()
    return ctx is None or ctx.task_run.run_count > ctx.task.retries


@task(name="track-round", task_run_name="{run_id}-track-{iteration}", cache_policy=NO_CACHE,
      persist_result=False, retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def track_round_task(run_id: str, iteration: int, summary: dict, cfg_json: str) -> bool | None:
    """Send round `iteration` of `run_id` to the configured trackers. None: tracking is off;
    True: sent; False: a tracker failed after the retries (logged as a warning)."""
    from bstar.tracking import TrackingError, config_params, track_round

    cfg = load_cfg(cfg_json)
    tracking = cfg.tracking
    if not tracking.enabled:
        return None
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        rows = lake_rows(cfg, run_id, iteration)
        final = iteration == cfg.iterations
        done = track_round(tracking, run_id, iteration, {**summary, "metrics": rows}, config_params(cfg), final)
    except Exception as err:  # noqa: BLE001 - a tracker outage must not fail a run whose data is safe
        missing = isinstance(err, TrackingError) and all(isinstance(e, ImportError) for _, _, e in err.failures)
        if not (missing or _last_attempt()):
            raise  # Prefect retries the task
        if isinstance(err, TrackingError):
            for name, where, cause in err.failures:
                log.warning("round %d of %s was not sent to %s at %s: %s: %s (it is in the lake)",
                            iteration, run_id, name, where, type(cause).__name__, cause)
        else:
            log.warning("round %d of %s was not sent to the trackers (%s): %s: %s (it is in the lake)",
                        iteration, run_id, tracking_targets(tracking), type(err).__name__, err)
        return False
    log.info("round %d of %s sent to %s", iteration, run_id, ", ".join(f"{k} ({v})" for k, v in done.items()))
    return True


def tracking_targets(tracking) -> str:
    parts = []
    if tracking.mlflow_uri:
        parts.append(f"mlflow at {tracking.mlflow_uri}")
    if tracking.tensorboard_dir:
        parts.append(f"tensorboard at {tracking.tensorboard_dir}")
    return ", ".join(parts)
