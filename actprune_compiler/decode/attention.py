"""Attention for the decode loop, as a Hugging Face attention implementation named "actprune".

A decode step attends from one query token to a static cache of max_length positions, most of them not yet
written. SDPA reads every position, and for grouped-query attention Inductor first copies the keys and values
once per query head. actprune::decode_attention (kernels/decode_attention.cpp) reads each key/value head in
place and only the positions the mask allows, in one call per layer. Calls with more query tokens (a prefill),
without a boolean mask, or off the CPU take SDPA, as the model would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from actprune_compiler.lowering.inductor import native_kernels

NAME = "actprune"


def decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    native = (_native_kernel and query.shape[2] == 1 and query.device.type == "cpu" and attention_mask is not None
              and attention_mask.dtype == torch.bool and kwargs.get("softcap") is None and dropout == 0.0)
    if not native:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return torch.ops.actprune.decode_attention(query, key, value, attention_mask, scale), None


# Whether the native kernel is built; found out before tracing (Dynamo cannot trace the build's file hashing)
_native_kernel = False

AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks SDPA gets


@contextlib.contextmanager
def decode_attention_while_tracing(model: nn.Module) -> Iterator[None]:
    """The model's attention is "actprune" while a graph of it is traced; the model itself keeps its own
    implementation for every other call. Without the native kernels every call takes SDPA."""
    global _native_kernel
    _native_kernel = native_kernels()  # says once, on the log, when they could not be built
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
