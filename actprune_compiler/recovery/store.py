"""Learned values on disk, so a second eval, sweep row or compile of the same method trains nothing.

The key hashes everything training reads: the model's tensors, the config, the calibration text
and the layers kept dense. ACTPRUNE_NO_RECOVERY_CACHE=1 turns the store off; the folder is
$ACTPRUNE_CACHE/recovery.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from actprune_compiler.files import atomic_write
from actprune_compiler.models import CACHE_DIR
from actprune_compiler.recovery.distill import distill
from actprune_compiler.recovery.sparse_linear import LearnedLayer
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.stats import LayerStats

FORMAT = 1  # bump when what is stored, or how distill() trains, changes


def model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def store_key(model: nn.Module, config: SparsityConfig, text: str, keep_dense: frozenset[str]) -> str:
    parts = [f"format={FORMAT}", model_fingerprint(model), config.to_json(),
             hashlib.sha256(text.encode()).hexdigest(), ",".join(sorted(keep_dense))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def learned_values(model: nn.Module, tokenizer, config: SparsityConfig, text: str, stats: dict[str, LayerStats],
                   *, keep_dense: frozenset[str] = frozenset()) -> tuple[dict[str, LearnedLayer], dict[str, Any]]:
    """distill()'s result, read from the store when this model, config and text were trained before."""
    use_store = os.environ.get("ACTPRUNE_NO_RECOVERY_CACHE") != "1"
    path = CACHE_DIR / "recovery" / f"{store_key(model, config, text, keep_dense)}.pt" if use_store else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        learned = {name: LearnedLayer(**values) for name, values in saved["learned"].items()}
        return learned, {**saved["summary"], "store": str(path), "from_store": True}
    learned, summary = distill(model, tokenizer, config, text, stats, keep_dense=keep_dense)
    if path is not None:
        saved = {"learned": {name: vars(layer) for name, layer in learned.items()}, "summary": summary}
        atomic_write(path, lambda tmp: torch.save(saved, tmp))
        summary = {**summary, "store": str(path)}
    return learned, {**summary, "from_store": False}
