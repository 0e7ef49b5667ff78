"""Cold and warm starts: how long `actprune generate` takes from nothing to its first generated token.

Each measurement is a fresh process running the user's command (`actprune generate ... --json-out FILE`,
as `python -m actprune_compiler.cli`), so nothing compiled in this one can help it; what carries over
between two of them is only what is on disk: Inductor's FX graph and AOT autograd caches
(TORCHINDUCTOR_CACHE_DIR) and actprune's dequantised model copy. A cold start gets an empty cache folder,
a warm start the folder the cold one filled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "The quick brown fox jumps over the lazy dog because"


def measure(model_spec: str, pattern: str | None, cache_dir: str | Path, *, dtype: str = "default",
            device: str | None = None, new_tokens: int = 8, regional: bool = False) -> dict[str, Any]:
    """One start of `actprune generate` (regional: `--hf-generate --regional`, Hugging Face's generate with each
    kind of layer compiled once) in a fresh process with the given Inductor cache folder: what it
    wrote with --json-out (stage times, first token from the process start, decode tokens/s, cache hits and
    misses), and process_s, the process's wall time as this one saw it."""
    with tempfile.TemporaryDirectory(prefix="actprune-start-") as folder:
        out = Path(folder) / "start.json"
        command = [sys.executable, "-m", "actprune_compiler.cli", "generate", "--model", model_spec,
                   "--pattern", pattern or "none", "--dtype", dtype, "--max-new-tokens", str(new_tokens),
                   "--prompt", PROMPT, "--json-out", str(out)]
        command += ["--device", device] if device else []
        command += ["--hf-generate", "--regional"] if regional else []
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        process_s = round(time.perf_counter() - start, 3)  # interpreter start and exit included
        if done.returncode != 0:
            raise RuntimeError(f"the start-up measurement failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
        return {**json.loads(out.read_text()), "process_s": process_s}


def cold_and_warm(model_spec: str, pattern: str | None, folder: str | Path, **kwargs: Any) -> dict[str, dict]:
    """A cold start into an empty cache folder under `folder`, then a warm start from what it left."""
    mode = "regional" if kwargs.get("regional") else "whole"
    cache = Path(folder) / f"inductor-cache-{pattern or 'dense'}-{mode}".replace(":", "-")
    if cache.exists() and any(cache.iterdir()):
        raise ValueError(f"{cache} is not empty, so a start there would not be cold; remove it")
    cold = measure(model_spec, pattern, cache, **kwargs)
    return {"cold": cold, "warm": measure(model_spec, pattern, cache, **kwargs)}
