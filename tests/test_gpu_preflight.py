"""Pre-flight for GPU configs (bstar.preflight): the memory table of `bstar check`, the one-line
refusal of a job that cannot fit a GPU (which stops `bstar run` before any stage), vLLM and GPU
counts, batches the processes cannot share, and the learning-rate warning for large models.

The policy is a Qwen2.5-7B-shaped directory holding only its config.json; GPUs are what
`visible_gpus` reports, replaced here (no CUDA needed). The numbers are worked out in
tests/models/test_memory.py and docs/gpu-memory.md.
"""

import json

import pytest
import yaml

from bstar import cli, preflight
from bstar.config import parse_config
from bstar.models.memory import format_report
from bstar.preflight import GPU, check_run, memory_report

QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
             "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
             "vocab_size": 152064, "max_position_embeddings": 131072, "tie_word_embeddings": False}
PRM_FSDP = {"distributed": "fsdp", "gradient_checkpointing": True}
H100 = GPU("NVIDIA H100 80GB HBM3", 85_045_854_208, True)  # what torch reports for an "80 GB" card: 79.2 GiB


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    monkeypatch.setattr(preflight, "visible_gpus", lambda: ())


def gpus(monkeypatch, n, gpu=H100):
    monkeypatch.setattr(preflight, "visible_gpus", lambda: (gpu,) * n)


def qwen_raw(tmp_path, **training) -> dict:
    model = tmp_path / "Qwen2.5-7B"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(QWEN25_7B))
    # the B-STaR code's own shape of a round: 128 examples a step, 8 per GPU, 1024 tokens, lr 4.12e-6
    t = dict(num_processes=8, gpu_memory_gb=80, batch_size=128, micro_batch_size=8, max_length=1024, lr=4.12e-6,
             warmup={"lr": 5e-6})
    t.update(training)
    return {"model": {"name_or_path": str(model)}, "training": t, "storage": {"root": str(tmp_path / "lake")}}


def qwen_yaml(tmp_path, **training):
    path = tmp_path / "qwen7b-gpu.yaml"
    path.write_text(yaml.safe_dump(qwen_raw(tmp_path, **training)))
    return str(path)


def fields(cfg) -> dict:
    return {p.field: p.message for p in check_run(cfg, storage=False)}


