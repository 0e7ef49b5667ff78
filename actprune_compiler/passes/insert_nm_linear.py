"""Activation target: replace each selected linear with one actprune.nm_linear node."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from actprune_compiler.graph_host import GraphHost
from actprune_compiler.passes.select_linears import LinearSite, format_node
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LayerConstants, layer_constants
from actprune_compiler.sparsity.stats import LayerStats

if TYPE_CHECKING:
    from actprune_compiler.recovery.sparse_linear import LearnedLayer


def insert_nm_linear(host: GraphHost, sites: list[LinearSite], config: SparsityConfig,
                     stats: dict[str, LayerStats] | None = None,
                     learned: dict[str, LearnedLayer] | None = None) -> dict[str, LayerConstants]:
    """Rewrite every selected site; return the constants each one received, by module path.

    learned: a recovery method's weight and bias per module path; its weight replaces the layer's."""
    made = {}
    for site in (s for s in sites if s.selected):
        weight = host.value(site.weight)
        # the seed's module swap (config.drop_bias) computes x·Wᵀ without the layer's bias
        bias_node = config.kept_bias(site.bias)
        bias = host.value(bias_node) if bias_node is not None else None
        mine = (learned or {}).get(site.path)
        if config.recovery != "none" and mine is None:
            raise ValueError(f"recovery {config.recovery!r} learned no values for {site.path}, which this graph "
                             "prunes: train them with the same config and the same layers kept dense")
        consts = layer_constants(config, weight, bias, (stats or {}).get(site.path), mine)
        if consts.bias is not None:  # a new constant: the model's own bias parameter stays untouched
            kind = "learned_bias" if mine is not None else "corrected_bias"
            bias_node = host.add_constant(f"{site.path}.{kind}", consts.bias)
        weight_node = site.weight
        if consts.weight is not None:
            weight_node = host.substitute(weight_node, f"{site.path}.learned_weight", consts.weight)
        kwargs = {"criterion": config.criterion, "correction": config.correction}
        for name in ("score_scale", "shift"):
            if (t := getattr(consts, name)) is not None:
                kwargs[name] = host.add_constant(f"{site.path}.{name}", t)
        with host.graph.inserting_before(site.node):
            new = host.graph.call_function(torch.ops.actprune.nm_linear.default,
                                           (site.x, weight_node, bias_node, site.n, site.m), kwargs)
        new.meta.update(site.node.meta)
        new.meta["actprune"] = {"module": site.path, "pattern": f"{site.n}:{site.m}",
                                "criterion": config.criterion, "correction": config.correction}
        site.node.replace_all_uses_with(new)
        host.graph.erase_node(site.node)
        site.node = new
        site.after = format_node(new)
        made[site.path] = consts
    return made
