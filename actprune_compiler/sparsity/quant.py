"""Quantised weights: the formats, a plain-torch quantiser and the dequantised weight.

A quantised layer keeps its weight as rows of W^T (one row per input feature, N values along the outputs),
so that an input the activation mask drops skips its whole row of codes: at 8:16, a decode step reads
half of the int4 codes. The decode kernel (kernels/quant_rows.cpp) packs the same codes from the float
weight and must agree with quantize() here; the compiler folds dequantized() into the graph, so the prefill
and every reference multiply by exactly the values the kernel stands for (quantising them again is exact).

Formats (rows of W^T):
- int8: symmetric, one float32 scale per output channel, s[j] = max_k |W[j, k]| / 127 kept to 17
  significant bits (so that s * q is exact in float32: quantising the dequantised weight again gives
  the same codes and scales); codes in [-127, 127]. 8 bits per weight, plus 32 per output.
- int4 (groups of 64 outputs) and int4g32 (groups of 32): asymmetric, per group of G consecutive
  outputs within a row a float16 scale (max - min) / 15 and a float16 minimum; codes in [0, 15];
  w = float(scale) * q + float(min). 4 + 32 / G bits per weight: 4.5 for int4, 5 for int4g32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DENSE_FORMAT = "int8"  # layers left dense under any format (lm_head): see passes/quantize_weights.py


def layer_format(quant: str, pruned: bool) -> str:
    """The format a layer's weight takes under `quant`: its own when pruned, DENSE_FORMAT when left dense."""
    return quant if pruned or quant == "none" else DENSE_FORMAT


@dataclass(frozen=True)
class QuantFormat:
    bits: int
    group: int | None  # outputs sharing an int4 scale and minimum; None: one scale per output channel (int8)


QUANT_FORMATS: dict[str, QuantFormat] = {
    "int8": QuantFormat(8, None),
    "int4": QuantFormat(4, 64),
    "int4g32": QuantFormat(4, 32),
}


@dataclass
class Quantized:
    """A weight [N, K] quantised as rows of W^T: codes [K, N] (row k: input feature k); int8: scale [N]
    float32 and no min; int4: scale and min [K, N / G] float16."""

    codes: Tensor
    scale: Tensor
    min: Tensor | None


def quant_format(fmt: str, out_features: int) -> QuantFormat:
    """The format named fmt, checked against the layer's out_features (int4 needs whole groups)."""
    if fmt not in QUANT_FORMATS:
        raise ValueError(f"unknown quantisation format {fmt!r}; allowed: {', '.join(QUANT_FORMATS)}")
    f = QUANT_FORMATS[fmt]
    if f.group and out_features % f.group:
        raise ValueError(f"format {fmt} quantises groups of {f.group} outputs, so out_features must be a multiple "
                         f"of {f.group}, but the layer has {out_features}; allowed: int4g32 for multiples of 32, "
                         "int8 for any")
    return f


def bits_per_weight(fmt: str, out_features: int, in_features: int) -> float:
    """Stored bits per weight, scales and minimums included."""
    f = quant_format(fmt, out_features)
    if f.group is None:
        return f.bits + 32 / in_features  # one float32 scale per output channel
    return f.bits + 32 / f.group  # a float16 scale and minimum per group


def int8_scale(amax: Tensor) -> Tensor:
    """max|w| / 127 rounded to 17 significant bits (1 for a zero channel): s * q is then exact in float32."""
    bits = (amax / 127).view(torch.int32)
    scale = ((bits + 32) & ~63).view(torch.float32)
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def quantize(weight: Tensor, fmt: str) -> Quantized:
    """The reference quantiser: weight [N, K] -> codes of the rows of W^T, with their scales."""
    n = weight.shape[0]
    f = quant_format(fmt, n)
    w = weight.detach().float()
    if f.group is None:
        scale = int8_scale(w.abs().amax(dim=1))
        codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return Quantized(codes.t().contiguous(), scale, None)
    groups = w.t().reshape(w.shape[1], n // f.group, f.group)  # [K, N / G, G]
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    min16, scale16 = lo.half(), ((hi - lo) / 15).half()
    scale, low = scale16.float()[..., None], min16.float()[..., None]
    q = torch.round((groups - low) / scale).clamp(0, 15)
    codes = torch.where(scale > 0, q, torch.zeros_like(q)).to(torch.uint8)  # a constant group: all codes 0
    return Quantized(codes.reshape(w.shape[1], n), scale16, min16)


def dequantized_rows(quantized: Quantized) -> Tensor:
    """The float32 values [K, N] that the codes stand for."""
    q = quantized.codes.float()
    if quantized.min is None:
        return quantized.scale * q
    group = q.shape[1] // quantized.scale.shape[1]
    scale = quantized.scale.float().repeat_interleave(group, dim=1)
    return scale * q + quantized.min.float().repeat_interleave(group, dim=1)


def dequantized(weight: Tensor, fmt: str) -> Tensor:
    """weight [N, K] as fmt represents it, in the weight's own layout and dtype: the values the decode
    kernel multiplies by, and what the prefill's weight becomes when the compiler folds them in."""
    return dequantized_rows(quantize(weight, fmt)).t().to(weight.dtype).contiguous()


def check_quantizable(weight: Tensor, quant: str, flag: str = "quant") -> None:
    """The decode kernel multiplies float32 on the CPU; other placements are refused in one sentence."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"{flag} {quant!r} runs on actprune's float32 CPU kernels, and this model is "
                         f"{str(weight.dtype).removeprefix('torch.')} on {weight.device.type}; use a float32 model on "
                         "the CPU (--dtype float32 --device cpu), or quant 'none'")
