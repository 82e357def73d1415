"""Samplers: K candidates per prompt, one interface, backends chosen by name.

    from bstar.models.sampling import get_sampler
    with get_sampler("transformers", "runs/r1") as s:
        cands = s.sample(prompts, k=8, temperature=0.7, top_p=1.0, max_new_tokens=64,
                         seeds=[seed_for(q) for q in query_ids], base_seed=round_idx)
        best = s.greedy(prompts, max_new_tokens=64)
    # cands[i][j] is Sample(text, n_tokens, finish_reason, sample_idx=j) for prompts[i]

Reproducibility: the randomness of sample j of a prompt is a pure function of (base_seed, the
prompt's seed, j, the decode step, the token id) — a counter-based hash turned into Gumbel noise
(Gumbel-max sampling is exact sampling from softmax(logits / T) restricted to the top-p nucleus).
It does not depend on the batch a row lands in, so a rerun reproduces the same candidates even
with another batch size or prompt order (up to float rounding of the logits themselves).
A prompt's seed defaults to a hash of its text; pass `seeds` (e.g. from query ids) to decouple.

The transformers backend prefills every distinct prompt once, expands its KV cache K times, and
runs its own decode loop over the cache; rows that finish are dropped from the batch.
"""

from __future__ import annotations

import inspect
import logging

from bstar.faults import kill_point
# The interface and the registry live in sampler_api (which the vLLM backend imports too, so the
# backends never import each other); re-exported here, where callers have always found them.
from bstar.models.sampler_api import Sample, Sampler, get_sampler, register_sampler, sampler_backends, seed_for

__all__ = ["Sample", "Sampler", "TransformersSampler", "get_sampler", "register_sampler", "sampler_backends",
           "seed_for", "choose_tokens", "gumbel_noise", "naive_generate"]

log = logging.getLogger(__name__)

M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# counter-based randomness
# ----------------------------------------------------------------------------------------------


def _hash32(x):
    """A 32-bit integer mixer on int64 tensors holding values in [0, 2^32) (no overflow), in place:
    on a [rows, vocab] tensor an out-of-place version allocates a tensor per operation and took
    half of a CPU decode step; this takes a sixth. Callers pass a tensor of their own."""
    import torch

    tmp = torch.empty_like(x)
    for _ in range(2):
        torch.bitwise_right_shift(x, 16, out=tmp)
        x.bitwise_xor_(tmp).mul_(0x45D9F3B).bitwise_and_(M32)
    torch.bitwise_right_shift(x, 16, out=tmp)
    return x.bitwise_xor_(tmp)


def gumbel_noise(row_keys, step: int, vocab: int):
    """Gumbel(0,1) noise of shape [rows, vocab], a pure function of (row key, step, token id)."""
    import torch

    a = row_keys & M32
    b = (row_keys >> 32) & M32
    s = _hash32(a ^ _hash32(b))
    s = _hash32((s + (step + 1) * 0x2545F491) & M32)  # per-step stream
    v = torch.arange(vocab, dtype=torch.int64, device=row_keys.device)
    bits = _hash32(s[:, None] ^ ((v * 0x27D4EB2D) & M32)[None, :])
    bits = _hash32(bits.add_(s[:, None]).bitwise_and_(M32))
    u = bits.double().add_(0.5).div_(4294967296.0)
    return u.log_().neg_().log_().neg_()  # -log(-log(u)), in place


