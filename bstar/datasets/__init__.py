"""Datasets: loaders (hub id or local JSONL/JSON/Parquet) mapped to one internal row, prompt
templates, and the built-in `arith` task.

    from bstar.datasets import load, render_prompt, gold_response, answer_for_verifier

    rows = load({"name": "gsm8k", "path": "../shared/data/gsm8k/test.jsonl", "limit": 100})
    rows = load({"name": "arc", "hub_id": "allenai/ai2_arc", "config": "ARC-Challenge", "split": "test"})
    rows = load({"name": "arith", "split": "train", "n": 5000, "seed": 0, "max_ops": 3})
    rows = load({"name": "mine", "loader": "my_pkg.data:load_rows", "verifier": "my_pkg.grade:verify",
                 "options": {"size": 10}})
    rows -> Rows (a list of {"query_id", "prompt", "answer", "meta"}) with .verifier, .skipped,
            .duplicates, .errors, .report()

Spec keys (a dict, a name string, or any object with `model_dump()`):
- `name`: a built-in (`arith`, `gsm8k`, `math`, `math500`, `apps`, `arc`), a name registered with
  `register_dataset`, or any name together with `loader`;
- `path` (local file or fsspec URL) or `hub_id` (+ `config`), else the built-in's default hub id;
- `split` (default per dataset), `offset` (skip the first N valid rows), `limit` (then keep at
  most N), `on_error` (`raise` | `skip`);
- `max_prompt_chars` (top level or in `options`): longer prompts are malformed records
  (default `rows.MAX_PROMPT_CHARS`, 200,000);
- `loader`: `package.module:function` returning an iterable of row dicts (`prompt`, `answer`,
  optional `query_id`, `meta`); it is called with `options` as keyword arguments, plus `split`,
  `path` and `limit` when its signature takes them;
- `verifier`: a verifier name or `package.module:function` (registered under the dataset name);
- `options`: extra keyword arguments; for `arith`: `n`, `seed`, `min_ops`, `max_ops`, `lo`, `hi`,
  `ops` (also accepted at the top level).
Other keys (e.g. a run config's `template`) are ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any, Callable

from bstar.datasets import arith as arith_task
from bstar.datasets.loaders import BUILTIN
from bstar.datasets.rows import MAX_PROMPT_CHARS, RowError, Rows, build_rows, check_row, read_hub, read_local
from bstar.datasets.templates import TEMPLATES, answer_for_verifier, gold_response, question_text, render_prompt

__all__ = [
    "DATASET_VERIFIERS",
    "RowError",
    "Rows",
    "TEMPLATES",
    "answer_for_verifier",
    "dataset_names",
    "gold_response",
    "load",
    "question_text",
    "register_dataset",
    "render_prompt",
]

# Default verifier of each built-in dataset.
DATASET_VERIFIERS = {"arith": "arith", **{name: b[5] for name, b in BUILTIN.items()}}
_ARITH_KEYS = ("n", "seed", *(f.name for f in fields(arith_task.ArithSpec)))
_USER: dict[str, tuple[str | Callable, str | None]] = {}


def register_dataset(name: str, loader: str | Callable, verifier: str | Callable | None = None) -> None:
    """Make `load({"name": name, ...})` use `loader`; `verifier` (name or dotted path) is what
    `Rows.verifier` reports, registered as a verifier under the dataset's name when it is a path."""
    if name in DATASET_VERIFIERS:
        raise ValueError(f"{name!r} is a built-in dataset; choose another name")
    _USER[name] = (loader, verifier)


def dataset_names() -> list[str]:
    return sorted([*DATASET_VERIFIERS, *_USER])


def _as_dict(spec: Any) -> dict:
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict):
        return dict(spec)
    if hasattr(spec, "model_dump"):  # pydantic
        return spec.model_dump()
    if hasattr(spec, "__dict__"):
        return dict(vars(spec))
    raise TypeError(f"dataset spec must be a name, a dict or a config object, got {type(spec).__name__}")


