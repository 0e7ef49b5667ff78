"""Data-parallel scoring under torchrun: which process this is, its device, threads and Inductor cache,
the process group's lifetime, and the one collective perplexity needs (a sum).

Everything here reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE) and is a
no-op in a plain single process, so library code can call it unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from actprune_compiler.models.devices import resolve_device


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    text = env.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number; "
                         "torchrun sets it to one, so set it only through torchrun") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={value} is negative; it must be 0 or more")
    return value


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """How many processes score together: the process group's size, else what torchrun launched, else 1."""
    return dist.get_world_size() if _grouped() else max(1, env_int("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if _grouped() else env_int("RANK", 0)


def local_rank() -> int:
    """This process's index on its own machine (torchrun's LOCAL_RANK): it picks the GPU."""
    return env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0 prints and writes results; the others only compute."""
    return rank() == 0


def backend_for(device: str) -> str:
    """nccl reduces tensors on the GPU, gloo on the CPU: the backend follows the device the model runs on."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(requested: str | None) -> str:
    """The device this process scores on. requested is --device as parsed (None, 'cpu', 'cuda', 'cuda:N').

    One process: whatever devices.resolve_device says. Under torchrun on CUDA, each rank takes its own
    GPU, cuda:LOCAL_RANK; a single named GPU would put every rank on the same one, so it is refused."""
    device = resolve_device(requested)  # checks the name, and that CUDA exists when asked for
    if device.type != "cuda" or world() == 1:
        return str(device)
    if device.index is not None:
        raise ValueError(f"--device {requested} names one GPU, but torchrun started {world()} processes; "
                         "pass --device cuda and each process uses cuda:LOCAL_RANK")
    index, count = local_rank(), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"torchrun started local rank {index}, but this machine has {count} GPU(s); "
                         f"use --nproc_per_node {count} or less")
    return f"cuda:{index}"


def rank_settings(env: Mapping[str, str], cores: int) -> tuple[str | None, int | None]:
    """(Inductor cache folder, torch threads) for this rank; (None, None) in a single process.

    Ranks compiling into one Inductor cache race on the same files, so each gets rank<R> under the
    user's TORCHINDUCTOR_CACHE_DIR or Inductor's default. Threads: torchrun sets OMP_NUM_THREADS=1
    when the user set none, and a rank cannot tell that 1 from a user's, so 1 counts as torchrun's
    and is replaced by an even share of the cores; any other value is the user's and is kept (None)."""
    processes = max(1, env_int("WORLD_SIZE", 1, env))
    if processes == 1:
        return None, None
    cache = rank_cache_folder(env_int("RANK", 0, env), env)
    # The cores are shared by the ranks on this machine, not by every rank of a multi-machine run.
    here = max(1, env_int("LOCAL_WORLD_SIZE", processes, env))
    threads = None if env.get("OMP_NUM_THREADS", "1") != "1" else max(1, cores // here)
    return cache, threads


def rank_cache_folder(rank: int, env: Mapping[str, str] = os.environ) -> str:
    """rank<R> under the user's TORCHINDUCTOR_CACHE_DIR or Inductor's default (sweep workers use it too)."""
    return str(Path(env.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()) / f"rank{rank}")


def available_cores() -> int:
    """The cores this process may run on (taskset/cgroup affinity), which os.cpu_count() ignores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # platforms without affinity (macOS): every core counts


def prepare_rank() -> None:
    """Apply rank_settings before anything compiles (Inductor reads the folder when it first caches)."""
    cache, threads = rank_settings(os.environ, available_cores())
    if cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Under torchrun, join the other ranks for the block (rendezvous from torchrun's MASTER_ADDR/PORT)
    and leave the group afterwards, even on an error; in a single process, nothing."""
    if world() == 1 or _grouped():  # a caller that set up the group itself keeps ownership of it
        yield
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))  # nccl reduces on the current GPU: this rank's own
    dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _require_group() -> None:
    """A torchrun launch whose process group is not set up could never sum the ranks' shares."""
    if world() > 1 and not _grouped():
        raise RuntimeError(f"torchrun started {world()} processes but torch.distributed is not initialised; "
                           "wrap the scoring in actprune_compiler.eval.distributed.process_group()")


def shard(count: int) -> slice:
    """This rank's items out of `count`: item i goes to rank i % world (every rank gets a deterministic,
    possibly empty, share). Refuses a torchrun launch whose process group is not set up, where the
    shares could never be summed."""
    _require_group()
    return slice(rank(), count, world())


def all_reduce_sums(*values: float) -> tuple[float, ...]:
    """Sum each value over all ranks, in float64 (exact for token counts, rounding-level for NLL sums).

    Every rank must call this, with or without work of its own, or the others wait forever."""
    _require_group()
    if not _grouped():  # one process: its own values are the sums
        return tuple(float(v) for v in values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    sums = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return tuple(sums.tolist())
