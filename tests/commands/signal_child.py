"""`actprune` in a process of its own that stops at a phase, for tests/commands/test_signals.py.

usage: SIGNAL_TEST_PHASE=PHASE python signal_child.py ARGS...     (ARGS: actprune's)

The command runs as it would, but on reaching PHASE it prints `phase PHASE reached` on stderr and waits
there for the test's signal. Each phase is a function of the library, wrapped here:

    load     models.load_model (eval.runner holds its own name for it)
    compile  eval.runner._runner: the export and the compile (or, with compile off, the program's module)
    run      eval.perplexity.perplexity: scoring
    write    os.replace of a temporary file made by files.atomic_write or atomic_folder: the result, written
             in full, about to be put in place

The wrapping happens at import, so it reaches the process that a sweep spawns for each run too (spawn
imports this file there as __mp_main__).
"""

import os
import sys
import time
from pathlib import Path

import actprune_compiler.eval.perplexity
import actprune_compiler.eval.runner
import actprune_compiler.models.load

PHASE = os.environ.get("SIGNAL_TEST_PHASE", "")


def wait_here(phase: str) -> None:
    print(f"phase {phase} reached", file=sys.stderr, flush=True)
    while True:  # until the signal ends this (the handler raises here, or the process is terminated)
        time.sleep(0.05)


def paused(phase: str, function):
    def wrapper(*args, **kwargs):
        if PHASE == phase:
            wait_here(phase)
        return function(*args, **kwargs)

    return wrapper


load = paused("load", actprune_compiler.models.load.load_model)
actprune_compiler.models.load.load_model = actprune_compiler.eval.runner.load_model = load
actprune_compiler.eval.runner._runner = paused("compile", actprune_compiler.eval.runner._runner)
actprune_compiler.eval.runner.perplexity = paused("run", actprune_compiler.eval.perplexity.perplexity)
_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if PHASE == "write" and Path(src).name.startswith(f".{Path(dst).stem}."):  # files' temporary sibling
        wait_here("write")
    return _replace(src, dst, *args, **kwargs)


os.replace = replace

if __name__ == "__main__":
    from actprune_compiler.cli import main

    sys.exit(main(sys.argv[1:]))
