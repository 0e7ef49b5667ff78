"""How a command ends: a failure is one line and an exit code (2 for bad input, 1 for a failure while
working; the traceback instead on request), SIGINT and SIGTERM are one line and 130 or 143 at any point
(signals.py), and what the library logs (logger "actprune") is printed as `actprune: ...` lines on stderr.
`actprune` and `actprune-lm-eval` both run under run_command."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

from tqdm import tqdm

from actprune_compiler.reporting import signals
from actprune_compiler.reporting.files import COMMIT_CHECKS

INTERRUPTED = 130
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)  # the user's input: exit 2
LONGEST = 600  # characters of a failure's message that fit the one line; --debug shows the rest


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
    if signals.check not in COMMIT_CHECKS:
        COMMIT_CHECKS.append(signals.check)
    with signals.handled(prog), library_messages():
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
