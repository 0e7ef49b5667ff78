"""The N:M mask contract and its reference implementation; every other implementation must agree with it.

Along the last dimension, each group of `m` consecutive elements keeps the `n` with the highest
score. Ties go to the lower index. A NaN score counts as +inf (the element is kept, so a NaN in
the input shows up in the output as it would in the dense layer instead of vanishing). +-inf
inputs have |score| = inf and are kept the same way. The mask depends only on the scores,
which every criterion makes non-negative (magnitudes, possibly scaled).

The other implementations: the rank count Inductor fuses (ops/select.py), actprune's native CPU kernel
(kernels/cpu.py, prune_native) and the Triton prologue (kernels/triton_nm.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def grouped(scores: Tensor, m: int) -> Tensor:
    """[..., K] -> [..., K // m, m], NaN mapped to +inf."""
    k = scores.shape[-1]
    if k % m:
        raise ValueError(f"the last dimension ({k}) is not a multiple of the group size M={m}")
    scores = torch.where(scores != scores, torch.inf, scores)  # NaN; isnan() does not vectorise in Inductor
    return scores.unflatten(-1, (k // m, m))


def group_keep_sorted(scores: Tensor, n: int, m: int) -> Tensor:
    """Reference: a stable descending sort per group; the first n positions are kept. -> [..., G, m]"""
    groups = grouped(scores, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    return keep.scatter_(-1, order[..., :n], True)


def keep_mask_sorted(scores: Tensor, n: int, m: int) -> Tensor:
    """The flat [..., K] mask, reference implementation."""
    return group_keep_sorted(scores, n, m).flatten(-2)


# (values, scores, n, m) -> values with the pruned elements set to exactly 0.
Prune = Callable[[Tensor, Tensor, int, int], Tensor]


def prune_sorted(values: Tensor, scores: Tensor, n: int, m: int) -> Tensor:
    """Reference. where(), not values * keep: a pruned inf must become 0, not inf * 0 = NaN."""
    keep = keep_mask_sorted(scores, n, m)
    return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device))


def prune_topk(values: Tensor, scores: Tensor, n: int, m: int) -> Tensor:
    """For training (recovery/): topk per group, about 1.6x faster in eager than the stable sort on a
    512 x 1536 input. Exact score ties may be broken differently from the contract's lower-index rule,
    which only exactly equal floats could notice. The gradient reaches the kept values only."""
    groups = grouped(scores.detach(), m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, -1).indices, True)
    return torch.where(keep.flatten(-2), values, torch.zeros((), dtype=values.dtype, device=values.device))
