"""A per-input orthogonal rotation before the activation mask (the methods issue, method 3).

    y = W x + b = (W Q) (Qᵀ x) + b

With Q orthogonal the layer is unchanged until the mask acts on z = Qᵀ x. Q's columns are the
principal directions of the layer's calibration inputs (eigenvectors of E[x xᵀ], not centred: the
mask sees the mean too), so a few coordinates of z carry most of a token's energy, and the mask's
error, the energy of the coordinates it drops, shrinks. The directions are interleaved across the
groups of M: group g holds the directions of rank g, g + G, g + 2G, ... (G groups per block), so
every group holds leading and trailing directions and keeps its leading ones; placed in rank order,
the first group would hold only leading directions and have to drop half of them.

W Q is folded into the layer's weight constant; Qᵀ x is extra dense work at run time (x @ Q, one per
distinct input: q/k/v, and gate/up, share theirs). `rotation_block` B makes Q block-diagonal over
consecutive blocks of B features: K·B multiply-adds per token instead of K².
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# name -> whether the principal directions are interleaved across groups ("pca_contiguous": the ablation)
ROTATIONS: dict[str, bool | None] = {"none": None, "pca": True, "pca_contiguous": False}


def block_width(block: int, in_features: int, m: int, layer: str) -> int:
    """The rotation's block width for one layer (0: its whole input), checked against K and M."""
    width = block or in_features
    if in_features % width or width % m:
        raise ValueError(f"rotation_block={block} does not fit {layer}: a block must divide its {in_features} "
                         f"input features and be a multiple of M={m}; use 0 (the whole input) or such a width")
    return width


def interleaved_positions(width: int, m: int) -> Tensor:
    """Where the direction of rank r (0: the largest eigenvalue) goes: group r % G, slot r // G."""
    groups = width // m
    rank = torch.arange(width)
    return (rank % groups) * m + rank // groups


@torch.no_grad()
def rotation_matrix(gram: Tensor, m: int, interleave: bool) -> Tensor:
    """Q [K, K], block-diagonal, from the per-block second moments gram [K / B, B, B] (float64 sums)."""
    blocks = []
    for block in gram.double():
        _, vectors = torch.linalg.eigh(block)  # ascending eigenvalues; columns are the directions
        by_rank = vectors.flip(-1)
        if interleave:
            placed = torch.empty_like(by_rank)
            placed[:, interleaved_positions(block.shape[0], m)] = by_rank
            by_rank = placed
        blocks.append(by_rank)
    return torch.block_diag(*blocks)


def rotation_macs(in_features: int, width: int) -> int:
    """Multiply-adds per token of x @ Q for a block-diagonal Q of blocks `width` wide."""
    return in_features * width


def rotation_cost(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """What the rotations cost at run time, from the pass's layer rows: x @ Q multiply-adds per token
    against those of the pruned layers' GEMMs (counted dense), and the Q constants' values."""
    rotated = [row for row in layers if "rotation" in row.get("constants", {})]
    macs = sum(row["constants"]["rotation_macs_per_token"] for row in rotated)
    gemm = sum(row["in_features"] * row["out_features"] for row in rotated)
    stored = [row for row in rotated if row["constants"]["rotation_macs_per_token"]]  # one Q per distinct input
    return {"rotations": len(stored), "rotated_layers": len(rotated), "macs_per_token": macs,
            "gemm_macs_per_token": gemm, "extra_flops_fraction": round(macs / gemm, 4) if gemm else 0.0,
            "constant_values": sum(row["in_features"] ** 2 for row in stored)}
