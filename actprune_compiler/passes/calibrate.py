"""Calibration: statistics of each selected linear's input on a few sequences of held-out text.

Static criteria and corrections turn them into graph constants (see insert_nm_linear.py). The
text defaults to WikiText-2 *validation*: never the test split that perplexity is scored on.
"""

from __future__ import annotations

import contextlib
import copy
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from actprune_compiler.config import SparsityConfig
from actprune_compiler.passes.select_linears import matches
from actprune_compiler.stats import LayerStats

CALIB_SOURCES = ("wikitext2-validation", "wikitext2-train")


def calibration_text(source: str | None, data_dir: str | None = None) -> tuple[str, str]:
    """(text, description). source: wikitext2-validation (default), wikitext2-train, or a text file."""
    from actprune_compiler.eval.data import load_wikitext2

    source = source or "wikitext2-validation"
    if source in CALIB_SOURCES:
        split = source.split("-", 1)[1]
        text = load_wikitext2(split, data_dir)
        return text.text, f"{source} ({text.source})"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--calib-data {source!r} is neither {' nor '.join(CALIB_SOURCES)} nor a text file")
    return path.read_text(), f"file {path}"


def calibration_batches(tokenizer, text: str, samples: int, seqlen: int) -> torch.Tensor:
    """The first `samples` non-overlapping windows of `seqlen` tokens: [samples, seqlen]."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    if ids.numel() < samples * seqlen:
        raise ValueError(f"calibration text has {ids.numel()} tokens, fewer than calib_samples x calib_seqlen "
                         f"= {samples} x {seqlen}; lower them or give more text")
    return ids[: samples * seqlen].view(samples, seqlen)


def selected_linears(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Linear]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and matches(name, config.modules) and not matches(name, config.exclude)}


@contextlib.contextmanager
def input_hooks(layers: dict[str, nn.Linear], observe):
    handles = [layer.register_forward_pre_hook(lambda mod, args, name=name: observe(name, mod, args[0]))
               for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _run(model: nn.Module, batches: torch.Tensor, desc: str) -> None:
    with torch.no_grad():
        for row in tqdm(batches, desc=desc, leave=False):
            model(input_ids=row.unsqueeze(0), use_cache=False)


# Dense-input statistics depend only on the model, the text and the layers: sweeps reuse them.
# Entries hold a weak reference to their model, so a new model at a recycled id() never matches.
_STATS_CACHE: dict[tuple, tuple[weakref.ref, dict[str, LayerStats]]] = {}


def collect_stats(model: nn.Module, batches: torch.Tensor, config: SparsityConfig) -> dict[str, LayerStats]:
    """Per-feature sums over the dense model's inputs to every selected linear."""
    layers = selected_linears(model, config)
    key = (id(model), hash(batches.numpy().tobytes()), tuple(layers))
    owner, cached = _STATS_CACHE.get(key, (None, None))
    if owner is not None and owner() is model:
        return copy.deepcopy(cached)
    stats = {name: LayerStats(layer.in_features) for name, layer in layers.items()}
    with input_hooks(layers, lambda name, mod, x: stats[name].update(x)):
        _run(model, batches, "calibration: input statistics")
    _STATS_CACHE[key] = (weakref.ref(model), copy.deepcopy(stats))
    return stats


def collect_pruning_errors(model: nn.Module, batches: torch.Tensor, config: SparsityConfig,
                           stats: dict[str, LayerStats]) -> None:
    """E[x - x_sparse] per layer with the config's own mask, for the calibrated-bias correction."""
    from actprune_compiler.activation import sparsify_activation
    from actprune_compiler.masks import prune_sorted
    from actprune_compiler.passes.insert_nm_linear import layer_constants

    layers = selected_linears(model, config)
    pattern = config.parsed_pattern
    plain = config.replace(correction="none")  # the mask the bias has to make up for
    constants = {name: layer_constants(plain, layer.weight.detach(), None, stats[name])
                 for name, layer in layers.items()}

    def observe(name, mod, x):
        n, m = pattern.group(mod.in_features)
        c = constants[name]
        sparse = sparsify_activation(x, n, m, config.criterion, "none", c.score_scale, None, prune_sorted)
        stats[name].update_error(x - sparse)

    with input_hooks(layers, observe):
        _run(model, batches, "calibration: pruning error")


def calibrate(model: nn.Module, tokenizer, config: SparsityConfig, calib_data: str | None = None,
              data_dir: str | None = None) -> tuple[dict[str, LayerStats], dict[str, Any]]:
    """(stats by module path, a summary for report.json)."""
    from actprune_compiler.corrections import CORRECTIONS

    if tokenizer is None:
        raise ValueError("calibration needs a tokenizer, and this model has none")
    start = time.perf_counter()
    text, source = calibration_text(calib_data, data_dir)
    batches = calibration_batches(tokenizer, text, config.calib_samples, config.calib_seqlen)
    stats = collect_stats(model, batches, config)
    if CORRECTIONS[config.correction].calibrated_bias:
        collect_pruning_errors(model, batches, config, stats)
    summary = {"source": source, "samples": config.calib_samples, "seqlen": config.calib_seqlen,
               "tokens": int(batches.numel()), "seconds": round(time.perf_counter() - start, 2),
               "layers": {name: s.summary() for name, s in stats.items()}}
    return stats, summary
