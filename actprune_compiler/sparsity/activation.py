"""What nm_linear does to its input before the GEMM, shared by every implementation of the op."""

from __future__ import annotations

import torch
from torch import Tensor

from actprune_compiler.sparsity.corrections import CORRECTIONS, variance_rescale
from actprune_compiler.sparsity.criteria import CRITERIA
from actprune_compiler.sparsity.masks import Prune


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores are ranked in float32 (float64 for float64 inputs) by every implementation: the sort
    reference, Inductor's rank loop and the Triton prologue. Ranking bf16/fp16 scores instead would
    tie values that float32 tells apart, and implementations that round differently would disagree."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def criterion_scores(z: Tensor, criterion: str, score_scale: Tensor | None) -> Tensor:
    dtype = score_dtype(z.dtype)
    return CRITERIA[criterion].score(z.to(dtype), None if score_scale is None else score_scale.to(dtype))


def sparsify_activation(
    x: Tensor,
    n: int,
    m: int,
    criterion: str,
    correction: str,
    score_scale: Tensor | None,
    shift: Tensor | None,
    prune: Prune,
) -> Tensor:
    """The activation the GEMM sees: N of every M features of z = x - shift - eta kept, eta re-added.

    A static `shift` is not added back here: the pass folded W @ shift into the bias.
    """
    fix = CORRECTIONS[correction]
    z = x if shift is None else x - shift
    eta = fix.token_shift(z) if fix.token_shift else None
    if eta is not None:
        z = z - eta
    z_sparse = prune(z, criterion_scores(z, criterion, score_scale), n, m)
    if fix.variance:
        z_sparse = variance_rescale(z, z_sparse)
    return z_sparse if eta is None else z_sparse + eta
