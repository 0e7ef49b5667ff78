"""What nm_linear does to its input before the GEMM, shared by every implementation of the op."""

from __future__ import annotations

from torch import Tensor

from actprune_compiler.corrections import CORRECTIONS, variance_rescale
from actprune_compiler.criteria import CRITERIA
from actprune_compiler.masks import Prune


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
    z_sparse = prune(z, CRITERIA[criterion].score(z, score_scale), n, m)
    if fix.variance:
        z_sparse = variance_rescale(z, z_sparse)
    return z_sparse if eta is None else z_sparse + eta
