"""The `htl` command, a program per module: local (run, synth), service (serve, worker), admin (db,
keys) and remote (the client's commands). Heavy modules (torch, ml) are imported inside the
commands that need them."""

from __future__ import annotations

import argparse

from app.cli import admin, local, remote, service
from app.cli.common import load_spec, version_string

__all__ = ["build_parser", "load_spec", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htl", description="htl-miner: find hard-to-learn images by pruning")
    parser.add_argument("--version", action="version", version=f"htl-miner {version_string()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for program in (remote, local, service, admin):
        program.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
