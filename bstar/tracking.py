"""Mirror each round's metrics and the run's configuration to MLflow and TensorBoard.

The lake stays the source of truth; the trackers get a copy, so researchers can follow a run in
the tools they already watch (docs/tracking.md). Both are optional and off by default:

    from bstar.config import TrackingConfig
    from bstar.tracking import config_params, round_metrics, track_round

    tracking = TrackingConfig(mlflow_uri="http://127.0.0.1:5000", tensorboard_dir="runs/tb")
    track_round(tracking, "smoke-1", 1, summary, params=config_params(cfg))

`round_metrics` names a round's scalars (`search/temperature`, `test-arith/pass_at_1`, ...);
`track_round` writes them with step = the iteration. It is safe to call again for a round that
was already sent (a retried task, a resumed run): points already there are not written twice.
The packages come with the optional extra: `pip install 'bstar[tracking]'`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Iterable

EXTRA_HINT = "pip install 'bstar[tracking]'"
RUN_ID_TAG = "bstar.run_id"
# MLflow's own limits (mlflow.utils.validation): longer param values or keys are rejected,
# and one log_batch call takes at most this many params / metrics.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# The search's outcome (bstar.flows.search / balance.GRID_COLUMNS) is grouped under `search/`.
SEARCH_KEYS = ("temperature", "threshold", "balance_score", "n_selected", "n_unique_correct", "n_queries")
# Bookkeeping, not measurements: the step itself, and how many rows the lake got.
SKIPPED_KEYS = {"iteration", "n_metrics", "metrics"}
CONFIG_TEXT_TAG = "config"


class TrackingError(RuntimeError):
    """One or more trackers failed; `failures` holds (tracker, where, error) for each."""

    def __init__(self, failures: list[tuple[str, str, BaseException]]):
        self.failures = failures
        super().__init__("; ".join(f"{name} at {where}: {type(err).__name__}: {err}" for name, where, err in failures))


# -- names and values --------------------------------------------------------------------------


def metric_name(name: str) -> str:
    """A name both MLflow and TensorBoard accept: letters, digits and `_-./ ` only (MLflow
    rejects `@` and brackets), no empty path segments (MLflow treats names as paths)."""
    name = name.replace("@", "_at_")
    name = re.sub(r"\[([^\]]*)\]", r"_\1", name)  # reward@k-s[prm] -> reward_at_k-s_prm
    name = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)
    name = "/".join(part for part in name.split("/") if part not in ("", ".", ".."))
    return name[:MAX_KEY]


def _number(value: Any) -> float | None:
    """The value as a float, or None for anything that is not a finite number (strings, None,
    NaN: a tracker cannot plot them)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def row_name(row: dict) -> str:
    """The tracker name of one lake `metrics` row (split, name, k, s): `{split}/{name}` with the
    K and S placeholders filled in. The greedy Pass@1 is `pass@1` (the headline number); the
    sampled Pass@1 is `sampled_pass@1`, so the two never share a name."""
    name, k, s = row["name"], row.get("k"), row.get("s")
    if name.startswith("greedy_pass@1"):
        name = name.removeprefix("greedy_")
    elif name.startswith("pass@k") and not name.startswith("pass@k-s") and k == 1:
        name = "sampled_" + name
    if k is not None and "@k-s" in name and s is not None:
        name = name.replace("@k-s", f"@{k}-{s}")
    elif k is not None and "@k" in name:
        name = name.replace("@k", f"@{k}")
    elif k is not None and "@" not in name:
        name = f"{name}@{k}"  # e.g. queries_short_of_k at K=4
    split = row.get("split")
    return metric_name(f"{split}/{name}" if split else name)


