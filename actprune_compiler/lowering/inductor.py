"""nm_linear as plain ATen ops that Inductor fuses: the mask costs one pass over the activations.

The reference kernel ranks with a sort and scatters; here an element's rank is a count of
comparisons within its group, which Inductor turns into one fused loop feeding the GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from actprune_compiler.activation import sparsify_activation
from actprune_compiler.masks import keep_mask_by_rank, keep_mask_sorted

# Pairwise ranking costs m comparisons per element: right for N:M groups, wrong for unstructured
# top-k over a whole row (m = in_features), where a sort is cheaper.
MAX_PAIRWISE_GROUP = 64


def nm_linear_decomposed(x: Tensor, weight: Tensor, bias: Tensor | None, n: int, m: int,
                         criterion: str = "magnitude", correction: str = "none",
                         score_scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    keep_mask = keep_mask_by_rank if m <= MAX_PAIRWISE_GROUP else keep_mask_sorted
    x_sparse = sparsify_activation(x, n, m, criterion, correction, score_scale, shift, keep_mask)
    return F.linear(x_sparse, weight, bias)


def inductor_decompositions() -> dict:
    """Inductor's own table plus nm_linear's expansion."""
    from torch._inductor.decomposition import select_decomp_table

    return {**select_decomp_table(), torch.ops.actprune.nm_linear.default: nm_linear_decomposed}
