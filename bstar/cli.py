"""The `bstar` command line.

    bstar run CONFIG [--run-id ID] [--resume ID] [--set key=value ...] [--root URL]
                                                  run B-STaR (or a baseline) end to end, in-process
    bstar check CONFIG [--set key=value ...]      validate a run config and print it resolved
    bstar sql "SELECT ..." [--root R] [--format table|csv|json]
                                                  read-only SQL over the candidate lake
    bstar report RUN_ID... [--root R] [--out FILE.html]
                                                  a self-contained HTML report, runs overlaid
    bstar serve [--file deployments/prefect.yaml] [--gpu-slots N] [--workdir DIR] [--limit N]
                                                  serve the deployments to the Prefect server
    bstar prm run CONFIG [--run-id ID] [--resume ID] [--set ...] [--root URL]
                                                  annotate steps, train a PRM, run B-STaR with it
    bstar prm eval CONFIG --prm PATH --policy PATH [--run-id ID] [--root URL]
                                                  PRM step accuracy / AUC / Best-of-K on a test split
    bstar compare CONFIG [--id ID] [--resume ID] [--only ARM ...] [--set key=value ...] [--root URL]
                                                  several methods from one shared warm-up: table + report
    bstar version

Heavy imports (torch, Prefect, DuckDB) happen inside the subcommand that needs them, so
`bstar --help` and config checks stay fast.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_check(args: argparse.Namespace) -> int:
    from bstar.config import is_compare_config, load_compare_config, load_config
    from bstar.preflight import preflight

    if is_compare_config(args.config):
        cc = load_compare_config(args.config, args.set)
        _print_memory(cc.base)  # every arm trains the same model the same way
        _print_warnings(preflight(cc.base, storage=False, log_warnings=False))
        print(cc.model_dump_json(indent=2, exclude={"base": {"storage": {"key", "secret"}}}))
        arms = ", ".join(f"{a.name} ({a.method}, {a.reward})" for a in cc.arms)
        print(f"\nok: comparison of {len(cc.arms)} arms x {len(cc.seeds)} seed(s): {arms}", file=sys.stderr)
        from bstar.config import arm_run_config

        for arm in cc.arms:
            cfg = arm_run_config(cc, arm, cc.seeds[0], policy="start", prm="prm")
            gold = "; trains on the gold seed set too (selection.include_gold)" if (
                cfg.selection.include_gold and cfg.self_generated) else ""
            print(f"  {arm.name}: {cfg.search_summary()}; n*={cfg.selection.target_per_query:g}{gold}", file=sys.stderr)
        return 0
    cfg = load_config(args.config, overrides=args.set)

    _print_memory(cfg)  # before pre-flight, so a config refused for memory still shows the table
    # paths, data files, verifiers, GPUs, memory; `bstar run` also tries the storage root
    warnings = preflight(cfg, storage=False, log_warnings=False)
    print(cfg.model_dump_json(indent=2, exclude={"storage": {"key", "secret"}}))
    from bstar.tasks.training import training_summary

    sel = cfg.selection
    how = "selection.n_star" if sel.n_star is not None else (
        f"N/M = {sel.n_target}/{sel.queries_per_round}" + ("" if sel.n_star_rounding == "none" else f", {sel.n_star_rounding}"))
    print(f"\nok: method={cfg.method} mode={cfg.training_mode} n*={sel.target_per_query:g} ({how})", file=sys.stderr)
    print(f"search: {cfg.search_summary()}", file=sys.stderr)
    print(f"training: {training_summary(cfg)}", file=sys.stderr)
    print(f"model: {_model_summary(cfg.model)}", file=sys.stderr)
    if cfg.execution.engine == "ray":
        from bstar.tasks.shards import cluster_summary

        # preflight above connected and checked every node; this is only the summary line
        print(f"execution: {cluster_summary(cfg)}", file=sys.stderr)
    _print_warnings(warnings)
    return 0


def _print_memory(cfg) -> None:
    """The per-GPU memory table of the config's training jobs and sampler (docs/gpu-memory.md)."""
    from bstar.models.memory import format_report
    from bstar.preflight import memory_report

    print("\n".join(format_report(memory_report(cfg))), file=sys.stderr)


def _print_warnings(warnings) -> None:
    for w in warnings:
        print(f"warning: {w.field}: {w.message}", file=sys.stderr)


