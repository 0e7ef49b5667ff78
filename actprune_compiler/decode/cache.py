"""A static KV cache whose state lives in tensors only, so one compiled step serves every position.

Hugging Face's StaticCache keeps a sliding-window layer (Gemma 3's local layers) as a ring buffer whose fill
level is a Python int: a compiled step would be specialised on it, recompiled at every position, or, called
without its guards, stale. Here every layer holds all max_length positions and writes at a position tensor;
the attention mask applies the sliding window (masking_utils computes it from the positions), at the price of
the full length in memory for those layers too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, StaticLayer


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def static_cache(model: nn.Module, max_length: int) -> Cache:
    """An empty cache of max_length positions for batch 1, allocated on the model's device in its dtype."""
    config = model.config.get_text_config(decoder=True)
    first = next(model.parameters())
    cache = Cache(layers=[StaticLayer(max_cache_len=max_length) for _ in range(config.num_hidden_layers)])
    cache.early_initialization(1, config.num_key_value_heads, head_dim(config), first.dtype, first.device)
    return cache


def reset(cache: Cache) -> None:
    """Empty the cache in place: a compiled step keeps reading the same tensors."""
    for layer in cache.layers:
        layer.keys.zero_()
        layer.values.zero_()
        layer.cumulative_length.zero_()


def tensors(cache: Cache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values, layer.cumulative_length)]
