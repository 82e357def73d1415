"""The sampler interface every backend implements, and the registry that names backends.

    from bstar.models.sampler_api import get_sampler   # also re-exported by bstar.models.sampling
    with get_sampler("vllm", "runs/r1/iter-1", tensor_parallel_size=2) as s:
        cands = s.sample(prompts, k=8, temperature=0.7, seeds=[seed_for(q) for q in qids], base_seed=3)

Backends depend on this module and never on each other: the built-ins are registered by import
path (`bstar.models.sampling:TransformersSampler`, `bstar.models.vllm_backend:VLLMSampler`) and
imported on first use, so `sampling` and `vllm_backend` do not import one another, and neither
torch nor vLLM is imported by naming a backend. Only the standard library is imported here: the
vLLM worker processes import this module, possibly under an interpreter without the project's
dependencies.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int  # generated tokens, the EOS token included when it ended the sample
    finish_reason: str  # 'stop' (EOS or a stop string) | 'length' (max_new_tokens reached)
    sample_idx: int


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any parts (query id, round, ...): the same on every machine."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") & (2**63 - 1)


class Sampler(ABC):
    """K samples per prompt; `close()` (or leaving the `with` block) frees the model."""

    @abstractmethod
    def sample(
        self,
        prompts: list[str],
        k: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        *,
        seeds: list[int] | None = None,
        base_seed: int = 0,
        stop: list[str] | None = None,
        first_sample_idx: int = 0,
        progress: bool = True,
    ) -> list[list[Sample]]: ...

    def greedy(self, prompts: list[str], max_new_tokens: int = 256, *, stop: list[str] | None = None,
               progress: bool = True) -> list[Sample]:
        """Greedy decoding (Pass@1): one sample per prompt."""
        out = self.sample(prompts, k=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=stop,
                          progress=progress)
        return [row[0] for row in out]

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_REGISTRY: dict[str, Callable[..., Sampler]] = {}
# built-in backends by import path, imported when first asked for
_BUILTIN = {
    "transformers": "bstar.models.sampling:TransformersSampler",
    "vllm": "bstar.models.vllm_backend:VLLMSampler",
}


def register_sampler(name: str, factory: Callable[..., Sampler]) -> None:
    _REGISTRY[name] = factory


def sampler_backends() -> list[str]:
    """Backend names `sampling.backend` accepts: the built-ins and every registered one."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_sampler(backend: str, model_path: str, **opts) -> Sampler:
    """A sampler by backend name ('transformers', 'vllm', or one registered later)."""
    if backend not in _REGISTRY and backend in _BUILTIN:
        module, attr = _BUILTIN[backend].split(":")
        register_sampler(backend, getattr(importlib.import_module(module), attr))
    try:
        factory = _REGISTRY[backend]
    except KeyError:
        raise ValueError(f"unknown sampler backend {backend!r}; known: {sampler_backends()}") from None
    return factory(model_path, **opts)
