"""The Python front door: sparsify(model or exported program, SparsityConfig) -> rewritten program."""

from __future__ import annotations

import copy
import platform
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from actprune_compiler.config import SparsityConfig
from actprune_compiler.export import WRAPPER_PREFIX, export_causal_lm
from actprune_compiler.graph_host import ExportedProgramHost
from actprune_compiler.passes import run_passes
from actprune_compiler.passes.select_linears import LINEAR_TARGETS
from actprune_compiler.stats import LayerStats


def count_ops(graph: fx.Graph) -> dict[str, int]:
    """How many nm_linear and plain linear nodes a graph holds."""
    counts = Counter()
    for node in graph.nodes:
        if node.op == "call_function":
            if node.target is torch.ops.actprune.nm_linear.default:
                counts["nm_linear"] += 1
            elif node.target in LINEAR_TARGETS:
                counts["linear"] += 1
    return {"nm_linear": counts["nm_linear"], "linear": counts["linear"]}


def layer_totals(layers: list[dict[str, Any]]) -> dict[str, int]:
    return {"linears": len(layers), "replaced": sum(1 for row in layers if not row["decision"].startswith("dense")),
            "dense_not_matched": sum(1 for r in layers if r["decision"] == "dense: not matched by modules"),
            "dense_excluded": sum(1 for r in layers if r["decision"] == "dense: excluded"),
            "decisions": dict(Counter(row["decision"] for row in layers))}


@dataclass
class SparsifiedProgram:
    program: ExportedProgram
    config: SparsityConfig
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replaced(self) -> int:
        return layer_totals(self.layers)["replaced"]

    def module(self) -> nn.Module:
        return self.program.module()


def sparsify(model_or_program: nn.Module | ExportedProgram, config: SparsityConfig,
             stats: dict[str, LayerStats] | None = None, *, copy_program: bool = True) -> SparsifiedProgram:
    """Apply actprune's passes. A model is exported first; a program is copied unless told otherwise."""
    if isinstance(model_or_program, ExportedProgram):
        program = copy.deepcopy(model_or_program) if copy_program else model_or_program
    elif isinstance(model_or_program, nn.Module):
        program = export_causal_lm(model_or_program)
    else:
        raise TypeError(f"sparsify takes a causal LM (nn.Module) or an ExportedProgram, "
                        f"not {type(model_or_program).__name__}")
    if config.skip_sensitive:
        raise ValueError("skip_sensitive needs the model and calibration text: use "
                         "actprune_compiler.pipeline.build (or the CLI), which ranks the layers first")
    if config.needs_calibration() and stats is None:
        raise ValueError(f"config {config.label!r} needs calibration statistics: pass "
                         "stats=calibrate(model, tokenizer, config) (see actprune_compiler.calibrate)")
    layers = run_passes(ExportedProgramHost(program, WRAPPER_PREFIX), config, stats)
    return SparsifiedProgram(program, config, layers)


def versions() -> dict[str, str]:
    import transformers

    from actprune_compiler import __version__

    return {"actprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()} {platform.system()}, "
            f"{torch.get_num_threads()} threads"}
