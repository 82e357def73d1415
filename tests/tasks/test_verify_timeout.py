"""The per-item hard limit of the scoring stage: the verifier's own unless the config sets one."""

import polars as pl
import pytest

from bstar.config import RunConfig
from bstar.tasks.scoring import verify_frame


@pytest.fixture
def limits(monkeypatch):
    """The `timeout` each verify_many batch reaches the pool with (and real arith verdicts)."""
    import bstar.verifiers.pool as pool

    seen, real = [], pool.run_batch

    def spy(target, items, *, workers=None, timeout):
        seen.append(timeout)
        return real(target, items, workers=1, timeout=timeout)

    monkeypatch.setattr(pool, "run_batch", spy)
    return seen


FRAME = pl.DataFrame({"query_id": ["q1", "q2"], "sample_idx": [0, 0],
                      "response": ["1+2=3. #### 3", "1+2=4. #### 4"], "answer": ["3", "3"]})


def test_default_config_leaves_each_verifier_its_own_limit(limits):
    cfg = RunConfig()
    assert cfg.reward.verify_timeout_s is None
    out = verify_frame("arith", FRAME, cfg.reward.verify_workers, cfg.reward.verify_timeout_s)
    assert out["correct"].to_list() == [True, False]
    from bstar.verifiers.registry import get_verifier

    assert limits == [get_verifier("arith").timeout] == [5.0]
    assert get_verifier("code").timeout == 90.0  # what code scoring now gets by default (was cut to 10 s)


def test_a_configured_limit_overrides_the_verifier(limits):
    cfg = RunConfig(reward={"verify_timeout_s": 2.5})
    verify_frame("arith", FRAME, 1, cfg.reward.verify_timeout_s)
    assert limits == [2.5]
