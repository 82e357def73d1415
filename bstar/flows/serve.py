"""Serve the deployments of `deployments/prefect.yaml` to the Prefect server in PREFECT_API_URL.

    PREFECT_API_URL=http://127.0.0.1:4200/api bstar serve [--file deployments/prefect.yaml] [--gpu-slots 1]

The serving process runs each triggered flow run in a subprocess, so the UI can start, schedule
and retry runs. GPU stages carry the `gpu` tag; a tag concurrency limit of `--gpu-slots` makes
them queue for the device instead of competing for its memory.
"""

from __future__ import annotations

from pathlib import Path

import yaml

GPU_TAG = "gpu"


def read_deployments(path: str | Path) -> list[dict]:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    deployments = spec.get("deployments") or []
    if not deployments:
        raise ValueError(f"{path}: no deployments declared")
    for d in deployments:
        if "name" not in d or "entrypoint" not in d:
            raise ValueError(f"{path}: every deployment needs `name` and `entrypoint`; got {sorted(d)}")
    return deployments


def ensure_gpu_slots(slots: int) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


_SCHEDULE_FIELDS = ("interval", "cron", "rrule", "timezone", "anchor_date", "day_or", "active", "parameters", "slug")


def to_schedules(entries: list[dict] | None, where: str = "schedules") -> list | None:
    """`prefect.yaml` schedule entries ({cron: ..., timezone: ...}) as `prefect.schedules.Schedule`s.

    `prefect deploy` reads them in this flat form; `flow.to_deployment` does not, so convert here.
    """
    if not entries:
        return None
    from datetime import timedelta

    from prefect.schedules import Schedule

    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or sum(k in e for k in ("interval", "cron", "rrule")) != 1:
            raise ValueError(f"{where}[{i}]: give exactly one of `cron`, `interval` (seconds) or `rrule`; got {e!r}")
        unknown = sorted(set(e) - set(_SCHEDULE_FIELDS))
        if unknown:
            raise ValueError(f"{where}[{i}]: unknown schedule fields {unknown}; known: {list(_SCHEDULE_FIELDS)}")
        kw = dict(e)
        if "interval" in kw and not isinstance(kw["interval"], timedelta):
            kw["interval"] = timedelta(seconds=float(kw["interval"]))
        out.append(Schedule(**kw))
    return out


def build_deployments(path: str | Path) -> list:
    from prefect.deployments.runner import EntrypointType
    from prefect.flows import load_flow_from_entrypoint

    out = []
    for d in read_deployments(path):
        flow = load_flow_from_entrypoint(d["entrypoint"])
        out.append(
            flow.to_deployment(
                name=d["name"],
                description=d.get("description"),
                parameters=d.get("parameters") or {},
                tags=d.get("tags") or [],
                # registered as `bstar.flows.run.bstar_run`, not a path under this checkout: the flow
                # runs load it from the installed package whatever their working directory
                entrypoint_type=EntrypointType.MODULE_PATH,
                schedules=to_schedules(d.get("schedules"), f"{path}: deployment {d['name']!r} schedules"),
            )
        )
    return out


def serve_deployments(path: str | Path = "deployments/prefect.yaml", gpu_slots: int = 1, limit: int | None = None) -> None:
    from prefect import serve

    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError("PREFECT_API_URL is not set: start a server (`prefect server start`) and point to it")
    ensure_gpu_slots(gpu_slots)
    serve(*build_deployments(path), limit=limit)
