"""Calibration: statistics of each selected linear's input on a few sequences of held-out text.

Static criteria and corrections turn them into graph constants (sparsity/constants.py). The
caller chooses the text (the CLI: WikiText-2 *validation*, never the test split it scores).
"""

from __future__ import annotations

import copy
import time
import weakref
from typing import Any

import torch
from torch import nn

from actprune_compiler.calibration.hooks import run_eager, selected_linears, token_batches
from actprune_compiler.sparsity.activation import sparsify_activation
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import layer_constants
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.stats import LayerStats

# Dense-input statistics depend only on the model, the text and the layers: sweeps reuse them.
# Entries hold a weak reference to their model, so a new model at a recycled id() never matches.
_STATS_CACHE: dict[tuple, tuple[weakref.ref, dict[str, LayerStats]]] = {}


def collect_stats(model: nn.Module, batches: torch.Tensor, config: SparsityConfig) -> dict[str, LayerStats]:
    """Per-feature sums over the dense model's inputs to every selected linear."""
    layers = selected_linears(model, config)
    with_gram = config.rotation != "none"
    key = (id(model), hash(batches.numpy().tobytes()), tuple(layers), with_gram)
    owner, cached = _STATS_CACHE.get(key, (None, None))
    if owner is not None and owner() is model:
        return copy.deepcopy(cached)
    stats = {name: LayerStats(layer.in_features, with_gram=with_gram) for name, layer in layers.items()}
    run_eager(model, batches, layers, lambda name, mod, x: stats[name].update(x), "calibration: input statistics")
    _STATS_CACHE[key] = (weakref.ref(model), copy.deepcopy(stats))
    return stats


def collect_pruning_errors(model: nn.Module, batches: torch.Tensor, config: SparsityConfig,
                           stats: dict[str, LayerStats]) -> None:
    """E[x - x_sparse] per layer with the config's own mask and run-time correction: what the calibrated
    bias makes up for, and where a recovery method's learned offset starts."""
    layers = selected_linears(model, config)
    pattern = config.parsed_pattern
    # the calibrated bias is what is being measured here, so its own constant is left out
    base = config.replace(correction="none") if CORRECTIONS[config.correction].calibrated_bias else config
    constants = {name: layer_constants(base, layer.weight.detach(), None, stats[name])
                 for name, layer in layers.items()}

    def observe(name, mod, x):
        n, m = pattern.group(mod.in_features)
        c = constants[name]
        sparse = sparsify_activation(x, n, m, base.criterion, base.correction, c.score_scale, c.shift, prune_sorted)
        # a static shift is added back by the bias the pass folds, so the layer sees sparse + shift
        stats[name].update_error(x - sparse if c.shift is None else x - sparse - c.shift)

    run_eager(model, batches, layers, observe, "calibration: pruning error")


def calibrate(model: nn.Module, tokenizer, config: SparsityConfig, text: str,
              source: str = "caller's text") -> tuple[dict[str, LayerStats], dict[str, Any]]:
    """(stats by module path, a summary for report.json), from the first calib_samples x calib_seqlen
    tokens of `text`."""
    start = time.perf_counter()
    batches = token_batches(tokenizer, text, config.calib_samples, config.calib_seqlen)
    stats = collect_stats(model, batches, config)
    if config.needs_pruning_errors():
        collect_pruning_errors(model, batches, config, stats)
    summary = {"source": source, "samples": config.calib_samples, "seqlen": config.calib_seqlen,
               "tokens": int(batches.numel()), "seconds": round(time.perf_counter() - start, 2),
               "layers": {name: s.summary() for name, s in stats.items()}}
    return stats, summary
