"""Learned values on disk, so a second eval, sweep row or compile of the same method trains nothing.

The key hashes everything training reads: the model's tensors and config, the config, the calibration
token ids (text and tokenizer), the pruning errors the offsets start from, the layers kept dense and
the training constants. ACTPRUNE_NO_RECOVERY_CACHE=1 turns the store off; the folder is
$ACTPRUNE_CACHE/recovery.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from actprune_compiler.calibration.hooks import token_windows
from actprune_compiler.models.gguf import unmarked_config
from actprune_compiler.recovery import distill as training
from actprune_compiler.reporting.files import CACHE_DIR, atomic_write
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LearnedLayer
from actprune_compiler.sparsity.recovery_methods import BATCH, WEIGHT_LR_RATIO, learning_rate
from actprune_compiler.sparsity.stats import LayerStats

FORMAT = 2  # bump when what is stored, or how distill() trains, changes


def _update(digest, tensor: Tensor) -> None:
    digest.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def config_text(config: Any) -> str:
    """The model config as the key reads it: without the quantization_config that a GGUF file read directly
    carries and its dequantised copy does not, else a model's first load and every later one key apart."""
    return unmarked_config(config).to_json_string() if hasattr(config, "to_json_string") else repr(config)


def model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    digest.update(config_text(getattr(model, "config", None)).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()


# SparsityConfig fields added after this store's format: left out of the key at their defaults, so values
# learned before a field existed keep their key (their config had that default, whatever it serialised).
LATER_FIELDS = {"rotation": "none"}


def config_key(config: SparsityConfig) -> str:
    data = {k: v for k, v in config.to_dict().items() if LATER_FIELDS.get(k, object()) != v}
    return json.dumps(data, sort_keys=True)


def store_key(model: nn.Module, config: SparsityConfig, windows: Tensor, stats: dict[str, LayerStats],
              keep_dense: frozenset[str]) -> str:
    digest = hashlib.sha256()
    constants = (FORMAT, learning_rate(config), WEIGHT_LR_RATIO, BATCH, training.HELD_OUT, training.SEED)
    for part in (repr(constants), model_fingerprint(model), config_key(config), ",".join(sorted(keep_dense))):
        digest.update(part.encode() + b"\n")
    _update(digest, windows)
    for name in sorted(stats):
        if stats[name].error_total is not None:
            _update(digest, stats[name].pruning_error_mean(name))
    return digest.hexdigest()[:24]


def learned_values(model: nn.Module, tokenizer, config: SparsityConfig, text: str, stats: dict[str, LayerStats],
                   *, keep_dense: frozenset[str] = frozenset()) -> tuple[dict[str, LearnedLayer], dict[str, Any]]:
    """distill()'s result, read from the store when this model, config and text were trained before."""
    windows = token_windows(tokenizer, text, config.calib_seqlen)
    use_store = os.environ.get("ACTPRUNE_NO_RECOVERY_CACHE") != "1"
    key = store_key(model, config, windows, stats, keep_dense) if use_store else None
    path = CACHE_DIR / "recovery" / f"{key}.pt" if use_store else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        learned = {name: LearnedLayer(**values) for name, values in saved["learned"].items()}
        return learned, {**saved["summary"], "store": str(path), "from_store": True}
    learned, summary = training.distill(model, config, windows, stats, keep_dense=keep_dense)
    if path is not None:
        saved = {"learned": {name: vars(layer) for name, layer in learned.items()}, "summary": summary}
        atomic_write(path, lambda tmp: torch.save(saved, tmp))
        summary = {**summary, "store": str(path)}
    return learned, {**summary, "from_store": False}