def load(spec: Any) -> Rows:
    """Rows of the dataset `spec` describes (see the module docstring)."""
    s = _as_dict(spec)
    name = s.get("name")
    if not name or not isinstance(name, str):
        raise ValueError(f"dataset spec needs a 'name': {s}")
    options = dict(s.get("options") or {})
    max_chars = s.get("max_prompt_chars") or options.pop("max_prompt_chars", None) or MAX_PROMPT_CHARS
    on_error = s.get("on_error") or "raise"
    limit = s.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"dataset {name!r}: limit must be a non-negative integer, got {limit!r}")
    offset = s.get("offset") or 0
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"dataset {name!r}: offset must be a non-negative integer, got {offset!r}")
    loader = s.get("loader")
    verifier = s.get("verifier")
    if loader is None and name in _USER:
        loader, default_verifier = _USER[name]
        verifier = verifier or default_verifier
    if loader is not None:
        return _load_user(name, loader, verifier, s, options, on_error, limit, offset, max_chars)
    if name == "arith":
        return _load_arith(s, options, limit, verifier)
    if name not in BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; built-ins: {', '.join(dataset_names())}, or give a 'loader'")
    mapper, hub_id, hub_config, hub_configs, default_split, default_verifier = BUILTIN[name]
    split = s.get("split") or default_split
    if s.get("path"):
        records = read_local(s["path"])
    elif s.get("hub_id"):  # the user's own hub copy: its config (if any) is theirs to name
        records = read_hub(s["hub_id"], s.get("config"), split)
    else:
        records = read_hub(hub_id, s.get("config") or hub_config, split, configs=hub_configs)
    verifier_name = _verifier_name(name, verifier) or default_verifier
    return build_rows(
        records, mapper, dataset=name, verifier=verifier_name, on_error=on_error, limit=limit, offset=offset,
        max_prompt_chars=max_chars,
    )


def _verifier_name(dataset: str, verifier: str | Callable | None) -> str | None:
    """A verifier given as a dotted path or a function is registered under the dataset's name."""
    if verifier is None:
        return None
    from bstar.verifiers import register_verifier
    from bstar.verifiers.registry import get_verifier

    if callable(verifier) or (isinstance(verifier, str) and ":" in verifier):
        register_verifier(dataset, verifier, replace=True)
        return dataset
    get_verifier(verifier)  # fail now on a typo, not when the first sample is scored
    return verifier


def _load_arith(s: dict, options: dict, limit: int | None, verifier) -> Rows:
    opts = {k: s[k] for k in _ARITH_KEYS if s.get(k) is not None}
    opts.update(options)
    unknown = set(opts) - set(_ARITH_KEYS)
    if unknown:
        raise ValueError(f"dataset 'arith': unknown options {sorted(unknown)}; known: {list(_ARITH_KEYS)}")
    split = s.get("split") or "train"
    n = opts.pop("n", None)
    n = limit if n is None else (min(n, limit) if limit is not None else n)
    if n is None:
        n = 1000
    seed = opts.pop("seed", 0)
    rows = arith_task.generate(int(n), seed=int(seed), split=split, spec=arith_task.ArithSpec(**opts))
    return Rows(rows, dataset="arith", verifier=_verifier_name("arith", verifier) if verifier else "arith")


def _load_user(name, loader, verifier, s, options, on_error, limit, offset, max_chars) -> Rows:
    from bstar.verifiers.registry import resolve

    try:
        fn = resolve(loader)
    except ValueError as e:
        raise ValueError(f"dataset {name!r}: loader {loader!r}: {e}") from None
    kwargs = dict(options)
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, takes_any = {}, True
    for key in ("split", "path", "limit"):
        if s.get(key) is not None and (takes_any or key in params):
            kwargs[key] = s[key]
    if "limit" in kwargs:
        kwargs["limit"] += offset  # the loader's first rows include the ones `offset` leaves out
    produced = fn(**kwargs)
    if produced is None:
        raise ValueError(f"dataset {name!r}: loader {loader!r} returned None, expected rows")
    label = loader if isinstance(loader, str) else getattr(loader, "__qualname__", "loader")
    records = ((f"{label} row {i}", row) for i, row in enumerate(produced))
    return build_rows(
        records,
        check_row,
        dataset=name,
        verifier=_verifier_name(name, verifier),
        on_error=on_error,
        limit=limit,
        offset=offset,
        max_prompt_chars=max_chars,
    )
