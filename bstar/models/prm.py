"""Process reward models (PRMs): score every step of a response, aggregate, map to [-1, 1].

    from bstar.models.prm import load_prm
    prm = load_prm("lake/_checkpoints/RUN/prm", aggregation="min")
    results = prm.score(["Q: 23+45-12=? A: "], ["23+45=68; 68-12=56. #### 56"])
    results[0].step_scores   # [0.97, 0.93]   raw per-step outputs (probabilities here)
    results[0].prm           # 0.86           2 * min(p) - 1, in [-1, 1]

A response is split into steps by a delimiter (`; ` for the built-in arith task, a blank line
for math). Each step gets one score, read at a token that ends the step; the scores are
aggregated (`min` by default, `mean`, `last`) and mapped to [-1, 1]: a probability p becomes
2p - 1, a logit s becomes clip(s / scale, -1, 1). DESIGN.md §1: reward = 1[correct] + prm.

Formats a PRM checkpoint can have (`read_prm_spec` decides; anything else is a clear ValueError):

- `bstar-scalar` (ours, `prm_config.json` with `"format": "bstar-scalar"`): a causal LM saved
  as an HF model directory (the tiny Llama or any other) whose tokenizer holds a step-end token,
  plus a linear head `prm_head.safetensors` (weight [1, hidden], bias [1]). The input is
  `prompt + step_1 <step> + delim + step_2 <step> + ...` built token by token, and the head reads
  the last hidden state at every `<step>` token: a logit whose sigmoid is P(step is good).
  `train_prm` (bstar.models.prm_train) builds and trains it.
- `math-shepherd` (Wang et al. 2024, e.g. `peiyi9979/math-shepherd-mistral-7b-prm`): a plain
  causal LM that reads `question + " " + step_1 + " ки" + "\\n" + step_2 + " ки" ...`; the score
  of a step is P("+") / (P("+") + P("-")) at its tag token (tag and tokens configurable). Recognised
  by a `prm_config.json` with `"format": "math-shepherd"`, by a name mentioning Math-Shepherd, or
  when asked for explicitly (`format="math-shepherd"`).

Scoring is batched (length-sorted, right-padded), runs on CPU or GPU, and shows a progress bar.

Inputs longer than the model's `max_position_embeddings` are cut from the left (the step-end
tokens are at the end). A step whose step-end token was cut off gets no score: it is left out of
`step_scores` and of the aggregate (never read at a meaningless position), and counted in
`PRMResult.n_truncated`; `step_scores` then holds the scores of the *last* steps only. The last
step is always scored (tokens after its end are dropped before cutting, and `max_length` >= 1).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, Sequence

PRM_CONFIG = "prm_config.json"
HEAD_FILE = "prm_head.safetensors"
FORMATS = ("bstar-scalar", "math-shepherd")
AGGREGATIONS = ("min", "mean", "last")
SCORE_KINDS = ("probability", "logit")
MATH_DELIMITER = "\n\n"
DATASET_DELIMITERS = {"arith": "; "}
DEFAULT_STEP_TOKEN = "<step>"
MS_STEP_TAG, MS_GOOD, MS_BAD, MS_JOIN = "ки", "+", "-", "\n"

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# pure pieces: steps, aggregation, mapping (no torch)
# ----------------------------------------------------------------------------------------------


def default_delimiter(dataset: str | None = None) -> str:
    """`; ` for the built-in arith task, a blank line for everything else."""
    return DATASET_DELIMITERS.get(dataset or "", MATH_DELIMITER)


def split_steps(response: str, delimiter: str) -> list[str]:
    """Non-empty steps of `response` (surrounding whitespace of each step stripped).

    A response with no text at all is one empty step, so every response gets a score.
    """
    if not delimiter:
        raise ValueError("the step delimiter must not be empty")
    steps = [s.strip() for s in (response or "").split(delimiter)]
    steps = [s for s in steps if s]
    return steps or [""]


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """One number for a response from its step scores: `min` (default), `mean` or `last`."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    if not len(scores):
        raise ValueError("no step scores to aggregate")
    if how == "min":
        return float(min(scores))
    if how == "mean":
        return float(sum(scores) / len(scores))
    return float(scores[-1])


