"""Serve the deployments of `deployments/prefect.yaml` to the Prefect server in PREFECT_API_URL.

    PREFECT_API_URL=http://127.0.0.1:4200/api bstar serve [--file deployments/prefect.yaml] [--gpu-slots 1]
                                                          [--workdir DIR] [--limit N]

The serving process runs each triggered flow run in a subprocess, so the UI can start, schedule
and retry runs. The task runs that run a model in a flow run's process carry the `gpu` tag (a
stage that only coordinates shards does not: `bstar.tasks.shards`); a tag concurrency limit of
`--gpu-slots` makes them queue for the device instead of competing for its memory.

The flow runs' working directory is `--workdir` (default: the folder that holds `deployments/`),
so relative paths (a config YAML, `storage.root: ./lake`) mean the same in every run. A
deployment whose `config` parameter names a YAML file is registered with that file's contents as
the default, so the UI's run form opens filled in with it (read when `serve` starts: restart it
after editing the file, or give the path itself in the form). Before registering, `serve` warns
when a deployment is already being polled by another serving process. SIGINT / SIGTERM stop it
cleanly: running flow runs are cancelled (a retry resumes them), schedules paused, and the wait
for the server is bounded (`--stop-timeout`) when the server is gone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

# one name for the tag, next to the code that decides who holds it
from bstar.tasks.shards import GPU_TAG

STOP_TIMEOUT_S = 15.0
POLLED_RECENTLY_S = 30.0  # three runner poll intervals: younger than this, someone serves it


def say(message: str) -> None:
    """A line for the person running `bstar serve` (stderr, whatever logging is configured)."""
    print(message, file=sys.stderr, flush=True)


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


def default_workdir(path: str | Path) -> Path:
    """The folder that holds `deployments/` (the project directory) for `deployments/prefect.yaml`."""
    return Path(path).resolve().parent.parent


def form_defaults(parameters: dict, entrypoint: str) -> dict:
    """Deployment parameters with a `config` YAML path replaced by the validated config itself
    (secrets left out), so the run form opens filled in. Paths are relative to the working dir."""
    config = parameters.get("config")
    if not isinstance(config, str):
        return parameters
    from bstar.config import is_compare_config, load_compare_config, load_config

    if entrypoint.endswith(":compare") or is_compare_config(config):
        cfg = load_compare_config(config)
        dumped = cfg.model_dump_json(exclude={"base": {"storage": {"key", "secret"}}})
    else:
        dumped = load_config(config).to_json()
    return {**parameters, "config": json.loads(dumped)}


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
                parameters=form_defaults(d.get("parameters") or {}, d["entrypoint"]),
                tags=d.get("tags") or [],
                # registered as `bstar.flows.run.bstar_run`, not a path under this checkout: the flow
                # runs load it from the installed package whatever their working directory
                entrypoint_type=EntrypointType.MODULE_PATH,
                schedules=to_schedules(d.get("schedules"), f"{path}: deployment {d['name']!r} schedules"),
            )
        )
    return out


def already_served(full_names: list[str], within_s: float = POLLED_RECENTLY_S) -> list[str]:
    """Warnings for the deployments (`flow/deployment`) a serving process polled in the last
    `within_s` seconds: a second `serve` would race it for every run."""
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    warnings = []
    with get_client(sync_client=True) as client:
        for name in full_names:
            try:
                dep = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if dep.last_polled is None:
                continue
            age = (datetime.now(timezone.utc) - dep.last_polled).total_seconds()
            if age < within_s:
                warnings.append(
                    f"deployment {name} was polled {age:.0f}s ago by another serving process (or one that just "
                    "stopped): two serving processes both pick up its runs, each with its own environment; "
                    "stop the other `bstar serve` first"
                )
    return warnings


def serve_deployments(path: str | Path = "deployments/prefect.yaml", gpu_slots: int = 1, limit: int | None = None,
                      workdir: str | Path | None = None, stop_timeout: float = STOP_TIMEOUT_S) -> None:
    import asyncio

    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError("PREFECT_API_URL is not set: start a server (`prefect server start`) and point to it")
    path = Path(path).resolve()
    workdir = Path(workdir).resolve() if workdir else default_workdir(path)
    if not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: not a directory")
    os.chdir(workdir)  # the flow-run subprocesses inherit it: relative paths resolve here
    deployments = build_deployments(path)
    for warning in already_served([f"{d.flow_name}/{d.name}" for d in deployments]):
        say(f"WARNING: {warning}")
    ensure_gpu_slots(gpu_slots)
    runner = Runner(limit=limit, pause_on_shutdown=True)
    for d in deployments:
        runner.add_deployment(d)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    say(f"deployments {names} are being served from {workdir} (Ctrl-C stops)")
    asyncio.run(run_until_signal(runner, stop_timeout))


async def run_until_signal(runner, stop_timeout: float) -> None:
    """Run `runner` until SIGINT or SIGTERM, then stop it within `stop_timeout` seconds.

    Prefect's own handler calls the synchronous `Runner.stop` from inside the event loop (which
    leaves `Runner.astop` un-awaited) and then waits on the server without a bound; here the loop
    owns both signals and every step of the shutdown has a deadline."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    serving = asyncio.ensure_future(runner.start())
    await asyncio.sleep(0)  # `start` usually installs Prefect's SIGTERM handler in its first step
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def reclaim_sigterm():
        # under load `start` may reach its signal.signal a few loop steps later and replace ours:
        # take SIGTERM back when it does (ours are in place all along, so no signal goes unhandled)
        for _ in range(500):
            if signal.getsignal(signal.SIGTERM) == runner.handle_sigterm:
                loop.add_signal_handler(signal.SIGTERM, stop.set)
                return
            await asyncio.sleep(0.01)

    reclaim = asyncio.ensure_future(reclaim_sigterm())
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
    reclaim.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # a second Ctrl-C interrupts the shutdown itself
    if serving.done():
        waiter.cancel()
        serving.result()  # the runner ended on its own: raise what it raised
        return
    say(f"stopping: cancelling running flow runs, pausing schedules (at most {stop_timeout:.0f}s)")
    deadline = loop.time() + stop_timeout
    try:
        await asyncio.wait_for(runner.astop(), timeout=stop_timeout)
        await asyncio.wait_for(asyncio.shield(serving), timeout=max(0.1, deadline - loop.time()))
    except (asyncio.TimeoutError, TimeoutError):
        say(f"the Prefect server did not answer within {stop_timeout:.0f}s: stopped without it")
    except Exception as err:  # noqa: BLE001 - the server may be gone; stopping must still finish
        say(f"stopping: {type(err).__name__}: {err}")
    finally:
        if not serving.done():
            serving.cancel()
            try:
                await asyncio.wait_for(serving, timeout=2)
            except BaseException:  # noqa: BLE001 - cancelled or already failing: we are leaving anyway
                pass