def _model_summary(model) -> str:
    """Where the policy comes from and how its prompts are rendered, in one line."""
    from bstar.models.loading import gguf_source

    gguf = gguf_source(model.name_or_path, model.gguf_file)
    where = (f"GGUF {gguf[1]} in {gguf[0]}, de-quantized once into {{root}}/_checkpoints/RUN/base" if gguf
             else model.name_or_path)
    return f"{where}; prompts: {'its chat template' if model.chat_template else 'plain (paper / dataset) format'}"


def _export_credentials(cfg) -> None:
    """Config credentials reach the stages through the usual AWS variables, never through
    flow parameters (which Prefect stores)."""
    import os

    st = cfg.storage
    if st.key:
        os.environ["AWS_ACCESS_KEY_ID"] = st.key.get_secret_value()
    if st.secret:
        os.environ["AWS_SECRET_ACCESS_KEY"] = st.secret.get_secret_value()


def print_summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v, spec=".3f"):
        return "—" if v is None else format(v, spec)

    table = Table(title=f"run {result['run_id']}  (lake: {result['root']})")
    for col in ("round", "temperature", "threshold", "balance score", "selected", "greedy Pass@1"):
        table.add_column(col, justify="right")
    if result["start"]:
        table.add_row("start", "", "", "", "", " ".join(fmt(v) for v in result["start"]["pass@1"].values()))
    for i, r in enumerate(result["rounds"], 1):
        table.add_row(
            str(i),
            fmt(r["temperature"], ".2f"),
            fmt(r["threshold"], ".2f"),
            fmt(r.get("balance_score"), ".4f"),
            str(r["selected"]),
            " ".join(fmt(v) for v in r["pass@1"].values()),
        )
    Console().print(table)
    print(f"final policy: {result['policy']}")
    if result.get("report"):
        print(f"report:       {result['report']}")
    print(f'query it:     bstar sql "SELECT * FROM metrics WHERE run_id = \'{result["run_id"]}\'" --root {result["root"]}')


def _cmd_run(args: argparse.Namespace) -> int:
    from bstar.config import load_config

    overrides = list(args.set)
    if args.root:
        overrides.append(f"storage.root={args.root}")
    cfg = load_config(args.config, overrides=overrides)  # fail on a bad config before Prefect starts
    from bstar.preflight import preflight

    preflight(cfg)  # a missing model, data file or wrong S3 credentials fail here, naming the field
    run_id = args.resume or args.run_id or cfg.run_id
    if args.resume:
        from bstar.storage.lake import Lake

        if not Lake(cfg.storage.root, cfg.storage.storage_options()).exists("runs", args.resume, 0):
            raise ValueError(f"--resume {args.resume}: no such run under {cfg.storage.root}")
    _export_credentials(cfg)
    if cfg.reward.kind == "answer+prm" and not cfg.reward.prm:
        # no PRM checkpoint given: annotate steps and train one first (bstar.flows.prm)
        from bstar.flows.prm import prm_run as bstar_run
    else:
        from bstar.flows.run import bstar_run

    result = bstar_run(config=str(args.config), run_id=run_id, overrides=overrides)
    print_summary(result)
    return 0