def to_unit(x: float, kind: str = "probability", scale: float = 1.0) -> float:
    """Map a score to [-1, 1]: probability p -> 2p - 1; logit s -> clip(s / scale, -1, 1)."""
    if kind == "probability":
        return float(min(1.0, max(-1.0, 2.0 * x - 1.0)))
    if kind == "logit":
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return float(min(1.0, max(-1.0, x / scale)))
    raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None if one class."""
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------
# checkpoint format
# ----------------------------------------------------------------------------------------------


@dataclass
class PRMSpec:
    """What `prm_config.json` records (and what a Math-Shepherd model is assumed to be)."""

    format: str = "bstar-scalar"
    step_delimiter: str | None = None  # None: chosen by dataset at scoring time
    score: str = "probability"  # what step_scores hold: sigmoid(head) / P(+) renormalised, or raw logits
    step_token: str = DEFAULT_STEP_TOKEN  # bstar-scalar: token appended after every step
    step_token_id: int | None = None
    step_tag: str = MS_STEP_TAG  # math-shepherd
    good_token: str = MS_GOOD
    bad_token: str = MS_BAD
    step_join: str = MS_JOIN
    base_model: str | None = None
    extra: dict = field(default_factory=dict)  # training provenance (labels, steps, ...)

    def save(self, out_dir: str | Path) -> None:
        Path(out_dir, PRM_CONFIG).write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))


def _looks_like_math_shepherd(path: str, model_config: dict) -> bool:
    names = [path, str(model_config.get("_name_or_path", ""))]
    return any("shepherd" in n.lower() for n in names)


def read_prm_spec(path: str | Path, format: str = "auto") -> PRMSpec:
    """The format of the PRM at `path`; a ValueError naming what was found when unreadable."""
    path = str(path)
    if format not in ("auto", *FORMATS):
        raise ValueError(f"PRM format must be 'auto' or one of {FORMATS}, got {format!r}")
    cfg_file = Path(path, PRM_CONFIG)
    if cfg_file.is_file():
        data = json.loads(cfg_file.read_text())
        found = data.get("format")
        if found not in FORMATS:
            raise ValueError(f"{cfg_file}: unknown PRM format {found!r}; this version reads {', '.join(FORMATS)}")
        if format != "auto" and format != found:
            raise ValueError(f"{path} is a {found!r} PRM (prm_config.json), but format {format!r} was asked for")
        known = {k: v for k, v in data.items() if k in PRMSpec.__dataclass_fields__}
        spec = PRMSpec(**known)
        if spec.format == "bstar-scalar" and not Path(path, HEAD_FILE).is_file():
            raise ValueError(f"{path}: prm_config.json says bstar-scalar but {HEAD_FILE} is missing")
        return spec
    is_dir = Path(path).is_dir()
    model_config: dict = {}
    if is_dir and Path(path, "config.json").is_file():
        model_config = json.loads(Path(path, "config.json").read_text())
    if format == "math-shepherd" or (format == "auto" and _looks_like_math_shepherd(path, model_config)):
        if not is_dir and not ("/" in path and not path.startswith((".", "/"))):
            raise ValueError(f"PRM {path!r}: no such directory (and not a hub id)")
        return PRMSpec(format="math-shepherd", score="probability", base_model=path)
    if format == "bstar-scalar":
        raise ValueError(f"{path}: format bstar-scalar needs {PRM_CONFIG} and {HEAD_FILE}")
    if not is_dir:
        raise ValueError(
            f"cannot read PRM {path!r}: not a local directory, and its name does not say Math-Shepherd; "
            "pass format 'math-shepherd' (reward.prm_options.format) if it is one"
        )
    files = sorted(p.name for p in Path(path).iterdir())[:20]
    raise ValueError(
        f"cannot read the PRM at {path}: no {PRM_CONFIG} (our 'bstar-scalar' format) and no recognisable "
        f"Math-Shepherd model (found files {files}, model_type={model_config.get('model_type')!r}, "
        f"_name_or_path={model_config.get('_name_or_path')!r}). Train one with `bstar prm train`, or set "
        "reward.prm_options.format: math-shepherd for a Math-Shepherd-style PRM"
    )


# ----------------------------------------------------------------------------------------------
# the scorer
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRMResult:
    """One response's PRM score.

    `n_steps` counts the steps of the response; `step_scores` holds one score per *scored* step.
    When the input was left-truncated, the first `n_truncated` steps lost their step-end token and
    are not scored: `step_scores` are then the scores of the last `n_steps - n_truncated` steps
    (step i of the response is `step_scores[i - n_truncated]`), and `prm` aggregates those only.
    """

    step_scores: list[float]  # raw per-step outputs (probabilities, or logits when score == "logit")
    prm: float  # aggregate of step_scores mapped to [-1, 1]
    n_steps: int  # steps in the response, scored or not
    n_truncated: int = 0  # leading steps cut off by left truncation (not in step_scores)


def load_head(path: str | Path, device="cpu"):
    """The scalar head (torch.nn.Linear(hidden, 1)) of a bstar-scalar PRM."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(Path(path, HEAD_FILE)))
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head.to(device)


