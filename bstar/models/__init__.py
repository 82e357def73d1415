"""Policies, samplers and the trainer (imports torch only when a submodule is used).

- `tiny`          the tiny default policy: character tokenizer + from-scratch Llama, `build_tiny_policy`
- `loading`       `load_policy` (dir / hub id / GGUF), `gguf_source`, `materialize_gguf`, `encode_prompts`
- `sampler_api`   `Sampler`, `Sample`, `seed_for`, the backend registry (`get_sampler`): what both backends import
- `sampling`      the transformers backend; re-exports `get_sampler`, `Sample`, `seed_for`
- `vllm_backend`  the vLLM backend: engines in worker processes (vLLM itself is an optional extra)
- `trainer`       `train_sft`, `sft_warmup`, `round_init_checkpoint`, `SFTRecipe`, `CheckpointInfo`
- `distributed`   DDP / FSDP2 for both trainers; `schedule` the LR schedule
- `launch`        multi-process training through torchrun (output relayed live)
- `memory`        per-GPU memory estimates from a config.json (`bstar check`)
"""
