"""The decode kernel over quantised rows of W^T (kernels/quant_rows.cpp), and its packed layout read back.

Formats, the plain-torch quantiser and the dequantised weight: sparsity/quant.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from actprune_compiler.kernels import cpu
from actprune_compiler.sparsity.quant import Quantized, quant_format


def quant_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None, fmt: str) -> Tensor:
    """x [..., K] @ dequantized(weight, fmt)^T + bias, reading only the quantised rows where x is nonzero."""
    cpu._extension()  # registers the CPU kernel
    return torch.ops.actprune.quant_rows_linear(x, weight, bias, fmt)


def packed_rows(weight: Tensor, fmt: str) -> Tensor:
    """The cache's quantised rows of weight in fmt: the bytes the decode kernel reads (shared, not a copy)."""
    return cpu._extension().quantized_rows(weight, fmt)


def unpack(packed: Tensor, fmt: str, out_features: int, in_features: int) -> Quantized:
    """Reads the packer's byte layout (see quant_rows.cpp) back into codes and scales."""
    f, n, k = quant_format(fmt, out_features, in_features), out_features, in_features
    if f.group is None:
        scales_at = (k * n + 63) // 64 * 64
        codes = packed[: k * n].view(torch.int8).reshape(k, n)
        return Quantized(codes, packed[scales_at: scales_at + 4 * n].view(torch.float32), None)
    if f.along_inputs:  # blocks of G rows: their codes, then N scales and N minimums
        blocks = packed.reshape(k // f.group, f.group * n // 2 + 4 * n)
        params = blocks[:, f.group * n // 2:].contiguous().view(torch.float16)
        return Quantized(unpack_codes(blocks[:, : f.group * n // 2].reshape(k, n // 2), f.code_lanes),
                         params[:, :n], params[:, n:])
    groups = n // f.group
    rows = packed.reshape(k, n // 2 + 4 * groups)
    params = rows[:, n // 2:].contiguous().view(torch.float16)
    return Quantized(unpack_codes(rows[:, : n // 2], f.code_lanes), params[:, :groups], params[:, groups:])


def unpack_codes(halves: Tensor, lanes: int) -> Tensor:
    """Rows of int4 code bytes [K, N / 2] -> codes [K, N]: in each run of lanes / 2 bytes, byte i holds
    output i (low nibble) and output i + lanes / 2 (high nibble)."""
    k = halves.shape[0]
    runs = halves.reshape(k, -1, lanes // 2)
    return torch.cat([runs & 15, runs >> 4], dim=-1).reshape(k, -1)
