"""A sweep on several workers in its own process tree, for tests/eval/test_sweep_workers.py.

usage: python sweep_workers_child.py launch SWEEP.yaml      (launch_sweep on 2 workers, as --workers 2 does)
       torchrun --nproc_per_node 2 sweep_workers_child.py cli SWEEP.yaml   (each worker is `actprune sweep`)

Each run is a cheap fake, evaluated in the worker (it stands in for the per-run process, which could not
see a fake), that records where it ran: rank, threads, cores, Inductor cache. The environment steers it:
SWEEP_TEST_MARKERS: a folder where the fake touches started-<label> as a run starts;
SWEEP_TEST_SLOW: comma-separated labels whose runs sleep until killed;
SWEEP_TEST_FAIL: comma-separated labels whose runs raise;
SWEEP_TEST_ATTEMPT: a tag copied into every record, to tell a rerun's records from the first run's.
"""

import json
import os
import sys
import time
from pathlib import Path


def fake_evaluate_in_child(model_spec, config, options, dtype):
    import torch

    label = config.label if config else "none"
    (Path(os.environ["SWEEP_TEST_MARKERS"]) / f"started-{label}").touch()
    if label in os.environ.get("SWEEP_TEST_SLOW", "").split(","):
        time.sleep(600)  # the test kills the whole sweep here
    if label in os.environ.get("SWEEP_TEST_FAIL", "").split(","):
        raise RuntimeError(f"{label} went wrong")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"model": model_spec, "config": config.to_dict() if config else None, "options": options.key(),
            "pruning": label, "runtime_s": 1.0, "total_s": 1.0, "replaced_linears": 0,
            "metrics": {"wikitext2": {"ppl": 10.0}}, "rank": int(os.environ["RANK"]),
            "threads": torch.get_num_threads(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "cores": cores,
            "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            "attempt": os.environ.get("SWEEP_TEST_ATTEMPT")}


def fake_runs() -> None:
    from actprune_compiler.eval import sweep as sweep_module

    sweep_module._evaluate_in_child = fake_evaluate_in_child


def fake_worker(sweep_file: str):
    """The entrypoint launch_sweep gives each worker: the real one, with the fake runs."""
    from actprune_compiler.eval.workers import sweep_worker

    fake_runs()
    return sweep_worker(sweep_file)


def main(mode: str, sweep_file: str) -> int:
    if mode == "launch":
        from actprune_compiler.eval.workers import launch_sweep

        results = launch_sweep(sweep_file, 2, entrypoint=fake_worker)
        print("results:", json.dumps([r["pruning"] for r in results]), flush=True)
        return 0
    from actprune_compiler.cli import main as cli

    fake_runs()
    return cli(["sweep", sweep_file])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
