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
- int4k32: the same codes, but each scale and minimum covers 32 consecutive *inputs* of one output
  (32 rows of W^T), as GGUF's Q4 blocks do. A weight that came from a Q4_1 file (min-max blocks of 32,
  as here) is then represented exactly; one from Q4_0 or Q4_K blocks keeps the file's groups, though
  not always its grid; grouping along the outputs would quantise either a second time. A token reads
  its kept rows' codes and, for each block of 32 rows with a kept row, the block's N scales and
  minimums: at 8:16, 4 * 8/16 + 1 bits per weight, against 5 * 8/16 for int4g32.

Layers left dense (lm_head, excluded or sensitive layers) read every row, so the skip does not help them,
and they take format int8a8 whatever the model's format (int8 where their in_features is not a multiple of
32): int8's weights, and each token's input quantised to int8 in blocks of 32 features at run time, as
llama.cpp quantises activations (Q8_0: scale max|x| / 127 per block). Both in int8, the decode step's
dot products run on AVX-512 VNNI (kernels/int8_gemv.cpp): a vocabulary-sized lm_head is the largest
weight a quantised token reads (on qwen2.5-coder-0.5b, half of an 8:16 int4k32 token's bytes), and the
int8 rows kernel, converting each code to float, took 1.7-1.8x the time (scripts/bench_lm_head.py). The
prefill quantises its input the same way (quantize_input), so perplexity measures what decoding computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DENSE_FORMAT = "int8a8"  # layers left dense under any format (lm_head): see passes/quantize_weights.py
INPUT_BLOCK = 32  # input features per activation scale under int8a8 (kernels/int8_gemv.cpp's kBlock)


def layer_format(quant: str, pruned: bool, in_features: int) -> str:
    """The format a layer's weight takes under `quant`: its own when pruned; when left dense, DENSE_FORMAT,
    or int8 if the input does not split into blocks of INPUT_BLOCK."""
    if pruned or quant == "none":
        return quant
    return DENSE_FORMAT if in_features % INPUT_BLOCK == 0 else "int8"


@dataclass(frozen=True)
class QuantFormat:
    bits: int
    group: int | None  # weights sharing an int4 scale and minimum; None: one scale per output channel (int8)
    along_inputs: bool = False  # the group runs along the inputs (rows of W^T), not within a row
    input_block: int | None = None  # the input is quantised to int8 in blocks of this many features

    @property
    def code_lanes(self) -> int:
        """Outputs whose codes are interleaved in one run of bytes: out_features must be a multiple."""
        return 32 if self.along_inputs else self.group or 1


QUANT_FORMATS: dict[str, QuantFormat] = {
    "int8": QuantFormat(8, None),
    "int4": QuantFormat(4, 64),
    "int4g32": QuantFormat(4, 32),
    "int4k32": QuantFormat(4, 32, along_inputs=True),
}
# Formats of layers left dense only (layer_format): their kernel reads every row.
DENSE_FORMATS: dict[str, QuantFormat] = {DENSE_FORMAT: QuantFormat(8, None, input_block=INPUT_BLOCK)}


@dataclass
class Quantized:
    """A weight [N, K] quantised as rows of W^T: codes [K, N] (row k: input feature k); int8: scale [N]
    float32 and no min; int4: scale and min [K, N / G] float16; int4k32: scale and min [K / 32, N]."""

    codes: Tensor
    scale: Tensor
    min: Tensor | None


def quant_format(fmt: str, out_features: int, in_features: int) -> QuantFormat:
    """The format named fmt, checked against the layer's shape (int4 needs whole groups)."""
    f = QUANT_FORMATS.get(fmt) or DENSE_FORMATS.get(fmt)
    if f is None:
        raise ValueError(f"unknown quantisation format {fmt!r}; allowed: {', '.join(QUANT_FORMATS)}")
    if f.input_block and in_features % f.input_block:
        raise ValueError(f"format {fmt} quantises the input in blocks of {f.input_block} features, so in_features "
                         f"must be a multiple of {f.input_block}, but the layer has {in_features}; allowed: int8")
    if out_features % f.code_lanes:
        why = (f"packs the codes of {f.code_lanes} outputs together" if f.along_inputs
               else f"quantises groups of {f.group} outputs")
        raise ValueError(f"format {fmt} {why}, so out_features must be a multiple of {f.code_lanes}, but the "
                         f"layer has {out_features}; allowed: int4 for multiples of 64, int4g32 and int4k32 for "
                         "multiples of 32, int8 for any")
    if f.along_inputs and in_features % f.group:
        raise ValueError(f"format {fmt} quantises groups of {f.group} inputs, so in_features must be a multiple "
                         f"of {f.group}, but the layer has {in_features}; allowed: int4, int4g32 or int8")
    return f


def bits_per_weight(fmt: str, out_features: int, in_features: int) -> float:
    """Stored bits per weight, scales and minimums included."""
    f = quant_format(fmt, out_features, in_features)
    if f.group is None:
        return f.bits + 32 / in_features  # one float32 scale per output channel
    return f.bits + 32 / f.group  # a float16 scale and minimum per group


def bits_read_per_weight(fmt: str, out_features: int, in_features: int, kept: float) -> float:
    """Bits a token reads per weight of the layer when it keeps a fraction `kept` of the inputs (spread over
    the layer, as an N:M pattern with M <= 32 spreads them): the kept rows' codes with their scales; int8's
    per-channel scales whatever is kept; for a format grouped along the inputs, every block's scales (such a
    token keeps a row in each block of 32)."""
    f = quant_format(fmt, out_features, in_features)
    if f.group is None:
        return f.bits * kept + 32 / in_features
    if f.along_inputs:
        return f.bits * kept + 32 / f.group
    return bits_per_weight(fmt, out_features, in_features) * kept


def int8_scale(amax: Tensor) -> Tensor:
    """max|w| / 127 rounded to 17 significant bits (1 for a zero channel): s * q is then exact in float32."""
    bits = (amax / 127).view(torch.int32)
    scale = ((bits + 32) & ~63).view(torch.float32)
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def quantize(weight: Tensor, fmt: str) -> Quantized:
    """The reference quantiser: weight [N, K] -> codes of the rows of W^T, with their scales."""
    n, k = weight.shape
    f = quant_format(fmt, n, k)
    w = weight.detach().float()
    if f.group is None:
        scale = int8_scale(w.abs().amax(dim=1))
        codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return Quantized(codes.t().contiguous(), scale, None)
    if f.along_inputs:  # [K / G, N, G]: a group is G consecutive inputs of one output
        groups = w.reshape(n, k // f.group, f.group).transpose(0, 1)
    else:  # [K, N / G, G]: a group is G consecutive outputs of one row of W^T
        groups = w.t().reshape(k, n // f.group, f.group)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    min16, scale16 = lo.half(), ((hi - lo) / 15).half()
    scale, low = scale16.float()[..., None], min16.float()[..., None]
    q = torch.round((groups - low) / scale).clamp(0, 15)
    codes = torch.where(scale > 0, q, torch.zeros_like(q)).to(torch.uint8)  # a constant group: all codes 0
    codes = codes.permute(0, 2, 1).reshape(k, n) if f.along_inputs else codes.reshape(k, n)
    return Quantized(codes, scale16, min16)


def quantize_input(x: Tensor, block: int = INPUT_BLOCK) -> Tensor:
    """x [..., K] as format int8a8 multiplies it: each token's blocks of `block` features in int8, scale
    max|x| / 127 (a zero block stays zero), codes round(x / scale) clamped to [-127, 127] (a subnormal scale
    rounds, and x / scale can pass 127). A block holding NaN or inf becomes NaN: its scale is not finite."""
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    scale = groups.abs().amax(dim=-1, keepdim=True) / 127
    codes = torch.where(scale > 0, torch.round(groups / scale).clamp(-127, 127), torch.zeros_like(groups))
    return (codes * scale).reshape(x.shape)


def per_weight(params: Tensor, rows: int, cols: int) -> Tensor:
    """Per-group scales or minimums [K / a, N / b], each repeated over its group: [K, N] float32."""
    return params.float().repeat_interleave(rows // params.shape[0], dim=0).repeat_interleave(
        cols // params.shape[1], dim=1)


def dequantized_rows(quantized: Quantized) -> Tensor:
    """The float32 values [K, N] that the codes stand for."""
    q = quantized.codes.float()
    if quantized.min is None:
        return quantized.scale * q
    return per_weight(quantized.scale, *q.shape) * q + per_weight(quantized.min, *q.shape)


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
