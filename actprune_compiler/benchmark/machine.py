"""Whether the machine was quiet while something was timed.

On a small machine another job moves a timing by up to 10x, and OpenMP's spin-waiting makes it worse for every
engine. A timing is reported with the load average around it, the CPU time other processes took while it ran,
and the spread of its repeats, and called not quiet when they say so. The load average alone cannot tell: it
counts this process's own threads, and it trails the compile that came before the timing by a minute.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

OTHERS_CORES = 0.25  # other processes busy on more than this many cores, on average, disturbed the timing
SPREAD = 0.15  # repeats further apart than this, relative to their median, were disturbed


def load_average() -> float:
    return os.getloadavg()[0]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def _busy_seconds() -> float:
    """CPU seconds every process has spent since boot (/proc/stat, Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Window:
    """What the machine did between start() and stop(): load averages, and the cores other processes kept busy."""

    load_before: float = 0.0
    load_after: float = 0.0
    others_cores: float = 0.0
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def start(cls) -> Window:
        return cls(load_before=load_average(), _start=(time.perf_counter(), _busy_seconds(), _own_seconds()))

    def stop(self) -> Window:
        wall, busy, own = self._start
        elapsed = max(time.perf_counter() - wall, 1e-9)
        self.others_cores = max(0.0, (_busy_seconds() - busy) - (_own_seconds() - own)) / elapsed
        self.load_after = load_average()
        return self


def spread(samples: list[float]) -> float:
    """(max - min) / median of the repeats."""
    if len(samples) < 2:
        return 0.0
    return (max(samples) - min(samples)) / statistics.median(samples)


def quietness(window: Window, samples: dict[str, list[float]]) -> dict[str, Any]:
    """The load average before and after, other processes' CPU, each variant's spread, and a plain verdict."""
    reasons = []
    if window.others_cores > OTHERS_CORES:
        reasons.append(f"other processes kept {window.others_cores:.2f} of {cores()} cores busy while it ran")
    spreads = {name: spread(values) for name, values in samples.items()}
    if wide := [f"{name} {value:.0%}" for name, value in spreads.items() if value > SPREAD]:
        reasons.append(f"repeats more than {SPREAD:.0%} apart ({', '.join(wide)})")
    return {"load_average_before": round(window.load_before, 2), "load_average_after": round(window.load_after, 2),
            "other_processes_cores": round(window.others_cores, 3), "cores": cores(),
            "spread": {k: round(v, 3) for k, v in spreads.items()}, "quiet": not reasons,
            "not_quiet_because": reasons}


def machine_line(machine: dict[str, Any]) -> str:
    """quietness()'s verdict as the sentence a results file prints above its timings."""
    note = ("quiet machine" if machine["quiet"] else "NOT a quiet machine: " + "; ".join(machine["not_quiet_because"]))
    return (f"Load average {machine['load_average_before']} before, {machine['load_average_after']} after; other "
            f"processes busy on {machine['other_processes_cores']} cores meanwhile ({note}).")
