"""Policies, samplers and the trainer (imports torch only when a submodule is used).

- `tiny`          the tiny default policy: character tokenizer + from-scratch Llama, `build_tiny_policy`
- `loading`       `load_policy` (dir / hub id / GGUF), `gguf_source`, `materialize_gguf`, `encode_prompts`
- `sampling`      `get_sampler(backend, model_path, **opts)`, `Sample`, `seed_for`; transformers backend
- `vllm_backend`  the vLLM backend (optional extra, imported lazily)
- `trainer`       `train_sft`, `sft_warmup`, `round_init_checkpoint`, `SFTRecipe`, `CheckpointInfo`
- `launch`        multi-process training through `accelerate launch`
"""
