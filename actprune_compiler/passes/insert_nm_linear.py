"""Activation target: replace each selected linear with one actprune.nm_linear node."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actprune_compiler.config import SparsityConfig
from actprune_compiler.corrections import CORRECTIONS
from actprune_compiler.criteria import CRITERIA
from actprune_compiler.graph_host import GraphHost
from actprune_compiler.passes.select_linears import LinearSite, format_node
from actprune_compiler.stats import LayerStats


@dataclass
class LayerConstants:
    """The static tensors one rewritten layer needs; None where the method needs none."""

    score_scale: Tensor | None = None
    shift: Tensor | None = None
    bias: Tensor | None = None  # the new bias, when a correction folds something into it

    def summary(self) -> dict[str, dict[str, float | list[int]]]:
        out = {}
        for name in ("score_scale", "shift", "bias"):
            t = getattr(self, name)
            if t is not None:
                t = t.float()
                out[name] = {"shape": list(t.shape), "mean": float(t.mean()), "min": float(t.min()),
                             "max": float(t.max())}
        return out


@torch.no_grad()  # constants are computed from parameters once; they must not carry autograd state
def layer_constants(config: SparsityConfig, weight: Tensor, bias: Tensor | None,
                    stats: LayerStats | None) -> LayerConstants:
    """Everything the criterion and correction fix before run time, for one layer."""
    criterion, fix = CRITERIA[config.criterion], CORRECTIONS[config.correction]
    if (criterion.needs_calibration or fix.needs_calibration) and stats is None:
        raise ValueError(f"criterion {config.criterion!r} with correction {config.correction!r} needs "
                         "calibration statistics; run calibrate() first (the CLI does it for you)")
    out = LayerConstants()
    scale = criterion.static_scale(weight, stats) if criterion.static_scale else None
    if fix.smooth_scale:
        inverse = 1.0 / fix.smooth_scale(weight, stats)
        scale = inverse if scale is None else scale * inverse
    out.score_scale = None if scale is None else scale.to(weight.dtype)
    new_bias = None
    if fix.static_shift:
        out.shift = fix.static_shift(stats).to(weight.dtype)
        new_bias = weight.float() @ out.shift.float()
    if fix.calibrated_bias:
        new_bias = weight.float() @ stats.pruning_error_mean()
    if new_bias is not None:
        out.bias = (new_bias if bias is None else bias.float() + new_bias).to(weight.dtype)
    return out


def insert_nm_linear(host: GraphHost, sites: list[LinearSite], config: SparsityConfig,
                     stats: dict[str, LayerStats] | None = None) -> dict[str, LayerConstants]:
    """Rewrite every selected site; return the constants each one received, by module path."""
    made = {}
    for site in (s for s in sites if s.selected):
        weight = host.value(site.weight)
        bias_node = site.bias
        bias = host.value(bias_node) if bias_node is not None else None
        consts = layer_constants(config, weight, bias, (stats or {}).get(site.path))
        if consts.bias is not None:  # a new constant: the model's own bias parameter stays untouched
            bias_node = host.add_constant(f"{site.path}.corrected_bias", consts.bias)
        kwargs = {"criterion": config.criterion, "correction": config.correction}
        for name in ("score_scale", "shift"):
            if (t := getattr(consts, name)) is not None:
                kwargs[name] = host.add_constant(f"{site.path}.{name}", t)
        with host.graph.inserting_before(site.node):
            new = host.graph.call_function(torch.ops.actprune.nm_linear.default,
                                           (site.x, site.weight, bias_node, site.n, site.m), kwargs)
        new.meta.update(site.node.meta)
        new.meta["actprune"] = {"module": site.path, "pattern": f"{site.n}:{site.m}",
                                "criterion": config.criterion, "correction": config.correction}
        site.node.replace_all_uses_with(new)
        host.graph.erase_node(site.node)
        site.node = new
        site.after = format_node(new)
        made[site.path] = consts
    return made
