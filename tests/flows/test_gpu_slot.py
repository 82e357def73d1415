"""The `gpu` slot is held by the work that runs a model, never by a stage waiting for its shards.

`bstar serve --gpu-slots 1` makes a concurrency limit of one for the tag `gpu`, and Prefect holds a
task run's tag slots for its whole life: a coordinator tagged `gpu` would hold the only slot while
its shard waits for it, forever. Here, against the session's Prefect server with that limit, a
coordinator runs its shards through `run_shards` as the stages do; each shard reports how many
`gpu` slots are held while it runs. (Served runs of the real stages: tests/flows/test_scale_out.py.)
"""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from bstar.config import parse_config
from bstar.tasks.shards import GPU_TAG, run_shards

pytestmark = pytest.mark.timeout(120)  # a slot the coordinator holds for its shard: a hang, failed here


def held() -> int:
    """`gpu` slots held right now."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(f"tag:{GPU_TAG}").active_slots


@task(tags=[GPU_TAG], cache_policy=NO_CACHE)
def shard(i: int) -> int:
    return held()


@task(cache_policy=NO_CACHE)
def coordinator(shards: int) -> list[int]:
    cfg = parse_config({"execution": {"shards": shards}})
    return run_shards(cfg, shard, [dict(i=i) for i in range(shards)], "sampling")


@flow
def stage(shards: int) -> tuple[list[int], int]:
    return coordinator(shards), held()


@pytest.fixture
def one_gpu_slot(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.concurrency.services import _no_limits_cache

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)
        # Prefect's client remembers for 5 s that a tag had no limit (an earlier test's `gpu` task)
        _no_limits_cache.clear()
        try:
            yield
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)


def test_two_local_shards_each_hold_the_one_slot_their_coordinator_does_not(one_gpu_slot):
    during, after = stage(2)
    assert during == [1, 1]  # each shard task run holds the slot; nobody else does
    assert after == 0


def test_a_shard_run_inline_holds_the_slot_in_its_coordinators_task_run(one_gpu_slot):
    during, after = stage(1)
    assert during == [1]  # no task run of its own, and still the device is held while it works
    assert after == 0


def test_outside_a_flow_no_slot_is_held(one_gpu_slot):
    assert coordinator.fn(1) == [0]
