"""Ctrl-C (SIGINT) and SIGTERM in actprune's commands: one line, exit 130 or 143, nothing half-written.

Both signals are handled alike, from the first instant of a command's process:

- while the package imports (seconds of torch and transformers) nothing has been started or written, so
  the handler prints its line and exits at once;
- once a command runs (commands/errors.run_command), the handler raises Interrupted, a KeyboardInterrupt, so that
  `finally` blocks stop child processes and remove temporary files on the way out, and the command
  prints its line and exits with 128 + the signal's number.

A signal is remembered until the command ends: a library that catches the exception and carries on cannot
make the interrupted command write its result (files.atomic_write asks `check` before it puts a file in
place) or exit 0 (run_command asks `received` before it returns).

Only standard-library imports here: the package's __init__ imports this module before anything heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
COMMANDS = ("actprune", "actprune-lm-eval")  # the console scripts
COMMAND_MODULES = ("actprune_compiler.cli", "actprune_compiler.commands.lm_eval_cli")  # python -m ...
STOPPED = "finished results are saved, nothing half-written was left"


class Interrupted(KeyboardInterrupt):
    """The command was stopped by SIGINT or SIGTERM; exit_code is the shell's 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    prog = COMMANDS[0]  # how the line names the command
    running = False  # a command is running: raise Interrupted (else: exit at once, there is nothing to undo)
    received: int | None = None  # the first signal of the running command


_STATE = _State()


def exit_code(error: BaseException | None = None) -> int:
    """128 + the signal that stopped the command; 130 (Ctrl-C) for a KeyboardInterrupt raised otherwise."""
    if _STATE.received is not None:
        return 128 + _STATE.received
    return error.exit_code if isinstance(error, Interrupted) else 128 + signal.SIGINT


def received() -> bool:
    return _STATE.received is not None


def check() -> None:
    """Raise Interrupted if the running command has received a signal (a library may have swallowed it)."""
    if _STATE.received is not None:
        raise Interrupted(_STATE.received)


def interrupted_line(error: BaseException | None = None) -> str:
    return f"{_STATE.prog}: interrupted ({signal.Signals(exit_code(error) - 128).name}); {STOPPED}"


def _handle(signum: int, frame) -> None:
    if not _STATE.running:
        print(f"\n{_STATE.prog}: interrupted ({signal.Signals(signum).name}) while starting; nothing was done",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)
    if _STATE.received is None:
        _STATE.received = signum
        raise Interrupted(signum)
    # A second signal while the first one's clean-up runs (stopping children, removing temporary files):
    # the clean-up is bounded, and interrupting it could leave what it is there to remove.


def _install() -> dict[int, object] | None:
    """Our handler for both signals; the previous handlers, or None off the main thread (where Python
    cannot set handlers: a command called from a thread keeps the caller's)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return previous


def command_name(argv: list[str] | None = None) -> str | None:
    """The actprune command this interpreter was started as, or None: `actprune ...` (a console script),
    `python -m actprune_compiler.cli ...`, or a torchrun worker started either way. argv: the interpreter's
    own command line (sys.orig_argv), where `-m module` still shows before runpy replaces sys.argv."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if argv is None else argv)
    words = iter(argv[1:])
    for word in words:
        if word == "-m":
            module = next(words, "")
            return COMMANDS[COMMAND_MODULES.index(module)] if module in COMMAND_MODULES else None
        if word in ("-W", "-X", "--check-hash-based-pycs"):  # interpreter options that take a value
            next(words, None)
        elif word == "-c" or not word.startswith("-"):
            return Path(word).name if word != "-c" and Path(word).name in COMMANDS else None
    return None


def handle_signals_if_command() -> None:
    """Called first thing by the package's __init__: a command's process handles both signals from here on.
    A program that imports actprune as a library keeps its own handlers."""
    if name := command_name():
        _STATE.prog = name
        _install()


@contextmanager
def handled(prog: str) -> Iterator[None]:
    """While the command `prog` runs: both signals raise Interrupted once, and are remembered (see `received`).
    The previous handlers come back afterwards (a test that calls the command in-process keeps pytest's)."""
    previous = _install()
    _STATE.prog, _STATE.running, _STATE.received = prog, True, None
    try:
        yield
    finally:
        _STATE.running = False
        for signum, handler in (previous or {}).items():
            signal.signal(signum, handler)
