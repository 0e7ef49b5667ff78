"""A sweep over several worker processes: `actprune sweep FILE --workers K`, or K copies started by torchrun.

No scheduler of our own: torchrun's elastic agent starts the K workers (launch_sweep does what
`torchrun --standalone --nproc_per_node K` does) and stops them all when one dies. Rank 0 plans the sweep
(eval/sweep.plan_sweep) and broadcasts the plan over gloo, so that every worker splits the same pending
list even when they start together; worker r then runs the pending runs r, r + K, r + 2K, ... and appends
each record under the results file's lock. A killed sweep leaves only whole records (or a torn tail that
is skipped), so a rerun plans exactly the runs that did not finish.

Each worker gets its own share of the machine: on CUDA, GPU local_rank % device_count; always
max(1, cores // K) threads on its own cores; and its own Inductor cache folder, so that K workers do not
wait on one cache lock.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from actprune_compiler.eval.distributed import env_int, rank_cache_folder
from actprune_compiler.eval.sweep import plan_sweep, run_runs, sweep_results
from actprune_compiler.eval.sweep_file import Sweep, load_sweep
from actprune_compiler.reporting.signals import Interrupted, handled

# A worker that has finished its share waits at the last barrier for the others, whose runs may take
# hours; a crashed worker never leaves it waiting, as the agent then stops every worker.
BARRIER_TIMEOUT = timedelta(days=30)
# What a worker and the process of its current run hold before any model is loaded (torch, transformers,
# the evaluation code): about 0.45 GB each, measured (8 workers took 3.5 GB).
WORKER_BYTES = 1 << 30


def free_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_limit() -> tuple[int, str]:
    """How many sweep workers this machine holds, and why no more: each needs a core of its own (workers
    sharing cores run no faster, and each holds its own memory) and WORKER_BYTES of free memory."""
    cores = usable_cores()
    limit, why = cores, f"this process may use {cores} core(s) and each worker needs one of its own"
    memory = free_memory()
    if memory is not None and memory // WORKER_BYTES < limit:
        limit = max(1, memory // WORKER_BYTES)
        why = (f"{memory / 2**30:.1f} GB of memory is free and each worker, with the process of its run, holds "
               f"about {WORKER_BYTES / 2**30:.0f} GB before any model is loaded")
    return limit, why


@dataclass(frozen=True)
class WorkerInfo:
    rank: int  # 0 .. world_size - 1: which pending runs are this worker's
    world_size: int
    local_rank: int  # on this machine: which GPU and cores
    local_world_size: int


def worker_info() -> WorkerInfo | None:
    """This process's place among the workers torchrun (or launch_sweep) started, from the environment
    torchrun sets; None outside torchrun or for a single worker, which runs the sweep the plain way."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if env_int("WORLD_SIZE", 1) <= 1:
        return None
    if missing := [name for name in names if name not in os.environ]:
        raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start sweep workers with "
                         f"torchrun or actprune sweep --workers, which set all of {', '.join(names)}")
    return WorkerInfo(*(env_int(name, 0) for name in names))


@dataclass(frozen=True)
class Binding:
    cores: list[int]
    threads: int
    device: str | None  # "cuda:i" on a CUDA machine (i among the GPUs this process was given)
    inductor_cache: Path

    def describe(self, rank: int) -> str:
        return (f"worker {rank}: {self.threads} thread(s) on core(s) {','.join(map(str, self.cores))}"
                f"{f', {self.device}' if self.device else ''}, Inductor cache {self.inductor_cache}")


