"""The `actprune` command. Each subcommand lives in commands/<name>.py with add_parser() and run().

Every failure prints one line, `actprune: error: ...`, and exits non-zero (2 for bad input, 1 for a
failure while working); --debug shows the traceback instead. Ctrl-C exits with 130, SIGTERM with 143
(commands/signals.py). run_command is that policy; actprune-lm-eval runs under it too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from actprune_compiler.commands import signals

SUBCOMMANDS = ("compile", "inspect", "eval", "sweep", "generate", "bench", "sensitivity")
INTERRUPTED = 130
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)  # the user's input: exit 2
LONGEST = 600  # characters of a failure's message that fit the one line; --debug shows the rest


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


def one_line(error: BaseException) -> str:
    """The message as one line. Ours are one sentence; a library's may be a page (a Dynamo dump, a list of
    every model type transformers knows): its first line says what went wrong, --debug shows the rest."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(lines) > 1 and isinstance(error, USER_ERRORS) and len(" ".join(lines)) <= LONGEST:
        text = " ".join(lines)  # a sentence that was wrapped
    text = " ".join(text.split())
    if len(text) > LONGEST:
        text = text[:LONGEST].rsplit(" ", 1)[0] + " ..."
    return text if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {text}"  # not the user's: name it


def run_command(prog: str, body: Callable[[], int | None], debug: Callable[[], bool] = lambda: False) -> int:
    """Run a command's body under the error policy: its status; for an exception one line on stderr and
    2 (bad input) or 1 (a failure while working), the traceback instead when debug() says so; for SIGINT or
    SIGTERM, at any point, one line and 130 or 143. argparse's own exit (SystemExit) passes through."""
    from actprune_compiler.files import COMMIT_CHECKS

    if signals.check not in COMMIT_CHECKS:
        COMMIT_CHECKS.append(signals.check)
    with signals.handled(prog):
        try:
            status = body() or 0
        except KeyboardInterrupt as error:
            print(f"\n{signals.interrupted_line(error)}", file=sys.stderr)
            return signals.exit_code(error)
        except USER_ERRORS as error:
            if debug():
                raise
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            status = 2
        except Exception as error:  # noqa: BLE001  (anything else: one line, the traceback with --debug)
            if debug():
                raise
            print(f"{prog}: error: {one_line(error)} (run with --debug for the traceback)", file=sys.stderr)
            status = 1
        if signals.received():  # a library caught the interrupt and carried on: it is still an interrupted run
            print(f"\n{signals.interrupted_line()}", file=sys.stderr)
            return signals.exit_code()
        return status


def main(argv: list[str] | None = None) -> int:
    parsed: list[argparse.Namespace] = []

    def body() -> int:
        parsed.append(build_parser().parse_args(argv))
        return parsed[0].run(parsed[0])

    return run_command("actprune", body, debug=lambda: bool(parsed) and parsed[0].debug)


if __name__ == "__main__":
    sys.exit(main())