class StepInputs(NamedTuple):
    """What `step_inputs` builds for one response."""

    ids: list[int]  # input ids, at most max_length of them
    positions: list[int]  # step-end positions in `ids` of the scored steps: the last len(positions) steps
    truncated: int  # leading steps whose step-end token was cut off by left truncation (no position)


def step_inputs(tokenizer, spec: PRMSpec, prompt: str, steps: list[str], max_length: int | None = None) -> StepInputs:
    """(input ids, positions of the step-end tokens, number of cut steps) for one response.

    bstar-scalar: token level, `prompt` ids (BOS added) then per step its ids (the delimiter in
    front of every step but the first) and the step token. Math-Shepherd: the model's own string
    format, falling back to token level if the tag does not come out as one token per step.

    Without truncation there is one position per step. An input longer than `max_length` is first
    cut after the last step-end token (later tokens cannot change any step's score in a causal LM),
    then from the left: steps whose step-end token falls in the cut-off part get no position and
    are counted in `truncated`; they are always the first ones, and the last step always survives.
    `max_length` None: no limit; it must otherwise be >= 1.
    """
    from bstar.models.loading import encode_prompts

    delim = spec.step_delimiter or ""
    if spec.format == "math-shepherd":
        tag_id = _single_token_id(tokenizer, spec.step_tag)
        clean = [s.replace(spec.step_tag, "") for s in steps]
        text = prompt + " " + spec.step_join.join(f"{s} {spec.step_tag}" for s in clean)
        ids = encode_prompts(tokenizer, [text])[0]
        pos = [i for i, t in enumerate(ids) if t == tag_id]
        if len(pos) != len(steps):
            ids = list(encode_prompts(tokenizer, [prompt + " "])[0])
            pos = []
            for i, s in enumerate(clean):
                piece = (spec.step_join if i else "") + s + " "
                ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
                pos.append(len(ids))
                ids.append(tag_id)
    else:
        step_id = spec.step_token_id
        ids = list(encode_prompts(tokenizer, [prompt])[0])
        pos = []
        for i, s in enumerate(steps):
            piece = (delim if i else "") + s
            if piece:
                ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
            pos.append(len(ids))
            ids.append(step_id)
    truncated = 0
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1 (or None for no limit), got {max_length}")
        if len(ids) > max_length and pos:
            ids = ids[: pos[-1] + 1]
        if len(ids) > max_length:
            cut = len(ids) - max_length
            ids = ids[cut:]
            kept = [p - cut for p in pos if p >= cut]  # a cut step-end token: no score, never position 0
            truncated, pos = len(pos) - len(kept), kept
    return StepInputs(list(ids), pos, truncated)


