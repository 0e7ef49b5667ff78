"""actprune::nm_select: values with all but the top-n-scored of each group set to 0.

nm_linear's Inductor lowering expands into ATen ops around this one op, which Inductor turns
into a single Pointwise loop (lowering/inductor.py; on CPU the lowering calls the same rule's native
kernel, actprune::nm_select_cpu, instead). It returns the pruned values rather than a
mask: a separate bool mask would not fuse with its consumer and would be stored to memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from actprune_compiler.sparsity.masks import grouped


def group_ranks(groups: Tensor) -> Tensor:
    """How many members of its group beat each element; ties go to the lower index."""
    m = groups.shape[-1]
    position = torch.arange(m, device=groups.device)
    rank = torch.zeros(groups.shape, dtype=torch.int32, device=groups.device)
    for k in range(m):
        member = groups[..., k : k + 1]
        rank += ((member > groups) | ((member == groups) & (k < position))).to(torch.int32)
    return rank


@torch.library.custom_op("actprune::nm_select", mutates_args=())
def nm_select(groups: Tensor, values: Tensor, n: int) -> Tensor:
    """groups: [..., m] scores (NaN already +inf); values: same shape. Keep n values per group."""
    return torch.where(group_ranks(groups) < n, values, torch.zeros((), dtype=values.dtype))


@nm_select.register_fake
def _nm_select_shape(groups, values, n):
    return torch.empty_like(values)


def keep_mask_by_rank(scores: Tensor, n: int, m: int) -> Tensor:
    """The flat [..., K] mask of sparsity/masks.py's contract, from the rank count that Inductor fuses."""
    return (group_ranks(grouped(scores, m)) < n).flatten(-2)


def select_groups(select: Callable, values: Tensor, scores: Tensor, n: int, m: int) -> Tensor:
    """Apply a `select(groups, values, n)` kernel (nm_select's signature) to flat [..., K] values and scores."""
    groups = grouped(scores, m)
    return select(groups, values.unflatten(-1, groups.shape[-2:]), n).flatten(-2)


def prune_by_rank(values: Tensor, scores: Tensor, n: int, m: int) -> Tensor:
    """A Prune (sparsity/masks.py) that Inductor fuses: actprune::nm_select, which it lowers to one
    vectorised loop (m broadcast comparisons per element, the select in the same loop) instead of the
    seed's topk + scatter."""
    return select_groups(torch.ops.actprune.nm_select, values, scores, n, m)
