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


def build_deployments(path: str | Path) -> list:
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
                schedules=d.get("schedules") or None,
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
