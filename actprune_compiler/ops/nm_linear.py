"""actprune::nm_linear: y = sparsify(x) @ W^T + b, one graph node per rewritten linear.

sparsify keeps, for each token, the n best of every m consecutive input features by `criterion`,
with `correction` around the mask (see activation.py). quant names the format the weight is quantised in
(sparsity/quant.py); the weight then holds its dequantised values, which the decode kernel quantises again,
exactly, and reads as codes. This file holds the op's contract: schema,
argument checks, the shape (fake) function and the reference kernel. Fast implementations live in
lowering/ and kernels/ and are tested against this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from actprune_compiler.sparsity.activation import sparsify_activation
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.quant import DENSE_FORMATS, QUANT_FORMATS, QuantFormat, quant_format, quantize_input


def check_quant_arg(weight: Tensor, quant: str) -> QuantFormat | None:
    if quant != "none":
        return quant_format(quant, *weight.shape)  # a known format whose groups fit the layer, or one sentence
    return None


def check_nm_linear_args(x: Tensor, weight: Tensor, n: int, m: int, criterion: str, correction: str,
                         quant: str = "none") -> None:
    k = weight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"nm_linear: input has {x.shape[-1]} features but the weight expects {k}")
    if not 0 < n < m or k % m:
        raise ValueError(f"nm_linear: pattern {n}:{m} does not fit {k} input features "
                         "(need 0 < N < M and M dividing the feature count)")
    if criterion not in CRITERIA:
        raise ValueError(f"nm_linear: criterion {criterion!r} is unknown; allowed: {', '.join(CRITERIA)}")
    if correction not in CORRECTIONS:
        raise ValueError(f"nm_linear: correction {correction!r} is unknown; allowed: {', '.join(CORRECTIONS)}")
    if quant in DENSE_FORMATS:
        raise ValueError(f"nm_linear: format {quant} is for layers left dense; a pruned layer's allowed: none, "
                         f"{', '.join(QUANT_FORMATS)}")
    check_quant_arg(weight, quant)


@torch.library.custom_op("actprune::nm_linear", mutates_args=())
def nm_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    n: int,
    m: int,
    criterion: str = "magnitude",
    correction: str = "none",
    score_scale: Tensor | None = None,
    shift: Tensor | None = None,
    quant: str = "none",
) -> Tensor:
    check_nm_linear_args(x, weight, n, m, criterion, correction, quant)
    x_sparse = sparsify_activation(x, n, m, criterion, correction, score_scale, shift, prune_sorted)
    return F.linear(x_sparse, weight, bias)


@nm_linear.register_fake
def _nm_linear_shape(x, weight, bias, n, m, criterion="magnitude", correction="none",
                     score_scale=None, shift=None, quant="none"):
    check_nm_linear_args(x, weight, n, m, criterion, correction, quant)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("actprune::quant_linear", mutates_args=())
def quant_linear(x: Tensor, weight: Tensor, bias: Tensor | None, quant: str) -> Tensor:
    """A linear layer left dense (lm_head, excluded layers) whose weight is quantised: weight holds its
    dequantised values, as for nm_linear; a format with an input block (int8a8) quantises x too."""
    f = check_quant_arg(weight, quant)
    if f is not None and f.input_block:
        x = quantize_input(x, f.input_block)
    return F.linear(x, weight, bias)


@quant_linear.register_fake
def _quant_linear_shape(x, weight, bias, quant):
    check_quant_arg(weight, quant)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
