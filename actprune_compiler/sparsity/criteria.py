"""Selection criteria: how each element is scored before the top-N-of-M choice.

Activation criteria score a token's input features. Every static one is |z| times a per-feature
vector (`score_scale`) fixed before run time, so the graph holds it as a constant and a token's
mask never depends on other tokens. Weight criteria score weight elements once, at compile time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from actprune_compiler.sparsity.stats import LayerStats


@dataclass(frozen=True)
class Criterion:
    name: str
    summary: str
    # (z, score_scale) -> scores of z's shape; score_scale is None unless `static_scale` is set.
    score: Callable[[Tensor, Tensor | None], Tensor]
    # (weight, calibration stats) -> per-input-feature scale, built once per layer.
    static_scale: Callable[[Tensor, LayerStats | None], Tensor] | None = None
    needs_calibration: bool = False
    # A token's mask depends on the other tokens of the call.
    batch_dependent: bool = False
    # The score is |z| times a static per-feature scale (score_scale, or none): the only score the fused GPU
    # kernel computes, in its GEMM's prologue (kernels/triton_nm.py). A criterion that does not declare it
    # goes through the decomposed ops on every device.
    fused_gpu: bool = False

    def __post_init__(self) -> None:
        if self.fused_gpu and self.batch_dependent:
            raise ValueError(f"criterion {self.name!r} is batch-dependent, so its score is not |z| times a static "
                             "scale: it cannot declare fused_gpu")


def _magnitude(z: Tensor, scale: Tensor | None) -> Tensor:
    return z.abs() if scale is None else z.abs() * scale


def _clact_per_batch(z: Tensor, scale: Tensor | None) -> Tensor:
    # |z_ij| * ||Z_:,j|| / ||Z_i,:||. The row norm is one positive number per token, so it cannot
    # change which features of that token win; it is left out. The column norm runs over every
    # token of the call (padding included): that is what makes this form batch-dependent.
    column_norm = z.reshape(-1, z.shape[-1]).norm(dim=0)
    return _magnitude(z, scale) * column_norm


def calibrated_column_norm(weight: Tensor, stats: LayerStats | None) -> Tensor:
    """CLACT's ||X_:,j||, measured once on calibration tokens (RMS, so it does not grow with them)."""
    if stats is None:
        raise ValueError("criterion 'clact_static' needs calibration statistics")
    return stats.rms()


def amber_column_score(weight: Tensor, stats: LayerStats | None = None) -> Tensor:
    """||W^_:,j|| / min_k ||W^_:,k||, W^ = W clipped to its 0.5%/99.5% quantiles, then standardised."""
    w = weight.float()
    sample = w.flatten()
    if sample.numel() > 1 << 24:  # torch.quantile's limit; a strided sample estimates it well
        sample = sample[:: sample.numel() // (1 << 23) + 1]
    low, high = torch.quantile(sample, torch.tensor([0.005, 0.995], device=w.device))
    clipped = w.clamp(low, high)
    standardised = (clipped - clipped.mean()) / clipped.std()
    norms = standardised.norm(dim=0)
    return norms / norms.min().clamp_min(torch.finfo(norms.dtype).tiny)


def weight_column_norm(weight: Tensor, stats: LayerStats | None = None) -> Tensor:
    return weight.float().norm(dim=0)


def weight_column_variance(weight: Tensor, stats: LayerStats | None = None) -> Tensor:
    return weight.float().var(dim=0)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("magnitude", "|x_j|", _magnitude, fused_gpu=True),
        Criterion("clact", "|x_ij| * ||X_:,j|| / ||X_i,:||, column norm over the tokens of the batch",
                  _clact_per_batch, batch_dependent=True),
        Criterion("clact_static", "|x_ij| * calibrated ||X_:,j|| (independent of other tokens)",
                  _magnitude, calibrated_column_norm, needs_calibration=True, fused_gpu=True),
        Criterion("amber", "|x_j| * standardised, outlier-clipped ||W_:,j|| / min_k ||W_:,k||",
                  _magnitude, amber_column_score, fused_gpu=True),
        Criterion("wina", "|x_j| * ||W_:,j||_2", _magnitude, weight_column_norm, fused_gpu=True),
        Criterion("var_weight", "|x_j| * Var(W_:,j)", _magnitude, weight_column_variance, fused_gpu=True),
    )
}


def _weight_magnitude(weight: Tensor, stats: LayerStats | None) -> Tensor:
    return weight.abs()


def _wanda(weight: Tensor, stats: LayerStats | None) -> Tensor:
    if stats is None:
        raise ValueError("weight criterion 'wanda' needs calibration statistics")
    return weight.abs() * stats.rms().to(weight.dtype)  # |W_ij| * ||X_j||; RMS ranks like the norm


@dataclass(frozen=True)
class WeightCriterion:
    name: str
    summary: str
    score: Callable[[Tensor, LayerStats | None], Tensor]
    needs_calibration: bool = False


WEIGHT_CRITERIA: dict[str, WeightCriterion] = {
    c.name: c
    for c in (
        WeightCriterion("magnitude", "|W_ij|", _weight_magnitude),
        WeightCriterion("wanda", "|W_ij| * ||X_:,j||_2 (calibrated)", _wanda, needs_calibration=True),
    )
}


def criteria_for(target: str) -> tuple[str, ...]:
    return tuple(CRITERIA if target == "activation" else WEIGHT_CRITERIA)