def bind_worker(info: WorkerInfo) -> Binding:
    """Give this worker its share of the machine. The environment variables also reach the process that
    each run is evaluated in (sweep._evaluate_in_child spawns one per run), and so does the core affinity,
    which children inherit; torch.set_num_threads alone would not."""
    import torch

    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    threads = max(1, len(available) // info.local_world_size)
    start = info.local_rank * threads % len(available)  # more workers than cores: they share cores in turn
    cores = available[start:start + threads]
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # torchrun sets 1 for several workers; a run's process reads it
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)

    cache = Path(rank_cache_folder(info.rank))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)

    device = None
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        index = info.local_rank % count
        # A run's own process sees only this GPU, as cuda:0, whatever device name the evaluation uses. This
        # process leaves CUDA alone: a context here would hold GPU memory for the whole sweep.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [i.strip() for i in visible.split(",")][:count] if visible else [str(i) for i in range(count)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
        device = f"cuda:{index}"
    return Binding(cores, threads, device, cache)


def run_sweep_worker(sweep: Sweep, info: WorkerInfo, *, progress: bool = True) -> list[dict[str, Any]]:
    """This worker's share of the sweep; after every worker has finished, the latest record of each of the
    sweep's runs (every worker returns the same list). Each run is evaluated in a process of its own
    (sweep._evaluate_in_child), never in this one: this one is in the workers' process group, which an
    evaluation here would take for a data-parallel launch of its own (eval/distributed.py)."""
    import torch.distributed as dist

    print(bind_worker(info).describe(info.rank), flush=True)
    # gloo, on the CPU, whatever the runs use: the collectives carry one small object and a barrier
    dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size, timeout=BARRIER_TIMEOUT)
    try:
        box = [plan_sweep(sweep) if info.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
        if info.rank == 0:
            print(f"{plan.summary(sweep.results)}; {info.world_size} workers", flush=True)
        run_runs(sweep, plan, plan.todo[info.rank::info.world_size], progress=progress, worker=info.rank)
        dist.barrier()  # every record is in the file before anyone reads the results
        return sweep_results(sweep, plan)
    finally:
        dist.destroy_process_group()


def sweep_worker(sweep_file: str) -> list[dict[str, Any]] | None:
    """What each process launch_sweep starts runs; rank 0 returns the results to the launcher."""
    info = worker_info()
    if info is None:
        raise RuntimeError("sweep_worker runs only in a process that torchrun's agent started")
    # Ctrl-C reaches every process of the terminal's group, and the agent passes on the signal it got: either
    # way the worker stops on the way out (its run's process, its claim), quietly, as torch's worker wrapper
    # takes a KeyboardInterrupt for a stop and not a failure.
    with handled("actprune sweep worker"):
        results = run_sweep_worker(load_sweep(sweep_file), info)
    return results if info.rank == 0 else None


def launch_sweep(sweep_file: str | Path, workers: int, *,
                 entrypoint: Callable[[str], list[dict[str, Any]] | None] = sweep_worker) -> list[dict[str, Any]]:
    """Run the sweep on `workers` processes started by torchrun's elastic agent on this machine and return
    the latest record of each of its runs. entrypoint: the function each worker runs (tests give one that
    fakes the evaluation). Ctrl-C or SIGTERM raises KeyboardInterrupt (reporting.signals.Interrupted, which
    carries the signal) once the agent has stopped the workers; each run's own process dies with its worker
    (eval/isolated.py)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("--workers above 1 needs torch.distributed, which this torch build lacks; "
                         "use --workers 1")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch


    # what `torchrun --standalone` does: a c10d store on a free port of this machine; no restarts, as a
    # restarted worker would plan again from a file the others are still writing
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", local_addr="localhost",
                          max_restarts=0)
    # the agent puts its own handlers in place of the command's (they raise SignalException); ours come back after
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        returned = elastic_launch(config, entrypoint)(str(sweep_file))
    except SignalException as error:
        if error.sigval in (signal.SIGINT, signal.SIGTERM):
            raise Interrupted(error.sigval) from None
        raise
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        message = failure.message["message"] if isinstance(failure.message, dict) else failure.message
        raise RuntimeError(f"sweep worker {rank} stopped ({' '.join(str(message).split())}; exit status "
                           f"{failure.exitcode}), and the others with it; finished runs are saved, run the same "
                           "command again to resume") from None
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return returned[0]

