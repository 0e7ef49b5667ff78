"""The `actprune` command. Each subcommand lives in commands/<name>.py with add_parser() and run()."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("compile", "inspect", "eval", "sweep", "generate", "bench", "sensitivity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actprune", description="N:M activation sparsity for LLMs, compiled.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"actprune_compiler.commands.{name}")
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # user errors: one sentence, no traceback
        print(f"actprune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
