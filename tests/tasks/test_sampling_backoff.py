"""Out-of-memory while sampling halves the decode batch and retries; other errors propagate."""

import pytest

from bstar.tasks.sampling import part_name, sample_with_backoff


class FlakySampler:
    """Fails with a CUDA-style OOM while the batch is larger than `fits`."""

    def __init__(self, rows: int, fits: int):
        self.max_batch_rows, self.fits, self.calls = rows, fits, []

    def sample(self, prompts, **kwargs):
        self.calls.append(self.max_batch_rows)
        if self.max_batch_rows > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [["ok"] for _ in prompts]


def test_oom_halves_the_batch_until_it_fits():
    s = FlakySampler(rows=1024, fits=200)
    assert sample_with_backoff(s, ["a", "b"], k=1) == [["ok"], ["ok"]]
    assert s.calls == [1024, 512, 256, 128]
    assert s.max_batch_rows == 128


def test_oom_at_one_row_and_other_errors_are_raised():
    with pytest.raises(RuntimeError, match="out of memory"):
        sample_with_backoff(FlakySampler(rows=1, fits=0), ["a"], k=1)

    class Broken(FlakySampler):
        def sample(self, prompts, **kwargs):
            raise RuntimeError("shape mismatch")

    b = Broken(rows=64, fits=64)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sample_with_backoff(b, ["a"], k=1)
    assert b.max_batch_rows == 64


def test_part_names_are_deterministic_and_valid():
    assert part_name("search", 0.7) == "part-search-t0.7"
    assert part_name("test-arith", 0.0) == "part-test-arith-t0"
    assert part_name("round", 1.25) == "part-round-t1.25"