def _cmd_prm(args: argparse.Namespace) -> int:
    import json

    from bstar.config import load_config

    overrides = list(args.set) + ([f"storage.root={args.root}"] if args.root else [])
    cfg = load_config(args.config, overrides=overrides)
    _export_credentials(cfg)
    if args.prm_command == "run":
        from bstar.preflight import preflight

        preflight(cfg)
        from bstar.flows.prm import prm_run

        result = prm_run(config=str(args.config), run_id=args.resume or args.run_id or cfg.run_id, overrides=overrides)
        print(json.dumps({k: result.get(k) for k in ("run_id", "prm", "quality", "annotation", "training")}, indent=1))
        print_summary(result)
        for r in [result["start"], *result["rounds"]]:
            print("Best-of-K:", r.get("ranking", {}).get("best_of_k"))
        return 0
    # eval: one PRM on the config's first test split, as a run of its own
    from bstar import code_version
    from bstar.tasks.common import result_storage
    from bstar.tasks.data import record_run
    from bstar.tasks.prm import evaluate_prm

    if cfg.reward.prm_train is None:
        from bstar.config import PRMTrainConfig

        cfg.reward.prm_train = PRMTrainConfig()
    cfg.reward.kind, cfg.reward.prm = "answer+prm", args.prm
    run_id = args.run_id or f"prm-eval-{cfg.name}"
    cfg_json = cfg.to_json()
    from prefect import flow

    @flow(name="bstar-prm-eval")
    def prm_eval() -> dict:
        record_run(run_id, cfg_json, code_version())
        return evaluate_prm.with_options(result_storage=result_storage(cfg, run_id))(run_id, 0, args.prm, args.policy, cfg_json)

    print(json.dumps(prm_eval(), indent=1))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bstar.config import load_compare_config

    overrides = list(args.set) + ([f"base.storage.root={args.root}"] if args.root else [])
    cc = load_compare_config(args.config, overrides)  # a bad config fails before Prefect starts
    unknown = sorted(set(args.only or []) - {a.name for a in cc.arms})
    if unknown:
        raise ValueError(f"--only {unknown}: no such arm (arms: {[a.name for a in cc.arms]})")
    from bstar.preflight import preflight

    preflight(cc.base)
    compare_id = args.resume or args.id
    if args.resume:
        from bstar.storage.lake import Lake

        if not Lake(cc.base.storage.root, cc.base.storage.storage_options()).exists("runs", f"{args.resume}-start", 0):
            raise ValueError(f"--resume {args.resume}: no such comparison under {cc.base.storage.root}")
    _export_credentials(cc.base)
    from bstar.flows.compare import compare
    from bstar.reports import build_report

    result = compare(config=str(args.config), compare_id=compare_id, only=args.only, overrides=overrides)
    print_comparison(result)
    out = args.out or f"bstar-report-{result['compare_id']}.html"
    present = [r for r in result["run_ids"] if r in result["sampled"] or r.endswith("-start")]
    path = build_report(present, cc.base.storage.root, out=out, storage_options=cc.base.storage.storage_options() or None)
    print(f"report:       {path}")
    print(f"resume:       bstar compare {args.config} --resume {result['compare_id']}")
    return 0


