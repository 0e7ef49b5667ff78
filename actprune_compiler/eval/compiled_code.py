"""Compiled code that travels with an artifact, so `eval --model ARTIFACT` starts without compiling.

`actprune compile --compiled-code` compiles the rewritten program the way a regional evaluation will
(one decoder layer at a time, weights as inputs: Inductor caches no frozen graph), runs it at the
shapes scoring uses, and stores what Inductor and AOTAutograd cached as torch's portable cache
artifacts (`torch.compiler.save_cache_artifacts`) in the artifact folder. Evaluating the artifact with
--regional loads them into the local caches first (`load_cache_artifacts`), so every graph is a cache
hit, on this machine or another with the same torch, Python and actprune lowering code (a different one
simply misses and compiles).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch.compiler._cache import CacheArtifactManager

from actprune_compiler.artifact.folder import input_ranges
from actprune_compiler.eval.runner import EvalOptions, program_runner, warm_up_shapes

log = logging.getLogger("actprune")
COMPILED_CODE = "compiled-code.bin"


def compile_for_artifact(program, device: torch.device | str, *, with_mask: bool = False) -> tuple[bytes, dict]:
    """Compile `program` as a regional evaluation does and run it at the shapes scoring uses (perplexity
    windows and lm-eval batches); (the cache artifacts, a summary for report.json)."""
    (_, batch_max), (_, seq_max) = input_ranges(program)
    options = EvalOptions(tasks=("wikitext2", "arc_easy"), seqlen=min(EvalOptions.seqlen, seq_max),
                          batch_size=min(EvalOptions.batch_size, batch_max), regional=True)
    shapes = warm_up_shapes(options)
    torch.compiler.reset()
    CacheArtifactManager.clear()  # only this program's graphs in the saved artifacts (not the check's)
    before = dict(counters["inductor"])
    runner = program_runner(program, device, options, with_mask=with_mask)
    for batch, seqlen in shapes:
        runner(torch.zeros(batch, seqlen, dtype=torch.long))
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        raise RuntimeError("Inductor saved no cache artifacts for the compiled program, so its FX graph cache is "
                           "off (TORCHINDUCTOR_FX_GRAPH_CACHE=0 or TORCHINDUCTOR_FORCE_DISABLE_CACHES=1): turn it on, "
                           "or drop --compiled-code")
    data, _ = saved
    graphs = sum(fxgraph_cache_since(before).values())
    return data, {"file": COMPILED_CODE, "bytes": len(data), "graphs": graphs, "shapes": [list(s) for s in shapes],
                  "regional": True, "torch": torch.__version__}


def fxgraph_cache_since(before: dict[str, int]) -> dict[str, int]:
    """Inductor's FX graph cache hits and misses counted since `before` (a copy of counters["inductor"])."""
    now = counters["inductor"]
    return {key.removeprefix("fxgraph_cache_"): now[key] - before.get(key, 0) for key in ("fxgraph_cache_hit",
            "fxgraph_cache_miss") if now[key] - before.get(key, 0)}


def load_compiled_code(folder: str | Path) -> dict[str, Any] | None:
    """Put an artifact's compiled code into the local Inductor caches; None when it carries none."""
    path = Path(folder) / COMPILED_CODE
    if not path.is_file():
        log.warning("%s's report.json lists compiled code, but %s is missing: compiling", folder, COMPILED_CODE)
        return None
    info = torch.compiler.load_cache_artifacts(path.read_bytes())
    return {"file": str(path), "entries": {k: len(v) for k, v in vars(info).items()} if info else {}}
