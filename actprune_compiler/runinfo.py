"""What every result records about how it was made: stage timings and software versions."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


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


def versions() -> dict[str, str]:
    import transformers

    from actprune_compiler import __version__

    return {"actprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()} {platform.system()}, "
            f"{torch.get_num_threads()} threads"}
