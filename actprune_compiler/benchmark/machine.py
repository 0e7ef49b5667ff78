"""Whether the machine was quiet while something was timed.

On a small machine another job moves a timing by up to 10x, and OpenMP's spin-waiting makes it worse for every
engine. A timing is reported with the load average around it and the spread of its repeats, and called not
quiet when either says so.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

# above this 1-minute load average per core (the measurement's own threads aside) the machine was busy
LOAD_PER_CORE = 0.5
SPREAD = 0.15  # repeats further apart than this, relative to their median, were disturbed


def load_average() -> float:
    return os.getloadavg()[0]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def spread(samples: list[float]) -> float:
    """(max - min) / median of the repeats."""
    if len(samples) < 2:
        return 0.0
    return (max(samples) - min(samples)) / statistics.median(samples)


def quietness(load_before: float, load_after: float, samples: dict[str, list[float]], threads: int) -> dict[str, Any]:
    """The load average before and after, each variant's spread, and a plain verdict with its reasons.

    The measurement's own threads raise the load while it runs, so the load after it is judged net of them."""
    reasons = []
    busy = max(load_before, load_after - threads) / cores()
    if busy > LOAD_PER_CORE:
        reasons.append(f"load average {max(load_before, load_after):.2f} on {cores()} cores "
                       f"(over {LOAD_PER_CORE} per core besides the {threads} timed threads)")
    spreads = {name: spread(values) for name, values in samples.items()}
    wide = [f"{name} {value:.0%}" for name, value in spreads.items() if value > SPREAD]
    if wide:
        reasons.append(f"repeats more than {SPREAD:.0%} apart ({', '.join(wide)})")
    return {"load_average_before": round(load_before, 2), "load_average_after": round(load_after, 2),
            "cores": cores(), "spread": {k: round(v, 3) for k, v in spreads.items()}, "quiet": not reasons,
            "not_quiet_because": reasons}
