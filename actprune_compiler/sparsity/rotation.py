"""A per-input orthogonal rotation before the activation mask (docs/methods.md, "Rotation").

    y = W x + b = (W Q) (Qᵀ x) + b

With Q orthogonal the layer is unchanged until the mask acts on z = Qᵀ x. Q's columns are the
principal directions of the layer's calibration inputs (eigenvectors of E[x xᵀ], not centred: the
mask sees the mean too), so a few coordinates of z carry most of a token's energy, and the mask's
error, the energy of the coordinates it drops, shrinks. The directions are interleaved across the
groups of M: group g holds the directions of rank g, g + G, g + 2G, ... (G = K / M groups), so every
group holds leading and trailing directions and keeps its leading ones; placed in rank order
("pca_contiguous", the ablation), the first group would hold only leading directions and drop half.

W Q is folded into the layer's weight constant; x @ Q is extra dense work at run time, K² multiply-adds
per token for each distinct input (q/k/v share theirs, and so do gate/up).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# name -> whether the principal directions are interleaved across groups
ROTATIONS: dict[str, bool | None] = {"none": None, "pca": True, "pca_contiguous": False}


def interleaved_positions(width: int, m: int) -> Tensor:
    """Where the direction of rank r (0: the largest eigenvalue) goes: group r % G, slot r // G."""
    groups = width // m
    rank = torch.arange(width)
    return (rank % groups) * m + rank // groups


@torch.no_grad()
def rotation_matrix(second_moment: Tensor, m: int, interleave: bool) -> Tensor:
    """Q [K, K] from E[x xᵀ] [K, K]: its eigenvectors by descending eigenvalue, placed as described above."""
    _, vectors = torch.linalg.eigh(second_moment.double())  # ascending eigenvalues; columns are the directions
    by_rank = vectors.flip(-1)
    if not interleave:
        return by_rank
    placed = torch.empty_like(by_rank)
    placed[:, interleaved_positions(by_rank.shape[0], m)] = by_rank
    return placed


def rotation_cost(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """What the rotations cost at run time, from the pass's layer rows: x @ Q multiply-adds per token
    against those of the rotated layers' GEMMs (counted dense), and the values of the Q constants."""
    rotated = [row for row in layers if "rotation_macs_per_token" in row]
    macs = sum(row["rotation_macs_per_token"] for row in rotated)
    gemm = sum(row["in_features"] * row["out_features"] for row in rotated)
    return {"rotations": sum(1 for row in rotated if row["rotation_macs_per_token"]), "rotated_layers": len(rotated),
            "macs_per_token": macs, "gemm_macs_per_token": gemm,
            "extra_flops_fraction": round(macs / gemm, 4) if gemm else 0.0, "constant_values": macs}
