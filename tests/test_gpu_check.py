"""benchmarks/gpu_check.py at tiny sizes on the CPU, so the script a lent GPU machine runs never
rots: every stage hands its memory back, every part reports its figures, one PASS line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_passes_on_the_cpu(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", BSTAR_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("GPU CHECK PASS on cpu: memory handed back after every stage True")
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = report["stages"]["after"]
    assert list(stages) == ["sft-warmup", "sampling", "prm-train", "prm-score"]
    assert all(s["parameters"] <= report["stages"]["baseline"]["parameters"] for s in stages.values())
    assert stages["sampling"]["samples"] == 16 * 4 and stages["prm-score"]["responses"] == 64
    assert set(report["sampling"]) == {"smollm2-135m", "llama-1b"}
    assert all(v["tokens_per_s"] > 0 and 0 < v["of_bound"] < 1 for v in report["sampling"].values())
    assert all(v["step_s"] > 0 and v["loss"] > 0 for v in report["train"].values())
