"""The `actprune` command. Each subcommand lives in commands/<name>.py with add_parser() and run().

Every failure prints one line, `actprune: error: ...`, and exits non-zero (2 for bad input, 1 for a
failure while working); --debug shows the traceback instead. Ctrl-C exits with 130, SIGTERM with 143
(reporting/signals.py). commands/errors.py is that policy; actprune-lm-eval runs under it too. What the library
logs (logger "actprune": warnings and notes) is printed on stderr as `actprune: ...` lines.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from actprune_compiler.commands.errors import INTERRUPTED, run_command

SUBCOMMANDS = ("compile", "inspect", "eval", "sweep", "generate", "bench", "compare", "sensitivity")
__all__ = ["INTERRUPTED", "build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming what was wrong (no usage dump)."""

    def error(self, message: str):
        print(f"actprune: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="actprune", description="N:M activation sparsity for LLMs, compiled.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"actprune_compiler.commands.{name}")
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parsed: list[argparse.Namespace] = []

    def body() -> int:
        parsed.append(build_parser().parse_args(argv))
        return parsed[0].run(parsed[0])

    return run_command("actprune", body, debug=lambda: bool(parsed) and parsed[0].debug)


if __name__ == "__main__":
    sys.exit(main())
