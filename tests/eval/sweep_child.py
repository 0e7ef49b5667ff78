"""A sweep in its own process, for the test that SIGKILLs one mid-run (tests/eval/test_sweep.py).

usage: python sweep_child.py SWEEP.yaml MARKERS SLOW_LABEL

evaluate() is replaced by a cheap fake that touches MARKERS/started-<n> when the n-th run of this process
starts, and sleeps (until killed) in the run whose config label is SLOW_LABEL. Runs are in-process
(isolate=False), so the kill leaves no orphaned worker behind.
"""

import sys
import time
from itertools import count
from pathlib import Path

from actprune_compiler.eval import sweep as sweep_module
from actprune_compiler.eval.sweep_file import load_sweep


def main(sweep_file: str, markers: str, slow: str) -> None:
    started = count(1)

    def evaluate(model_spec, config, options, *, dtype, loaded=None):
        label = config.label if config else "none"
        (Path(markers) / f"started-{next(started)}").touch()
        if label == slow:
            time.sleep(600)  # the test kills this process here
        return {"model": model_spec, "config": config.to_dict() if config else None, "options": options.key(),
                "pruning": label, "runtime_s": 1.0, "total_s": 1.0, "replaced_linears": 0,
                "metrics": {"wikitext2": {"ppl": 10.0}}}

    sweep_module.evaluate = evaluate
    sweep_module.load_model = lambda spec, dtype: (None, None)
    sweep_module.run_sweep(load_sweep(sweep_file), progress=False, isolate=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
