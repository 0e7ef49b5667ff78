"""What every result records about how it was made: stage timings and software versions."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

# actprune's own version (pyproject.toml's); the package exports it as actprune_compiler.__version__.
VERSION = "0.1.0"


@dataclass
class Timer:
    """Wall seconds per named stage: `with timer("export_s"): ...`."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


# Distributions whose versions change results but that actprune does not import to run: read from their
# installed metadata, so recording them costs no import (lm-eval's takes seconds).
RECORDED_DISTRIBUTIONS = {"lm_eval": "lm-eval", "datasets": "datasets"}
NOT_INSTALLED = "not installed"


def installed_version(distribution: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def seconds_since_process_start() -> float:
    """Wall seconds since this process started, the interpreter's start and every import included: the start
    time Linux records in /proc/self/stat (clock ticks since boot), against the clock it counts from."""
    try:
        stat = Path("/proc/self/stat").read_text()
    except OSError:
        raise RuntimeError("this system does not say when a process started (no /proc/self/stat, which Linux "
                           "has), so the time from the process start cannot be measured here") from None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the fields after the name start at 3
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def format_times(seconds: dict[str, float]) -> str:
    """'times: load 1.2 s, export 10.3 s, ...' from stage timings named '<stage>_s', in their order."""
    return "times: " + ", ".join(f"{name.removesuffix('_s')} {value:.1f} s" for name, value in seconds.items())


def versions() -> dict[str, str]:
    """actprune, torch, transformers, lm_eval and datasets versions, python, and the machine."""
    import transformers  # here, not at the top: 0.3 s of import beyond torch's, for a result being written

    return {"actprune": VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
            **{key: installed_version(dist) for key, dist in RECORDED_DISTRIBUTIONS.items()},
            "python": platform.python_version(), "machine": f"{platform.machine()} {platform.system()}, "
            f"{torch.get_num_threads()} threads"}
