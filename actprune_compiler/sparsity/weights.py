"""Weight pruning, the baseline: each output row keeps N of every M consecutive input weights."""

from __future__ import annotations

import torch

from actprune_compiler.sparsity.activation import score_dtype
from actprune_compiler.sparsity.criteria import WEIGHT_CRITERIA
from actprune_compiler.sparsity.masks import keep_mask_sorted
from actprune_compiler.sparsity.stats import LayerStats


@torch.no_grad()
def prune_weight(weight: torch.Tensor, n: int, m: int, criterion: str, stats: LayerStats | None) -> torch.Tensor:
    """The pruned weight; scores are ranked in float32 (float64 for float64 weights), as activations are."""
    weight = weight.detach()
    keep = keep_mask_sorted(WEIGHT_CRITERIA[criterion].score(weight.to(score_dtype(weight.dtype)), stats), n, m)
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype))