def round_metrics(summary: dict) -> dict[str, float]:
    """The round's scalars by tracker name.

    `summary` is what a round returns (bstar.flows.iteration: the search's chosen configuration,
    `selected`, `policy`, and `compute_metrics`' `pass@1` per split) or the start evaluation's
    metrics dict. Optionally `summary["metrics"]` holds the round's rows of the lake's `metrics`
    table (dicts with split, name, k, s, value): they add Pass@K, Reward@K-S, their standard
    errors and the monitoring counts. Strings (the policy path), None and NaN are skipped."""
    out: dict[str, float] = {}
    for row in summary.get("metrics") or []:
        value = _number(row.get("value"))
        if value is not None:
            out[row_name(row)] = value
    for key, value in summary.items():
        if key in SKIPPED_KEYS:
            continue
        if isinstance(value, dict):  # a per-split mapping, e.g. pass@1: {test-arith: 0.02}
            for split, v in value.items():
                if _number(v) is not None:
                    out[metric_name(f"{split}/{key}")] = _number(v)
            continue
        if _number(value) is None:
            continue
        out[metric_name(f"search/{key}" if key in SEARCH_KEYS else key)] = _number(value)
    return out


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):  # data.test.0.name: one entry per test dataset
            _flatten(v, f"{prefix}.{i}", out)
    else:  # scalars, and lists of scalars kept whole: search.temperatures = [0.6,1.0]
        out[prefix] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def config_params(cfg) -> dict[str, str]:
    """The run config (a RunConfig) as dotted keys → strings, from `cfg.to_json()` so storage
    secrets stay masked; values cut to MLflow's param length limit."""
    flat: dict[str, str] = {}
    _flatten(json.loads(cfg.to_json()), "", flat)
    return {metric_name(k): v[:MAX_PARAM_VALUE] for k, v in flat.items()}


# -- MLflow ------------------------------------------------------------------------------------


def _mlflow():
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ImportError(f"tracking.mlflow_uri is set but mlflow is not installed: {EXTRA_HINT}") from err
    return MlflowClient, Metric, Param


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - created meanwhile by another run: use that one
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted: restore it, or set tracking.experiment")
    return exp.experiment_id


def find_mlflow_run(client, experiment_id: str, run_id: str):
    """The active MLflow run tagged `bstar.run_id = run_id`, or None."""
    if "'" in run_id:
        raise ValueError(f"run id {run_id!r} cannot be searched for in MLflow (it contains a quote)")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                              max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _chunks(items: list, n: int) -> Iterable[list]:
    return (items[i:i + n] for i in range(0, len(items), n))


def _logged_at(client, mlflow_run, keys: Iterable[str], step: int) -> set[str]:
    """The keys among `keys` that already have a point at `step` (a retried or resumed round)."""
    present = set(mlflow_run.data.metrics)  # keys never logged need no history request
    return {k for k in keys if k in present and any(m.step == step for m in client.get_metric_history(mlflow_run.info.run_id, k))}


def track_mlflow(uri: str, experiment: str, run_id: str, iteration: int, metrics: dict[str, float],
                 params: dict[str, str] | None = None, final: bool = False) -> str:
    """Send one round to MLflow; returns the MLflow run id. The MLflow run is found by its tag
    (created on first use), so every round of a bstar run, resumed or retried, lands in one."""
    MlflowClient, Metric, Param = _mlflow()
    client = MlflowClient(tracking_uri=uri)  # no global mlflow state: several runs may share a process
    exp_id = _experiment_id(client, experiment)
    run = find_mlflow_run(client, exp_id, run_id)
    if run is None:
        run = client.create_run(exp_id, run_name=run_id, tags={RUN_ID_TAG: run_id})
    mlflow_id = run.info.run_id
    if params and not run.data.params:  # once: MLflow refuses to change a logged param
        for chunk in _chunks([Param(k, v) for k, v in params.items()], PARAMS_PER_BATCH):
            client.log_batch(mlflow_id, params=chunk)
    done = _logged_at(client, run, metrics, iteration)
    now = int(time.time() * 1000)
    points = [Metric(k, v, now, iteration) for k, v in metrics.items() if k not in done]
    for chunk in _chunks(points, METRICS_PER_BATCH):
        client.log_batch(mlflow_id, metrics=chunk)
    if final:
        client.set_terminated(mlflow_id, "FINISHED")
    return mlflow_id


