"""One function call in a fresh process that never outlives its caller.

A sweep evaluates each run in a process of its own (eval/sweep.py: the memory a compiled program keeps
goes with it). That process must end with the sweep, however the sweep ends:

- Ctrl-C reaches every process of the terminal's group. The child ignores it (no traceback of its own);
  the caller is interrupted, stops the child on its way out (`finally`), waits for it and reaps it.
- SIGTERM reaches the caller alone: the same `finally` stops the child.
- SIGKILL of the caller runs no `finally`: the kernel stops the child (PR_SET_PDEATHSIG, on Linux).

The child starts with both signals blocked, so that neither arrives while it imports, before it has set
its own handling; the caller's SIGTERM then waits until the imports are done (GRACE_S covers them). On
SIGTERM the child exits as a Python program does, not at once: the semaphores it made (tqdm makes one) are
released, and multiprocessing's resource tracker has none left over to warn about.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = {signal.SIGINT, signal.SIGTERM}
GRACE_S = 30  # from SIGTERM to SIGKILL: a child still importing torch takes seconds to act on SIGTERM
PR_SET_PDEATHSIG = 1


class _Stopped(BaseException):
    """Raised in the child by the caller's SIGTERM: the child exits quietly."""


def _stopped(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise _Stopped


class RemoteTraceback(Exception):
    """The child's traceback, as the cause of the exception re-raised here (shown under it)."""

    def __str__(self) -> str:
        return self.args[0]


def call_in_child(fn: Callable[..., Any], *args: Any, initializer: Callable[[], None] | None = None,
                  **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in a fresh (spawned) process: its return value, or its exception raised here with
    the child's traceback as the cause. initializer runs first in the child. fn, its arguments and its
    result must pickle."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(send, os.getpid(), initializer, fn, args, kwargs),
                            name=f"actprune-{getattr(fn, '__name__', 'call')}")
    try:
        with _blocked(SIGNALS):
            child.start()
        send.close()  # the child holds the only writer now: its death ends recv() with EOFError
        try:
            status, value, text = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"the process running {getattr(fn, '__name__', 'the call')} ended without a "
                               f"result (exit status {child.exitcode})") from None
    finally:
        stop(child)
        receive.close()
    if status == "ok":
        return value
    error = value if isinstance(value, BaseException) else RuntimeError(text.strip().splitlines()[-1])
    raise error from RemoteTraceback(text)


def stop(child: multiprocessing.process.BaseProcess) -> None:
    """Terminate the child if it runs, wait for it (SIGKILL after GRACE_S) and reap it."""
    if child.pid is None:  # never started
        return
    if child.is_alive():
        child.terminate()
        child.join(GRACE_S)
        if child.is_alive():
            child.kill()
    child.join()
    child.close()


@contextmanager
def _blocked(signums: set[int]) -> Iterator[None]:
    """Block the signals in this thread meanwhile: a process started here inherits the mask."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere the caller's `finally`
    is all there is)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _child_main(send, parent: int, initializer: Callable[[], None] | None, fn: Callable[..., Any],
                args: tuple, kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides what Ctrl-C stops
    signal.signal(signal.SIGTERM, _stopped)  # the caller's stop()
    _die_with(parent)
    try:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # a SIGTERM sent meanwhile arrives here
        try:
            if initializer is not None:
                initializer()
            outcome = ("ok", fn(*args, **kwargs), "")
        except _Stopped:
            raise
        except BaseException as error:  # noqa: BLE001  (every failure goes back to the caller)
            outcome = ("error", error, "".join(traceback.format_exception(error)))
        try:
            send.send(outcome)
        except Exception:  # noqa: BLE001  (an exception or result that does not pickle: send its text)
            send.send(("error", None, outcome[2] or f"RuntimeError: the result of {fn.__name__} does not pickle"))
        send.close()
    except _Stopped:
        sys.exit(128 + signal.SIGTERM)  # as a Python program exits: its finalizers release what it holds
