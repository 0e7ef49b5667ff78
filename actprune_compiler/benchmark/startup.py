"""Cold and warm starts: how long a new process takes from nothing to its first generated token.

Each measurement is a fresh Python process (`python -m actprune_compiler.benchmark.startup ...`), so nothing
compiled in this one can help it; what carries over between two of them is only what is on disk:
Inductor's FX graph and AOT autograd caches (TORCHINDUCTOR_CACHE_DIR) and actprune's dequantised
model copy. A cold start gets an empty cache folder, a warm start the folder the cold one filled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()  # as early as this module can note it: imports count as start-up


def measure(model_spec: str, pattern: str | None, cache_dir: str | Path, *, dtype: str = "default",
            device: str | None = None, new_tokens: int = 8, freeze: bool = False,
            regional: bool = False) -> dict[str, Any]:
    """One start in a fresh process with the given Inductor cache folder: its stage times, seconds."""
    command = [sys.executable, "-m", "actprune_compiler.benchmark.startup", "--model", model_spec, "--dtype", dtype,
               "--new-tokens", str(new_tokens)]
    command += ["--pattern", pattern] if pattern else []
    command += ["--device", device] if device else []
    command += ["--freeze"] if freeze else []
    command += ["--regional"] if regional else []
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the start-up measurement failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - start, 3)  # interpreter start and exit included
    return result


def cold_and_warm(model_spec: str, pattern: str | None, folder: str | Path, **kwargs: Any) -> dict[str, dict]:
    """A cold start into an empty cache folder under `folder`, then a warm start from what it left."""
    mode = "regional" if kwargs.get("regional") else "whole"
    cache = Path(folder) / f"inductor-cache-{pattern or 'dense'}-{mode}".replace(":", "-")
    if cache.exists() and any(cache.iterdir()):
        raise ValueError(f"{cache} is not empty, so a start there would not be cold; remove it")
    cold = measure(model_spec, pattern, cache, **kwargs)
    return {"cold": cold, "warm": measure(model_spec, pattern, cache, **kwargs)}


def _start(args: argparse.Namespace) -> dict[str, Any]:
    from actprune_compiler.backends.dynamo import compile_dense, compile_model
    from actprune_compiler.benchmark.generation import timed_generate
    from actprune_compiler.models.load import load_model
    from actprune_compiler.reporting.runinfo import Timer

    timer = Timer()
    timer.seconds["imports_s"] = round(time.perf_counter() - PROCESS_START, 3)
    with timer("load_s"):
        model, tokenizer = load_model(args.model, args.dtype, args.device)
    with timer("setup_s"):
        if args.pattern:
            compile_model(model, {"pattern": args.pattern}, tokenizer=tokenizer, freeze=args.freeze,
                          regional=args.regional)
        else:  # the baseline: Inductor as it comes, compiled the same way
            compile_dense(model, freeze=args.freeze, regional=args.regional)
    ids = tokenizer("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    ready = time.perf_counter()
    with timer("generate_s"):  # compiles prefill and decode graphs (or loads them from the cache)
        first = timed_generate(model, ids.to(model.device), args.new_tokens)
    steady = timed_generate(model, ids.to(model.device), 32)  # compiled by now: the decode speed this start gets
    from torch._dynamo.utils import counters

    from actprune_compiler.backends import dynamo

    return {"model": args.model, "pattern": args.pattern or "none", "freeze": args.freeze,
            "regional": args.regional, "times": timer.seconds,
            "tokens": first["tokens"], "rewritten_per_graph": dynamo.report()["rewritten_per_graph"],
            "first_token_s": round(ready - PROCESS_START + first["prefill_ms"] / 1e3, 3),
            "new_tokens": args.new_tokens, "decode_tokens_per_s": round(steady["decode_tokens_per_s"], 2),
            "inductor_cache": {k: v for k, v in counters["inductor"].items()
                                                              if k.startswith("fxgraph_cache")}}


def main() -> None:
    p = argparse.ArgumentParser(description="one timed start: load, compile, generate a few tokens")
    p.add_argument("--model", required=True)
    p.add_argument("--pattern", default=None)
    p.add_argument("--dtype", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--freeze", action="store_true")
    p.add_argument("--regional", action="store_true")
    print(json.dumps(_start(p.parse_args())))


if __name__ == "__main__":
    main()
