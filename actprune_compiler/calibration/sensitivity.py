"""Per-layer sensitivity: how much each layer's output changes when only that layer is pruned.

Measured on calibration text as the relative output error ||W (x - x_sparse)||^2 / ||W x||^2 of
the layer, with the config's own criterion and correction constants: one forward pass for all
layers. (A perplexity-per-layer measure would need one pass per layer.)
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from actprune_compiler.calibration.hooks import run_eager, selected_linears, token_batches
from actprune_compiler.calibration.statistics import collect_stats
from actprune_compiler.sparsity.activation import sparsify_activation
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import layer_constants
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.stats import LayerStats


def layer_sensitivity(model: nn.Module, tokenizer, config: SparsityConfig, text: str,
                      stats: dict[str, LayerStats] | None = None) -> list[dict[str, Any]]:
    """Rows {module, relative_error}, most sensitive first."""
    batches = token_batches(tokenizer, text, config.calib_samples, config.calib_seqlen)
    layers = selected_linears(model, config)
    if stats is None and config.needs_calibration():
        stats = collect_stats(model, batches, config)
    plain = config.replace(correction="none") if config.correction == "bias" else config
    constants = {name: layer_constants(plain, layer.weight.detach(), layer.bias, (stats or {}).get(name))
                 for name, layer in layers.items()}
    error = dict.fromkeys(layers, 0.0)
    signal = dict.fromkeys(layers, 0.0)

    def observe(name, mod, x):
        n, m = config.parsed_pattern.group(mod.in_features)
        c = constants[name]
        # a rotation masks z = x @ Q and multiplies by W Q: the same layer, in the basis the mask acts in
        z, weight = (x, mod.weight) if c.rotation is None else (x @ c.rotation, c.weight)
        sparse = sparsify_activation(z, n, m, config.criterion, plain.correction, c.score_scale, c.shift, prune_sorted)
        if c.shift is not None:  # what the GEMM sees is x - eta; the bias gives W @ eta back
            sparse = sparse + c.shift
        error[name] += float(F.linear(z - sparse, weight).double().square().sum())
        signal[name] += float(F.linear(x, mod.weight).double().square().sum())

    run_eager(model, batches, layers, observe, "sensitivity")
    rows = [{"module": name, "relative_error": error[name] / max(signal[name], 1e-30)} for name in layers]
    return sorted(rows, key=lambda r: r["relative_error"], reverse=True)


def most_sensitive(model: nn.Module, tokenizer, config: SparsityConfig, text: str,
                   stats: dict[str, LayerStats] | None = None) -> list[str]:
    """The config.skip_sensitive layers with the largest output error: the ones to keep dense."""
    ranking = layer_sensitivity(model, tokenizer, config.replace(skip_sensitive=0), text, stats)
    return [row["module"] for row in ranking[: config.skip_sensitive]]
