"""`actprune sweep FILE` in a process of its own with fake runs, for the test that starts two on one file
(tests/eval/test_sweep_shared.py).

usage: python sweep_shared_child.py SWEEP.yaml MARKERS GO

Each run is a cheap fake, evaluated in this process (it stands in for the per-run process, which could not
see a fake). It touches MARKERS/started-<label>-<pid> as it starts, then waits until the file GO exists,
so that the test can have both processes hold a run at once; its record names the process that ran it.
"""

import os
import sys
import time
from pathlib import Path


def main(sweep_file: str, markers: str, go: str) -> int:
    from actprune_compiler.cli import main as cli
    from actprune_compiler.eval import sweep as sweep_module

    def fake_evaluate_in_child(model_spec, config, options, dtype):
        label = config.label if config else "none"
        (Path(markers) / f"started-{label}-{os.getpid()}").touch()
        while not Path(go).exists():
            time.sleep(0.05)
        return {"model": model_spec, "config": config.to_dict() if config else None, "options": options.key(),
                "pruning": label, "runtime_s": 1.0, "total_s": 1.0, "replaced_linears": 0,
                "metrics": {"wikitext2": {"ppl": 10.0}}, "pid": os.getpid()}

    sweep_module._evaluate_in_child = fake_evaluate_in_child
    return cli(["sweep", sweep_file])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
