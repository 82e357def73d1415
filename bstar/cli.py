"""The `bstar` command line.

    bstar check CONFIG [--set key=value ...]      validate a run config and print it resolved
    bstar sql "SELECT ..." [--root R] [--format table|csv|json]
                                                  read-only SQL over the candidate lake
    bstar version

Heavy imports (torch, Prefect, DuckDB) happen inside the subcommand that needs them, so
`bstar --help` and config checks stay fast.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_check(args: argparse.Namespace) -> int:
    from bstar.config import load_config

    cfg = load_config(args.config, overrides=args.set)
    print(cfg.model_dump_json(indent=2, exclude={"storage": {"key", "secret"}}))
    print(f"\nok: method={cfg.method} mode={cfg.training_mode} n*={cfg.selection.n_star}", file=sys.stderr)
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from bstar.storage.sql import run_sql

    print(run_sql(args.query, args.root, fmt=args.format))
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    from bstar import code_version

    print(code_version())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bstar", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a run config")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("sql", help="read-only SQL over the lake (views: runs, queries, candidates, rewards, scored, ...)")
    p.add_argument("query")
    p.add_argument("--root", default="./lake", help="lake root: a directory or s3://bucket/prefix")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=_cmd_sql)

    p = sub.add_parser("version", help="print the code version")
    p.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bstar.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError) as err:
        # Deterministic user errors: one clear message, no traceback.
        print(f"bstar {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
