"""PRM benchmark: Math-Shepherd annotation throughput and PRM scoring throughput on CPU (or GPU).

    .venv/bin/python benchmarks/bench_prm.py [--policy CKPT] [--prm CKPT] [--queries 100] [--samples 4]
        [--rollouts 4] [--hidden 64] [--layers 2]

Without --policy a random-init tiny policy is built (its outputs are garbage, which makes the
step counts small but the per-token costs real); without --prm a PRM is built from the policy with
a few training steps (the scoring cost does not depend on the weights). Prints solutions/s,
rollouts/s and steps/s for annotation, responses/s and steps/s for scoring.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy")
    ap.add_argument("--prm")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hi", type=int, default=9, help="largest arith operand (prm-demo: 9)")
    ap.add_argument("--max-ops", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bstar.datasets.arith import ArithSpec, generate
    from bstar.models.prm import load_prm, split_steps
    from bstar.models.prm_train import train_prm
    from bstar.models.sampling import get_sampler
    from bstar.models.tiny import build_tiny_policy
    from bstar.verifiers import verify_many

    work = tempfile.mkdtemp(prefix="bench-prm-")
    policy = args.policy or build_tiny_policy(f"{work}/policy", hidden=args.hidden, layers=args.layers, heads=2)
    rows = generate(args.queries, seed=1, spec=ArithSpec(max_ops=args.max_ops, hi=args.hi))
    prompts = [f"Q: {r['prompt']} A: " for r in rows]

    # annotation: N solutions, then M rollouts from every distinct non-final prefix, then verify
    t0 = time.time()
    with get_sampler("transformers", policy, max_batch_rows=512) as s:
        outs = s.sample(prompts, k=args.samples, temperature=1.0, max_new_tokens=args.max_new_tokens, progress=False)
        t_sol = time.time() - t0
        prefixes = sorted({(i, "; ".join(st[: j + 1]) + "; ") for i, o in enumerate(outs) for x in o
                           for st in [split_steps(x.text, "; ")] for j in range(len(st) - 1)})
        t1 = time.time()
        roll = s.sample([prompts[i] + p for i, p in prefixes], k=args.rollouts, temperature=0.8,
                        max_new_tokens=args.max_new_tokens, progress=False) if prefixes else []
        t_roll = time.time() - t1
    pairs = [(p + c.text, rows[i]["answer"]) for (i, p), o in zip(prefixes, roll) for c in o]
    t2 = time.time()
    verify_many("arith", pairs, workers=2)
    t_ver = time.time() - t2
    n_sol = sum(len(o) for o in outs)
    n_steps = sum(len(split_steps(x.text, "; ")) for o in outs for x in o)
    total = time.time() - t0
    print(f"annotation: {n_sol} solutions in {t_sol:.1f}s ({n_sol / t_sol:.0f}/s); {len(pairs)} rollouts from "
          f"{len(prefixes)} prefixes in {t_roll:.1f}s ({len(pairs) / max(t_roll, 1e-9):.0f}/s); verify {t_ver:.1f}s; "
          f"{n_steps} labelled steps in {total:.1f}s ({n_steps / total:.1f} steps/s)")

    prm_path = args.prm
    if not prm_path:
        ex = [{"prompt": prompts[i], "steps": split_steps(x.text, "; ")[:8], "labels": None}
              for i, o in enumerate(outs) for x in o]
        for e in ex:
            e["labels"] = [0.0] * len(e["steps"])
        prm_path = train_prm(ex, policy, f"{work}/prm", max_steps=2, batch_size=16, progress=False).path
    responses = [x.text for o in outs for x in o]
    ps = [prompts[i] for i, o in enumerate(outs) for _ in o]
    prm = load_prm(prm_path, batch_size=args.batch_size)
    prm.score(ps[:8], responses[:8], progress=False)  # warm-up
    t3 = time.time()
    res = prm.score(ps, responses, progress=False)
    t_score = time.time() - t3
    n = sum(r.n_steps for r in res)
    print(f"scoring ({prm.device}, batch {args.batch_size}): {len(res)} responses, {n} steps in {t_score:.2f}s "
          f"({len(res) / t_score:.0f} responses/s, {n / t_score:.0f} steps/s)")


if __name__ == "__main__":
    main()
