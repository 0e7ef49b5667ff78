"""Weight target: fold the N:M mask into the weight constants; the linear node stays as it is."""

from __future__ import annotations

import torch

from actprune_compiler.passes.graph_host import GraphHost
from actprune_compiler.passes.select_linears import LinearSite, format_node
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.stats import LayerStats
from actprune_compiler.sparsity.weights import prune_weight


def fold_weight_masks(host: GraphHost, sites: list[LinearSite], config: SparsityConfig,
                      stats: dict[str, LayerStats] | None = None) -> dict[str, int]:
    """Prune each selected layer's weight once; return the nonzero count kept per module path."""
    kept = {}
    pruned_nodes: dict[torch.fx.Node, tuple[torch.fx.Node, int]] = {}  # shared weights: prune once
    for site in (s for s in sites if s.selected):
        weight_node = site.weight
        if weight_node not in pruned_nodes:
            pruned = prune_weight(host.value(weight_node), site.n, site.m, config.criterion,
                                  (stats or {}).get(site.path))
            pruned_nodes[weight_node] = (host.replace_value(weight_node, pruned), int(pruned.count_nonzero()))
        new_node, kept[site.path] = pruned_nodes[weight_node]
        if new_node is not weight_node:
            site.node.replace_input_with(weight_node, new_node)
        site.after = f"{format_node(site.node)}  # {new_node.name} now holds the pruned weight"
    return kept
