"""actprune compile's check: what the backend makes of the rewritten layers equals the reference.

A whole-model float32 comparison is meaningless for N:M masks (one near-tie flipped by rounding
changes which feature is kept, and later layers carry the change), and compiling the whole model
costs more than the rest of the command. So the check compiles a few of the program's own
nm_linear nodes, with their real weights and constants, in float64 with Inductor and actprune's
lowering, and compares them with the reference kernel (sort + scatter) at a prefill shape and at a
decode shape (the decode kernel's path). Weight targets are checked by counting the kept weights
of every group of M.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from actprune_compiler.backends.inductor import compile_program
from actprune_compiler.export import WRAPPER_PREFIX
from actprune_compiler.passes.graph_host import ExportedProgramHost
from actprune_compiler.passes.select_linears import is_linear, is_nm_linear, module_path
from actprune_compiler.sparsity.decision import LayerDecision

# float64 GEMMs by two libraries agree to ~1e-15 relative; a wrong mask moves the output by ~1e-1.
RELATIVE_TOLERANCE = 1e-9
PREFILL_SHAPE, DECODE_SHAPE = (2, 16), (1, 1)


class _Layers(nn.Module):
    """The chosen nm_linear nodes side by side, each with its own float64 weight and constants."""

    def __init__(self, calls: list[tuple[tuple, dict]]) -> None:
        super().__init__()
        self.calls = []
        for i, (tensors, options) in enumerate(calls):
            names = []
            for j, t in enumerate(tensors):
                name = f"t{i}_{j}"
                self.register_buffer(name, None if t is None else t.detach().to(torch.float64))
                names.append(name)
            self.calls.append((names, options))

    def forward(self, *xs: Tensor) -> list[Tensor]:
        out = []
        for x, (names, options) in zip(xs, self.calls, strict=True):
            weight, bias, score_scale, shift = (getattr(self, n) for n in names)
            out.append(torch.ops.actprune.nm_linear(x, weight, bias, options["n"], options["m"],
                                                    criterion=options["criterion"], correction=options["correction"],
                                                    score_scale=score_scale, shift=shift))
        return out


def _spread(items: list, count: int) -> list:
    """`count` items spread over the list: the first, the last and evenly between."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def _check_weight_masks(host: ExportedProgramHost, sparsified) -> dict[str, Any]:
    decided = [(r["module"], LayerDecision.from_dict(r["decided"])) for r in sparsified.layers]
    sites = [(module, decision) for module, decision in decided if decision.is_sparse]
    weights = {module_path(node, WRAPPER_PREFIX): host.value(node.args[1]) for node in host.graph.nodes
               if is_linear(node)}
    bad = []
    for module, decision in sites:
        n, m = decision.n, decision.m
        weight = weights[module]
        kept = (weight.reshape(weight.shape[0], -1, m) != 0).sum(-1)
        if int(kept.max()) > n:
            bad.append(module)
    return {"kind": "weight masks", "layers": len(sites), "failed": bad, "passed": not bad,
            "line": (f"check: every group of M weights keeps at most N nonzeros in all {len(sites)} pruned layers"
                     if not bad else f"check FAILED: groups with more than N nonzero weights in {', '.join(bad)}")}


def check_program(sparsified, *, layers: int = 3, seed: int = 0) -> dict[str, Any]:
    """Compile `layers` of the program's nm_linear nodes in float64 and compare with the reference."""
    start = time.perf_counter()
    host = ExportedProgramHost(sparsified.program, WRAPPER_PREFIX)
    if sparsified.config.target == "weight":
        return {**_check_weight_masks(host, sparsified), "seconds": round(time.perf_counter() - start, 2)}
    nodes = [n for n in host.graph.nodes if is_nm_linear(n)]
    chosen = _spread(nodes, layers)
    calls, names = [], []
    for node in chosen:
        x, weight, bias, n, m = node.args
        tensors = (host.value(weight), None if bias is None else host.value(bias),
                   *(host.value(node.kwargs[k]) if node.kwargs.get(k) is not None else None
                     for k in ("score_scale", "shift")))
        calls.append((tensors, {"n": n, "m": m, "criterion": node.kwargs.get("criterion", "magnitude"),
                                "correction": node.kwargs.get("correction", "none")}))
        names.append(node.meta["actprune"]["module"])
    module = _Layers(calls).eval()
    compiled = compile_program(module, freeze=True)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for shape in (PREFILL_SHAPE, DECODE_SHAPE):
            xs = [torch.randn(*shape, t[0].shape[1], generator=generator, dtype=torch.float64).to(t[0].device)
                  for t, _ in calls]
            got, want = compiled(*xs), module(*xs)
            for g, w in zip(got, want, strict=True):
                worst = max(worst, float((g - w).abs().max() / w.abs().max().clamp_min(1e-300)))
    passed = worst <= RELATIVE_TOLERANCE
    shapes = " and ".join(f"{b}x{s} tokens" for b, s in (PREFILL_SHAPE, DECODE_SHAPE))
    verdict = "equal" if passed else "DIFFER FROM"
    line = (f"check: {len(chosen)} of {len(nodes)} rewritten layers ({', '.join(names)}) compiled by Inductor "
            f"{verdict} the reference kernel in float64 at {shapes} (max relative diff {worst:.1e}, "
            f"tolerance {RELATIVE_TOLERANCE:g})")
    if sparsified.config.quant != "none":
        line += (f"; the weights are the {sparsified.config.quant} values, and the quantised decode kernels (kept "
                 "rows, and the dense layers' int8 GEMV), float32 only, are not part of this float64 check")
    return {"kind": "compiled layers vs reference kernel, float64", "layers": names, "shapes": [PREFILL_SHAPE,
            DECODE_SHAPE], "max_relative_diff": worst, "tolerance": RELATIVE_TOLERANCE, "passed": passed,
            "line": line, "seconds": round(time.perf_counter() - start, 2)}
