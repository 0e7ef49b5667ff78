"""The `actprune` command. Each subcommand lives in commands/<name>.py with add_parser() and run().

Every failure prints one line, `actprune: error: ...`, and exits non-zero (2 for bad input, 1 for a
failure while working); --debug shows the traceback instead. Ctrl-C exits with 130. What the library logs
(logger "actprune": warnings and notes) is printed on stderr as `actprune: ...` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator

from tqdm import tqdm

SUBCOMMANDS = ("compile", "inspect", "eval", "sweep", "generate", "bench", "sensitivity")
INTERRUPTED = 130


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


class LibraryLines(logging.Handler):
    """A library message as an `actprune: <message>` line on stderr (the stream of the moment), written past
    any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(f"actprune: {self.format(record)}", file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's rule: a failing handler reports itself, it never raises)
            self.handleError(record)


@contextlib.contextmanager
def library_messages() -> Iterator[None]:
    """While a command runs, the library's info and warnings are printed; the logger is left as it was."""
    logger = logging.getLogger("actprune")
    handler, level, propagate = LibraryLines(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, even when something configured the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, (ValueError, FileNotFoundError, FileExistsError)):  # not a user error: name it
        text = f"{type(error).__name__}: {text}"
    return " ".join(text.split())  # one line, whatever the message looked like


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with library_messages():
            return args.run(args)
    except KeyboardInterrupt:
        print("\nactprune: interrupted; finished results are saved, nothing half-written was left", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # the user's input: one sentence
        if args.debug:
            raise
        print(f"actprune: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001  (anything else: one line, the traceback with --debug)
        if args.debug:
            raise
        print(f"actprune: error: {_one_line(error)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