def _single_token_id(tokenizer, text: str) -> int:
    """Id of `text` as one token (Math-Shepherd tag / +/- tokens); a clear error otherwise."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if i not in (tokenizer.bos_token_id,)]
    if len(ids) != 1:
        # sentencepiece tokenizers put a word-start marker in front: take the last piece
        vocab = tokenizer.get_vocab()
        if text in vocab:
            return vocab[text]
        if ids and len(ids) == 2 and tokenizer.convert_ids_to_tokens(ids[0]) in ("▁", "Ġ", " "):
            return ids[1]
        raise ValueError(f"{text!r} is not a single token of this PRM's tokenizer (got ids {ids})")
    if ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"{text!r} is not a single token of this PRM's tokenizer (it maps to the unknown token)")
    return ids[0]


class PRMScorer:
    """A loaded PRM: `step_scores` per response, `score` = steps + aggregate mapped to [-1, 1]."""

    def __init__(
        self,
        path: str | Path,
        *,
        format: str = "auto",
        step_delimiter: str | None = None,
        aggregation: str = "min",
        score: str = "auto",
        scale: float = 1.0,
        step_tag: str | None = None,
        good_token: str | None = None,
        bad_token: str | None = None,
        batch_size: int = 64,
        device: str | None = "auto",
        dtype: str | None = "auto",
        threads: int | None = None,
    ):
        from bstar.models.loading import load_policy, resolve_device, set_cpu_threads

        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.path = str(path)
        spec = read_prm_spec(path, format)
        ms = {k: v for k, v in dict(step_tag=step_tag, good_token=good_token, bad_token=bad_token).items() if v}
        if step_delimiter:
            ms["step_delimiter"] = step_delimiter
        self.spec = replace(spec, **ms)
        self.aggregation, self.scale, self.batch_size = aggregation, scale, batch_size
        self.score_kind = self.spec.score if score in (None, "auto") else score
        if self.score_kind not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS} or 'auto', got {score!r}")
        self.device = resolve_device(device)
        if self.device == "cpu":
            set_cpu_threads(threads)
        self.model, self.tokenizer = load_policy(self.path, device=self.device, dtype=dtype)
        self.model.eval()
        self.max_length = getattr(self.model.config, "max_position_embeddings", None)
        if self.spec.format == "bstar-scalar":
            self.head = load_head(self.path, self.device).to(self.model.dtype)
            if self.spec.step_token_id is None:
                self.spec.step_token_id = self.tokenizer.convert_tokens_to_ids(self.spec.step_token)
        else:
            self.head = None
            _single_token_id(self.tokenizer, self.spec.step_tag)  # fail now, not at the first batch
            self.good_id = _single_token_id(self.tokenizer, self.spec.good_token)
            self.bad_id = _single_token_id(self.tokenizer, self.spec.bad_token)

    @property
    def delimiter(self) -> str | None:
        return self.spec.step_delimiter

    def close(self) -> None:
        """Drop the weights and hand the device memory back (the next stage may be a vLLM engine)."""
        from bstar.models.loading import release_device_memory

        self.model = self.head = None
        release_device_memory()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- scoring ---------------------------------------------------------------------------------
    def step_scores(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        *,
        steps: Sequence[list[str]] | None = None,
        delimiter: str | Sequence[str] | None = None,
        progress: bool = True,
        return_truncated: bool = False,
    ) -> list[list[float]] | tuple[list[list[float]], list[int]]:
        """Raw per-step scores. Give `responses` (split with `delimiter`, else the checkpoint's,
        else a blank line; one delimiter or one per response) or already split `steps`.

        A response whose input is longer than `self.max_length` is left-truncated: its first
        steps, whose step-end token was cut off, get no score, and its list holds the scores of its
        last len(list) steps only. `return_truncated=True` returns `(scores, truncated)`, where
        `truncated[i]` is how many leading steps of response i were left out (0 when none)."""
        import torch

        from bstar.logs import progress as progress_bar

        if steps is None:
            if responses is None or len(responses) != len(prompts):
                raise ValueError("give one response (or one list of steps) per prompt")
            delims = delimiter if isinstance(delimiter, (list, tuple)) else [delimiter] * len(responses)
            steps = [split_steps(r, d or self.spec.step_delimiter or MATH_DELIMITER) for r, d in zip(responses, delims)]
        delims_used = delimiter if isinstance(delimiter, (list, tuple)) else [delimiter] * len(prompts)
        items = []
        for p, st, d in zip(prompts, steps, delims_used):
            spec = self.spec if d is None or d == self.spec.step_delimiter else replace(self.spec, step_delimiter=d)
            items.append(step_inputs(self.tokenizer, spec, p, list(st) or [""], self.max_length))
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        out: list[list[float] | None] = [None] * len(items)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bar = progress_bar(len(items), "prm score", disable=not progress, unit="resp", logger=log, dynamic_ncols=True)
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                n = max(len(items[i].ids) for i in idx)
                ids = torch.full((len(idx), n), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), n), dtype=torch.long)
                for r, i in enumerate(idx):
                    x = items[i].ids
                    ids[r, : len(x)] = torch.tensor(x)
                    mask[r, : len(x)] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                rows = torch.cat([torch.full((len(items[i].positions),), r, dtype=torch.long) for r, i in enumerate(idx)])
                cols = torch.cat([torch.tensor(items[i].positions, dtype=torch.long) for i in idx])
                values = self._values_at(ids, mask, rows.to(self.device), cols.to(self.device)).float().cpu().tolist()
                k = 0
                for i in idx:
                    m = len(items[i].positions)
                    out[i] = values[k : k + m]
                    k += m
                bar.update(len(idx))
        bar.close()
        if return_truncated:
            return out, [it.truncated for it in items]  # type: ignore[return-value]
        return out  # type: ignore[return-value]

    def _values_at(self, ids, mask, rows, cols):
        import torch

        if self.spec.format == "bstar-scalar":
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = self.head(hidden[rows, cols]).squeeze(-1)
            return logits if self.score_kind == "logit" else torch.sigmoid(logits.float())
        logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, cols]
        pair = logits[:, [self.good_id, self.bad_id]].float()
        if self.score_kind == "logit":
            return pair[:, 0] - pair[:, 1]  # log-odds of "+" against "-"
        return torch.softmax(pair, dim=-1)[:, 0]

    def score(self, prompts: Sequence[str], responses: Sequence[str], *, delimiter=None,
              progress: bool = True) -> list[PRMResult]:
        """Per response: raw step scores, and the aggregate mapped to [-1, 1]. Steps cut off by
        left truncation are left out of both and counted in `PRMResult.n_truncated`."""
        per_step, cut = self.step_scores(prompts, responses, delimiter=delimiter, progress=progress,
                                         return_truncated=True)
        return [
            PRMResult(s, to_unit(aggregate(s, self.aggregation), self.score_kind, self.scale), len(s) + c, c)
            for s, c in zip(per_step, cut)
        ]


def load_prm(path: str | Path, **options) -> PRMScorer:
    """A `PRMScorer` for any readable PRM checkpoint (see the module docstring)."""
    return PRMScorer(path, **options)


def scorer_from_options(path: str, options, *, device: str | None = None) -> PRMScorer:
    """A PRMScorer from a run config's `reward.prm_options` (bstar.config.PRMOptions)."""
    return PRMScorer(
        path,
        format=options.format,
        step_delimiter=options.step_delimiter,
        aggregation=options.aggregation,
        score=options.score,
        scale=options.scale,
        step_tag=options.step_tag,
        good_token=options.good_token,
        bad_token=options.bad_token,
        batch_size=options.batch_size,
        device=device or options.device,
        threads=int(os.environ.get("BSTAR_TORCH_THREADS", 0)) or None,
    )


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