# -- TensorBoard -------------------------------------------------------------------------------


def _summary_writer():
    try:
        import tensorboard  # noqa: F401 - torch's writer needs it; say which extra brings it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(f"tracking.tensorboard_dir is set but tensorboard is not installed: {EXTRA_HINT}") from err
    return SummaryWriter


def tensorboard_logdir(tensorboard_dir: str, run_id: str) -> str:
    return os.path.join(tensorboard_dir, run_id)


def read_tensorboard(logdir: str):
    """Every event in `logdir`, loaded (EventAccumulator), or None when there is none yet."""
    if not os.path.isdir(logdir):
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # keep every point (the default samples 10,000), and do not drop points that arrive out of
    # order: a round re-sent after a later one is still a real point
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False)
    acc.Reload()
    return acc


def config_markdown(params: dict[str, str]) -> str:
    rows = [f"| {k} | {v.replace('|', '&#124;')} |" for k, v in sorted(params.items())]
    return "\n".join(["| key | value |", "|---|---|", *rows])


def track_tensorboard(tensorboard_dir: str, run_id: str, iteration: int, metrics: dict[str, float],
                      params: dict[str, str] | None = None) -> str:
    """Write one round as scalars (global_step = iteration) under `{tensorboard_dir}/{run_id}`,
    and the config as a text summary once; returns the run's log directory."""
    SummaryWriter = _summary_writer()
    logdir = tensorboard_logdir(tensorboard_dir, run_id)
    acc = read_tensorboard(logdir)
    tags = acc.Tags() if acc else {"scalars": [], "tensors": []}
    done = {t for t in metrics if t in tags["scalars"] and any(e.step == iteration for e in acc.Scalars(t))}
    text = params and not any(t.startswith(f"{CONFIG_TEXT_TAG}/") for t in tags["tensors"])
    new = {k: v for k, v in metrics.items() if k not in done}
    if not (new or text):  # all there already: no empty event file per resend
        return logdir
    writer = SummaryWriter(log_dir=logdir)
    try:
        for name, value in new.items():
            writer.add_scalar(name, value, global_step=iteration)
        if text:
            writer.add_text(CONFIG_TEXT_TAG, config_markdown(params), global_step=0)
    finally:
        writer.close()  # flushed and closed: the next round, or a reader, sees complete files
    return logdir


# -- both --------------------------------------------------------------------------------------


def track_round(tracking, run_id: str, iteration: int, summary: dict, params: dict | None = None,
                final: bool = False) -> dict[str, str]:
    """Send one round (`summary`, see round_metrics) to every tracker `tracking` (a
    TrackingConfig) names; `params` (config_params) are sent once per run; `final` marks the
    MLflow run finished. Every configured tracker is tried; if any failed, TrackingError lists
    them (those that worked keep their points, and a retry does not write them twice).
    Returns {tracker: where it wrote} for those that worked."""
    metrics = round_metrics(summary)
    done: dict[str, str] = {}
    failures: list[tuple[str, str, BaseException]] = []
    if tracking.mlflow_uri:
        try:
            done["mlflow"] = track_mlflow(tracking.mlflow_uri, tracking.experiment, run_id, iteration, metrics,
                                          params, final)
        except Exception as err:  # noqa: BLE001 - still try TensorBoard; reported together below
            failures.append(("mlflow", tracking.mlflow_uri, err))
    if tracking.tensorboard_dir:
        try:
            done["tensorboard"] = track_tensorboard(tracking.tensorboard_dir, run_id, iteration, metrics, params)
        except Exception as err:  # noqa: BLE001
            failures.append(("tensorboard", tracking.tensorboard_dir, err))
    if failures:
        raise TrackingError(failures)
    return done