def test_check_prints_the_table_and_refuses_ddp_on_8_x_80_gb(tmp_path, capsys):
    config = qwen_yaml(tmp_path)
    assert cli.main(["check", config]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "memory per GPU (GiB) for Qwen2.5-7B (qwen2, 7.62B params); each GPU 80.0 GiB (training.gpu_memory_gb)"
    assert lines[1] == "  training: 8 process(es), micro-batch 8 x 1024 tokens (training.max_length), bf16"
    table = {line[:64].strip(): line[64:].split() for line in lines[3:14]}
    # 16 B/param of replicated states (113.5 GiB) against 2 B/param when FSDP shards them over 8
    assert table["weights (fp32 master)"] == ["28.4", "3.5"] and table["AdamW moments (2 x fp32)"] == ["56.7", "7.1"]
    assert table["ddp gradient buckets"] == ["28.4", "-"]
    assert table["total"] == ["210.3", "71.4"] and table["total, gradient checkpointing"] == ["170.2", "25.0"]
    assert "    configured (training): ddp -> 210.3 GiB: does not fit in 80.0 GiB" in lines
    assert "  sampling (transformers, bf16): weights 14.2 + KV cache of 256 rows x 1024 tokens 14.0 = 28.2 GiB" in lines
    refusal = [line for line in lines if line.startswith("  training.")]
    assert refusal == ["  training.distributed: ddp needs 210.3 GiB per GPU for Qwen2.5-7B (qwen2, 7.62B params; "
                       "8 process(es), micro-batch 8 x 1024 tokens, bf16) but each GPU has 80.0 GiB; use fsdp "
                       "(71.4 GiB) or fsdp and gradient_checkpointing (25.0 GiB)"]

    assert cli.main(["check", config, "--set", "training.distributed=fsdp",
                     "--set", "training.gradient_checkpointing=true"]) == 0
    err = capsys.readouterr().err
    assert "    configured (training): fsdp + gradient_checkpointing -> 25.0 GiB: fits" in err
    assert "error" not in err and "warning" not in err


def test_run_stops_before_any_stage(tmp_path, capsys):
    code = cli.main(["run", qwen_yaml(tmp_path), "--root", str(tmp_path / "lake")])
    err = capsys.readouterr().err
    assert code == 2 and "run cannot start:\n  training.distributed: ddp needs 210.3 GiB per GPU" in err
    assert not (tmp_path / "lake" / "runs").exists()


def test_the_visible_gpu_size_wins_over_gpu_memory_gb(tmp_path, monkeypatch):
    # fsdp without checkpointing needs 71.4 GiB: too much for the 40 GiB the config claims...
    cfg = parse_config(qwen_raw(tmp_path, distributed="fsdp", gpu_memory_gb=40))
    found = fields(cfg)
    assert list(found) == ["training.gradient_checkpointing"]
    assert found["training.gradient_checkpointing"].startswith("fsdp without gradient checkpointing needs 71.4 GiB")
    assert found["training.gradient_checkpointing"].endswith("use training.gradient_checkpointing (25.0 GiB) or "
                                                             "fsdp, gradient_checkpointing and cpu_offload (10.8 GiB)")
    # ...but the 8 visible H100s hold 79.2 GiB each
    gpus(monkeypatch, 8)
    assert fields(cfg) == {}
    assert format_report(memory_report(cfg))[0].endswith("each GPU 79.2 GiB (NVIDIA H100 80GB HBM3, visible)")


def test_without_a_gpu_size_the_table_is_printed_and_nothing_refused(tmp_path, capsys):
    assert cli.main(["check", qwen_yaml(tmp_path, gpu_memory_gb=None)]) == 0
    err = capsys.readouterr().err
    assert "GPU size unknown (no GPU visible, training.gpu_memory_gb unset): not checked" in err
    # no GPU to train on: the trainer's CPU precision, fp32
    assert "  training: 8 process(es), micro-batch 8 x 1024 tokens (training.max_length), fp32" in err


def test_prm_training_and_sampling_are_judged_too(tmp_path):
    raw = qwen_raw(tmp_path, distributed="fsdp", gradient_checkpointing=True, gpu_memory_gb=12)
    raw["reward"] = {"kind": "answer+prm", "prm_train": {"num_processes": 2, "batch_size": 32}}
    found = fields(parse_config(raw))
    # 12 GiB cards: the PRM's ddp replicas (16 B/param) and the sampler's 14.2 GiB of bf16 weights do not fit
    assert sorted(found) == ["reward.prm_train.distributed", "sampling.backend", "training.cpu_offload"]
    assert found["reward.prm_train.distributed"].startswith("ddp needs ")
    assert found["sampling.backend"] == ("transformers holds all 14.2 GiB of bf16 weights of Qwen2.5-7B (qwen2, "
                                         "7.62B params) on one GPU of 12.0 GiB; use sampling.backend: vllm with "
                                         "tensor_parallel_size 2")
    raw["sampling"] = {"backend": "vllm", "gpu_memory_utilization": 0.5}
    found = fields(parse_config(raw))
    # vLLM may take half of 12 GiB: 6.0 GiB, and 14.2 GiB over 4 GPUs is 3.5 each
    assert found["sampling.tensor_parallel_size"].endswith("leaves 6.0 GiB; use tensor_parallel_size 4 or more")


def test_vllm_and_gpu_counts(tmp_path, monkeypatch):
    raw = qwen_raw(tmp_path, distributed="fsdp", gradient_checkpointing=True)
    raw["sampling"] = {"backend": "vllm", "tensor_parallel_size": 4, "data_parallel_size": 2}
    monkeypatch.delenv("BSTAR_VLLM_PYTHON", raising=False)  # the workers' interpreter: this one, without vllm
    assert fields(parse_config(raw)) == {"sampling.backend": "the vllm sampler needs vLLM ('vllm' is not importable): "
                                         "`make vllm-env` builds .venv-vllm; name its python with BSTAR_VLLM_PYTHON "
                                         "(README, 'vLLM')"}
    monkeypatch.setenv("BSTAR_VLLM_PYTHON", "/no/such/python")
    assert "cannot run '/no/such/python' (BSTAR_VLLM_PYTHON)" in fields(parse_config(raw))["sampling.backend"]
    monkeypatch.setattr(preflight, "_vllm_missing", lambda: None)
    assert "none is visible here" in fields(parse_config(raw))["sampling.backend"]
    gpus(monkeypatch, 4)
    assert fields(parse_config(raw)) == {
        "sampling.data_parallel_size": "data_parallel_size x tensor_parallel_size = 2 x 4 GPUs but 4 are visible",
        "training.num_processes": "8 processes, one per GPU, but 4 GPU(s) are visible",
    }
    raw["training"]["num_processes"] = 4
    raw["training"]["batch_size"] = 64
    raw["sampling"] = {"backend": "vllm", "tensor_parallel_size": 8}
    raw["reward"] = {"kind": "answer+prm", "prm_train": {"num_processes": 8, **PRM_FSDP},
                     "prm_options": {"device": "cuda:4"}}
    assert sorted(fields(parse_config(raw))) == ["reward.prm_options.device", "reward.prm_train.num_processes",
                                                 "sampling.tensor_parallel_size"]
    # without a GPU, several training processes run on the CPU (gloo): allowed; a CUDA PRM is not
    gpus(monkeypatch, 0)
    raw["sampling"] = {}
    assert fields(parse_config(raw)) == {"reward.prm_options.device": "'cuda:4' but no CUDA GPU is visible here"}


def test_batches_the_processes_cannot_share(tmp_path):
    raw = qwen_raw(tmp_path, micro_batch_size=None, grad_accum=3, batch_size=96, distributed="fsdp",
                   gradient_checkpointing=True)
    raw["training"]["warmup"] = {"steps": 5, "batch_size": 64, "lr": 5e-6}
    raw["reward"] = {"kind": "answer+prm",
                     "prm_train": {"num_processes": 2, "batch_size": 30, "micro_batch_size": 4, **PRM_FSDP}}
    assert fields(parse_config(raw)) == {
        "training.warmup.batch_size": "64 is not a multiple of grad_accum x num_processes = 3 x 8 (or set "
                                      "training.micro_batch_size)",
        "reward.prm_train.batch_size": "30 is not a multiple of micro_batch_size x num_processes = 4 x 2",
    }
    raw["reward"]["prm_train"] = {"num_processes": 4, "batch_size": 2, **PRM_FSDP}
    assert fields(parse_config(raw))["reward.prm_train.batch_size"] == (
        "2 examples cannot be shared by 4 processes (reward.prm_train.num_processes)")


def test_tiny_learning_rates_on_a_7b_model_warn(tmp_path, capsys):
    config = qwen_yaml(tmp_path, distributed="fsdp", gradient_checkpointing=True, lr=1e-3,
                       warmup={"steps": 10, "lr": 2e-3, "batch_size": 64})
    assert cli.main(["check", config]) == 0  # a warning, not a refusal
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: training.lr: 0.001 is the tiny model's learning rate, for a 7.62B-parameter model; the B-STaR code "
        "trains Mistral-7B at 5e-6 (warm-up), 4.12e-6 (rounds) and its PRM at 2e-6",
        "warning: training.warmup.lr: 0.002 is the tiny model's learning rate, for a 7.62B-parameter model; the B-STaR "
        "code trains Mistral-7B at 5e-6 (warm-up), 4.12e-6 (rounds) and its PRM at 2e-6",
    ]
    cfg = parse_config({"storage": {"root": str(tmp_path / "lake")}})  # the tiny model keeps its rates
    assert preflight.preflight(cfg, storage=False) == []


def test_models_without_a_readable_config_are_skipped_in_one_line(tmp_path):
    cfg = parse_config({"model": {"name_or_path": "someorg/not-cached-7b"}})
    assert format_report(memory_report(cfg)) == [
        "memory: not estimated: 'someorg/not-cached-7b': its config.json is not in the hub cache and cannot be "
        "fetched (HF_HUB_OFFLINE is set)"]
    assert preflight.check_memory(cfg) == [] and preflight.check_warnings(cfg) == []