def print_comparison(result: dict) -> None:
    """The comparison table (95% intervals) and the per-round B-STaR trajectories."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from bstar.reports.compare import HEADER, format_rows

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file or pipe: do not wrap the table at 80 columns
    rows = format_rows(pl.DataFrame(result["table"])) if result["table"] else []
    # metrics no arm has (greedy-only evaluation: eval.k = 0) are left out
    keep = [i for i, col in enumerate(HEADER) if not rows or any(r[i] != "—" for r in rows) or col == "Pass@1 gain"]
    ks = f"; K={result['k']}, S={result['s']}" if "Pass@K" in [HEADER[i] for i in keep] else ""
    table = Table(title=f"comparison {result['compare_id']}  (percent; ± = 95% interval{ks})")
    for i in keep:
        table.add_column(HEADER[i], justify="left" if HEADER[i] in ("arm", "method", "reward", "split") else "right")
    for row in rows:
        table.add_row(*[row[i] for i in keep])
    console.print(table)
    for row in result["table"]:
        if row.get("Pass@1") is None:
            continue
        gain = "" if row["arm"] == "start" else f"   {row['gain'] * 100:+.1f} points over the warm-up"
        print(f"greedy Pass@1 {row['split']:<14} {row['arm']:<18} {row['Pass@1'] * 100:5.1f}% (SE {row['Pass@1 se'] * 100:.1f}){gain}")
    if result.get("rounds"):
        from bstar.reports.compare import per_round_rows

        header, rows = per_round_rows(pl.DataFrame(result["rounds"]))
        keep = [i for i, col in enumerate(header) if any(r[i] != "—" for r in rows)]
        t2 = Table(title=f"every arm per round  (percent; K={result['k']}, S={result['s']}; balance: the round's "
                         "configuration on its own training candidates; search balance: B-STaR's estimate)")
        for i in keep:
            t2.add_column(header[i], justify="left" if header[i] in ("arm", "split") else "right")
        for r in rows:
            t2.add_row(*[r[i] for i in keep])
        console.print(t2)


def _cmd_sql(args: argparse.Namespace) -> int:
    from bstar.storage.sql import run_sql

    print(run_sql(args.query, args.root, fmt=args.format))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bstar.reports import build_report

    print(build_report(args.run_ids, args.root, out=args.out))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from bstar.flows.serve import serve_deployments

    serve_deployments(args.file, gpu_slots=args.gpu_slots, limit=args.limit, workdir=args.workdir,
                      stop_timeout=args.stop_timeout)
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    from bstar import code_version

    print(code_version())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bstar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline end to end (resumable)")
    p.add_argument("config")
    p.add_argument("--run-id", help="name the run (default: <name>-<flow run id>)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue RUN_ID: completed stages are skipped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--root", help="lake root (overrides storage.root)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate a run config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("sql", help="read-only SQL over the lake (views: runs, queries, candidates, rewards, scored, ...)")
    p.add_argument("query")
    p.add_argument("--root", default="./lake", help="lake root: a directory or s3://bucket/prefix")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=_cmd_sql)

    p = sub.add_parser("report", help="one self-contained HTML report of one or more runs (overlaid)")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    p.add_argument("--root", default="./lake", help="lake root: a directory or s3://bucket/prefix")
    p.add_argument("--out", help="output HTML file (default: ./bstar-report-<runs>.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("serve", help="serve the deployments to the Prefect server in PREFECT_API_URL")
    p.add_argument("--file", default="deployments/prefect.yaml")
    p.add_argument("--gpu-slots", type=int, default=1, help="flow stages tagged `gpu` that may run at once")
    p.add_argument("--limit", type=int, default=None, help="flow runs executed at once by this server")
    p.add_argument("--workdir", help="working directory of the flow runs, where relative paths resolve "
                   "(default: the folder that holds the deployments file's folder)")
    p.add_argument("--stop-timeout", type=float, default=15.0, metavar="S",
                   help="on Ctrl-C / SIGTERM, wait at most S seconds for the server while stopping")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("prm", help="process reward models: annotate + train + B-STaR (run), or evaluate one (eval)")
    prm_sub = p.add_subparsers(dest="prm_command", required=True)
    q = prm_sub.add_parser("run", help="warm up, annotate steps, train a PRM, run B-STaR with reward answer+prm")
    q.add_argument("config")
    q.add_argument("--run-id")
    q.add_argument("--resume", metavar="RUN_ID", help="continue RUN_ID: completed stages are skipped")
    q = prm_sub.add_parser("eval", help="step accuracy / AUC vs the arith truth and Best-of-K of a PRM")
    q.add_argument("config")
    q.add_argument("--prm", required=True, help="PRM checkpoint (directory or hub id)")
    q.add_argument("--policy", required=True, help="policy checkpoint that samples the responses")
    q.add_argument("--run-id")
    for q in prm_sub.choices.values():
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        q.add_argument("--root", help="lake root (overrides storage.root)")
    p.set_defaults(func=_cmd_prm)

    p = sub.add_parser("compare", help="compare methods from one shared warm-up (the paper's tables, small scale)")
    p.add_argument("config", help="a comparison config: name, seeds, arms, base (see deployments/configs/compare-arith.yaml)")
    p.add_argument("--id", help="name the comparison (default: <name>-<flow run id>); runs are <id>-<arm>")
    p.add_argument("--resume", metavar="ID", help="continue comparison ID: completed stages are skipped")
    p.add_argument("--only", nargs="+", metavar="ARM", help="run only these arms (the table uses every arm found)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (base.x=..., seeds=[0,1])")
    p.add_argument("--root", help="lake root (overrides base.storage.root)")
    p.add_argument("--out", help="HTML report path (default: ./bstar-report-<id>.html)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("version", help="print the code version")
    p.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    from bstar.config import ConfigError

    # Without PREFECT_API_URL, Prefect starts a temporary server and gives it 20 s; a busy 2-core
    # machine (torch threads, a test suite) can need more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # Prefect's analytics would phone home from the temporary server and print an ERROR line on a
    # machine without internet; set PREFECT_SERVER_ANALYTICS_ENABLED=true to send them.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    args = build_parser().parse_args(argv)
    stop_cleanly_on_sigterm(args.command)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError) as err:
        # Deterministic user errors: one clear message, no traceback.
        print(f"bstar {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001
        if not is_disk_full(err):
            raise
        # Completed stages are cached and a half-written part is never read: resuming is safe.
        print(f"bstar {args.command}: error: the disk is full ({err}); free space, then rerun "
              "with --resume RUN_ID to continue from the last completed stage", file=sys.stderr)
        return 3


def stop_cleanly_on_sigterm(command: str) -> None:
    """Turn SIGTERM (`kill PID`, a scheduler, a container stop) into a normal exit with status 143.

    During a flow Prefect catches SIGTERM, marks the run Crashed and re-sends the signal to the
    previous handler; with Python's default one the process died at once and the temporary
    Prefect server it had started (a uvicorn child) was left running forever. Exiting through
    SystemExit runs the atexit hooks that stop that server.
    """
    import signal

    def _stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        print(f"bstar {command}: stopped by SIGTERM; completed stages are kept, rerun the same command "
              "with --resume ID to continue", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread (main() called from a thread): leave it alone
        pass


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised by Python or by a Rust writer (polars, pyarrow) as text only."""
    import errno

    while err is not None:
        if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
