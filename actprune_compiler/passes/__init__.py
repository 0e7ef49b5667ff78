"""The rewrite passes, in order. Each is a function over a GraphHost that returns what it changed."""

from __future__ import annotations

from typing import Any

from actprune_compiler.passes.fold_weight_masks import fold_weight_masks
from actprune_compiler.passes.graph_host import GraphHost
from actprune_compiler.passes.insert_nm_linear import insert_nm_linear
from actprune_compiler.passes.quantize_weights import quantize_weights
from actprune_compiler.passes.select_linears import LinearSite, select_linears
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LearnedLayer
from actprune_compiler.sparsity.stats import LayerStats

__all__ = ["run_passes", "select_linears", "insert_nm_linear", "fold_weight_masks", "quantize_weights", "layer_rows"]


def layer_rows(sites: list[LinearSite], changes: dict[str, Any], quantized: dict[str, str]) -> list[dict[str, Any]]:
    """One report row per linear: what it is, what was decided, and the format its weight is quantised in."""
    rows = []
    for site in sites:
        row = {"module": site.path, "in_features": site.in_features, "out_features": site.out_features,
               "bias": site.has_bias, "decision": str(site.decision), "decided": site.decision.to_dict()}
        if site.selected:
            row["before"], row["after"] = site.before, site.after
        change = changes.get(site.path)
        if isinstance(change, int):
            row["weight_nonzero"] = change
            row["weight_density"] = round(change / (site.in_features * site.out_features), 6)
        elif change is not None:
            if constants := change.summary():
                row["constants"] = constants
            if change.rotation is not None:  # the x @ Q it added, read by sparsity.rotation.rotation_cost
                row["rotation_macs_per_token"] = change.rotation_macs
        if site.path in quantized:
            row["quant"] = quantized[site.path]
        rows.append(row)
    return rows


def run_passes(host: GraphHost, config: SparsityConfig, stats: dict[str, LayerStats] | None = None, *,
               keep_dense: frozenset[str] = frozenset(),
               learned: dict[str, LearnedLayer] | None = None) -> list[dict[str, Any]]:
    """select_linears -> insert_nm_linear (activation) or fold_weight_masks (weight) -> quantize_weights
    (config.quant) -> cleanup.

    learned: a recovery method's values by module path (recovery/prepare.py makes them)."""
    sites = select_linears(host, config, keep_dense)
    if config.target == "activation":
        changes = insert_nm_linear(host, sites, config, stats, learned)
    else:
        changes = fold_weight_masks(host, sites, config, stats)
    quantized = quantize_weights(host, sites, config.quant) if config.quant != "none" else {}
    host.finish()
    return layer_rows(sites, changes, quantized)