def choose_tokens(logits, temperature: float, top_p: float, row_keys, step: int):
    """Next token per row: argmax when temperature == 0, else Gumbel-max over the top-p nucleus."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.double().div_(temperature)  # in place: the same values as logits.double() / temperature
    if top_p < 1.0:
        probs = torch.softmax(scores, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly above each token
        drop_sorted = before >= top_p  # the top token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return gumbel_noise(row_keys, step, logits.size(-1)).add_(scores).argmax(dim=-1)


# ----------------------------------------------------------------------------------------------
# transformers backend
# ----------------------------------------------------------------------------------------------


class TransformersSampler(Sampler):
    """Batched sampling with a hand-written KV-cache decode loop over any HF causal LM.

    `max_batch_rows`: rows (prompt x sample) decoded together; prompts are grouped by length and
    a group's prompts are prefilled once, their caches expanded K times. `suppress_special`: never
    sample BOS / PAD / UNK (unless one of them is also the EOS token).
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        max_batch_rows: int = 1024,
        gguf_file: str | None = None,
        threads: int | None = None,
        suppress_special: bool = True,
        prune_fraction: float = 0.25,
        attn_implementation: str | None = None,
        model=None,
        tokenizer=None,
    ):
        from bstar.models.loading import load_policy, resolve_device, set_cpu_threads

        self.device = resolve_device(device)
        if self.device == "cpu":
            set_cpu_threads(threads)
        if model is None:
            model, tokenizer = load_policy(model_path, device=self.device, dtype=dtype, gguf_file=gguf_file,
                                           attn_implementation=attn_implementation)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.model_path = model_path
        # transformers 5 renamed forward's `past_key_values` to `cache` (the old name warns on every call)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.max_batch_rows = max_batch_rows
        self.prune_fraction = prune_fraction
        self.eos_ids = self._eos_ids()
        # BOS / PAD / UNK never appear in a response (they are never training targets): never sample them.
        special = {tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id} - {None}
        self.suppress_ids = sorted(int(i) for i in special - set(self.eos_ids)) if suppress_special else []

    def _eos_ids(self) -> list[int]:
        ids = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [self.tokenizer.eos_token_id]:
            if e is not None:
                ids.add(int(e))
        return sorted(ids)

    def close(self) -> None:
        from bstar.models.loading import release_device_memory

        self.model = None
        release_device_memory()

    def sample(self, prompts, k=1, temperature=1.0, top_p=1.0, max_new_tokens=256, *, seeds=None, base_seed=0,
               stop=None, first_sample_idx=0, progress=True):
        import torch

        from bstar.logs import progress as progress_bar
        from bstar.models.loading import encode_prompts

        if self.model is None:
            raise RuntimeError("sampler is closed")
        if k < 1 or max_new_tokens < 1:
            raise ValueError("k and max_new_tokens must be >= 1")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        prompt_seeds = list(seeds) if seeds is not None else [seed_for("prompt", p) for p in prompts]
        encoded = encode_prompts(self.tokenizer, list(prompts))
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        per_chunk = max(1, self.max_batch_rows // k)
        results: list[list[Sample] | None] = [None] * len(prompts)
        bar = progress_bar(len(prompts) * k, f"sample k={k} t={temperature}", disable=not progress, unit="gen",
                           logger=log, dynamic_ncols=True, leave=False)
        with torch.inference_mode():
            for c in range(0, len(order), per_chunk):
                chunk = order[c : c + per_chunk]
                keys = [seed_for(base_seed, prompt_seeds[i], first_sample_idx + j) for i in chunk for j in range(k)]
                before = bar.n
                rows = self._decode([encoded[i] for i in chunk], k, temperature, top_p, max_new_tokens, keys,
                                    stop or [], on_finished=bar.update)
                for n, i in enumerate(chunk):
                    results[i] = [
                        Sample(text=t, n_tokens=nt, finish_reason=fr, sample_idx=first_sample_idx + j)
                        for j, (t, nt, fr) in enumerate(rows[n * k : (n + 1) * k])
                    ]
                bar.update(len(chunk) * k - (bar.n - before))  # the rows that ran to max_new_tokens
                kill_point("batch")  # BSTAR_KILL_AT crash point (tests only)
        bar.close()
        return results  # type: ignore[return-value]

    def _mask(self, logits):
        if self.suppress_ids:
            logits[:, self.suppress_ids] = float("-inf")
        return logits

    def _decode(self, prompt_ids, k, temperature, top_p, max_new_tokens, keys, stop, on_finished=None):
        """Decode len(prompt_ids) * k rows; returns (text, n_tokens, finish_reason) per row.
        `on_finished(n)` is told as rows stop, so a progress bar moves within one long batch."""
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        dev = self.model.device
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        P = len(prompt_ids)
        L = max(len(p) for p in prompt_ids)
        ids = torch.full((P, L), pad, dtype=torch.long)
        mask = torch.zeros((P, L), dtype=torch.long)
        for i, p in enumerate(prompt_ids):  # left padding
            ids[i, L - len(p) :] = torch.tensor(p)
            mask[i, L - len(p) :] = 1
        padded = bool((mask == 0).any())
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_PreallocLayer(L + max_new_tokens) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
        out = self.model(input_ids=ids, attention_mask=mask if padded else None, position_ids=pos,
                         **{self.cache_arg: cache}, use_cache=True, logits_to_keep=1)
        logits = self._mask(out.logits[:, -1, :].float())
        if k > 1:
            cache.batch_repeat_interleave(k)
            logits = logits.repeat_interleave(k, dim=0)
            mask = mask.repeat_interleave(k, dim=0)
            pos = pos.repeat_interleave(k, dim=0)
        next_pos = pos[:, -1:] + 1
        n_rows = P * k
        live = torch.arange(n_rows, device=dev)  # original row index of each batch row
        row_keys = torch.tensor(keys, dtype=torch.int64, device=dev)
        eos = torch.tensor(self.eos_ids, device=dev)
        finished = torch.zeros(n_rows, dtype=torch.bool, device=dev)
        generated: list[list[int]] = [[] for _ in range(n_rows)]
        finish = ["length"] * n_rows
        stop_cut: list[int | None] = [None] * n_rows
        window = max((len(s) for s in stop), default=0) + 2
        for step in range(max_new_tokens):
            nxt = choose_tokens(logits, temperature, top_p, row_keys, step)
            nxt_list = nxt.tolist()
            live_list = live.tolist()
            fin_list = finished[live].tolist()
            for r, t, f in zip(live_list, nxt_list, fin_list):
                if not f:
                    generated[r].append(t)
            done = torch.isin(nxt, eos) & ~finished[live]
            if stop:
                done_list = done.tolist()
                cand = [b for b, d in enumerate(done_list) if not d and not fin_list[b]]
                tails = tok.batch_decode([generated[live_list[b]][-window:] for b in cand], skip_special_tokens=True)
                for b, tail in zip(cand, tails):
                    if any(s in tail for s in stop):
                        done_list[b] = True
                        stop_cut[live_list[b]] = 1
                done = torch.tensor(done_list, device=dev)
            for b in done.nonzero().flatten().tolist():
                finish[live_list[b]] = "stop"
            if step == max_new_tokens - 1:
                break
            n_done = int(done.sum())
            if n_done:
                if on_finished is not None:
                    on_finished(n_done)
                finished[live[done]] = True
                if bool(finished[live].all()):
                    break
                # Dropping rows copies the whole cache: do it only once enough rows have finished
                # (finished rows kept meanwhile decode on, and their tokens are ignored).
                alive = ~finished[live]
                if int((~alive).sum()) >= self.prune_fraction * live.numel():
                    keep = alive.nonzero().flatten()
                    cache.batch_select_indices(keep)
                    live, row_keys, nxt = live[keep], row_keys[keep], nxt[keep]
                    mask, next_pos = mask[keep], next_pos[keep]
            if padded:
                mask = torch.cat([mask, torch.ones((mask.size(0), 1), dtype=mask.dtype, device=dev)], dim=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=mask if padded else None, position_ids=next_pos,
                             **{self.cache_arg: cache}, use_cache=True)
            logits = self._mask(out.logits[:, -1, :].float())
            next_pos = next_pos + 1
        texts = tok.batch_decode(
            [g[:-1] if (g and g[-1] in self.eos_ids) else g for g in generated], skip_special_tokens=True
        )
        rows = []
        for r in range(n_rows):
            text = texts[r]
            if stop_cut[r] is not None:
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
            rows.append((text, len(generated[r]), finish[r]))
        return rows


def _prealloc_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocLayer(DynamicLayer):
        """A DynamicLayer writing into a preallocated buffer (no torch.cat of the whole cache per step)."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self._k = self._v = None
            self._n = 0

        def _views(self):
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            b, h, n, d = key_states.shape
            if self._k is None:
                self._k = key_states.new_empty((b, h, max(self.capacity, n), d))
                self._v = value_states.new_empty((b, h, max(self.capacity, n), value_states.shape[-1]))
            if self._n + n > self._k.shape[2]:  # grow (only if someone decodes past the capacity)
                self._k = torch_cat_time(self._k, self._k.shape[2] + n)
                self._v = torch_cat_time(self._v, self._v.shape[2] + n)
            self._k[:, :, self._n : self._n + n] = key_states
            self._v[:, :, self._n : self._n + n] = value_states
            self._n += n
            self._views()
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._k is not None:
                self._k = self._k.repeat_interleave(repeats, dim=0)
                self._v = self._v.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices) -> None:
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self._views()

    return PreallocLayer


def torch_cat_time(buf, new_len: int):
    import torch

    extra = buf.new_empty((*buf.shape[:2], new_len - buf.shape[2], buf.shape[3]))
    return torch.cat([buf, extra], dim=2)


class _LazyPrealloc:
    cls = None

    def __call__(self, capacity):
        if self.cls is None:
            self.cls = _prealloc_layer_class()
        return self.cls(capacity)


_PreallocLayer = _LazyPrealloc()

register_sampler("transformers", TransformersSampler)


def naive_generate(model, tokenizer, prompts: list[str], k: int, temperature: float, max_new_tokens: int,
                   top_p: float = 1.0) -> list[list[str]]:
    """The baseline the benchmark compares against: one `model.generate` call per prompt."""
    import torch

    out = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                 top_p=top_p, num_return_sequences=k, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, top_k=None)
        out.append(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out
