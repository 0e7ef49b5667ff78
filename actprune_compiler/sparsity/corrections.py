"""Error mitigation around the activation mask; each composes with any criterion.

A correction acts at run time (per-token shift, variance rescale) and/or at compile time through
constants the pass puts in the graph (a static shift folded into the bias, a SmoothQuant-like
scale, a calibrated output bias). The run-time parts are used by every nm_linear implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from actprune_compiler.sparsity.stats import LayerStats


@dataclass(frozen=True)
class Correction:
    name: str
    summary: str
    # Run time: a per-token eta (..., 1) subtracted before the mask and added back after it.
    token_shift: Callable[[Tensor], Tensor] | None = None
    # Run time: rescale each token's kept values so its variance matches the dense token's.
    variance: bool = False
    # Compile time: a per-feature eta subtracted before the mask; W @ eta is folded into the bias.
    static_shift: Callable[[LayerStats], Tensor] | None = None
    # Compile time: s in "prune x / s, multiply W's columns by s" (what reaches the GEMM is unchanged,
    # so it acts as a score scale of 1 / s).
    smooth_scale: Callable[[Tensor, LayerStats], Tensor] | None = None
    # Compile time: add W @ E[x - x_sparse] over calibration tokens to the bias.
    calibrated_bias: bool = False

    @property
    def needs_calibration(self) -> bool:
        return bool(self.static_shift or self.smooth_scale or self.calibrated_bias)


def _token_mean(z: Tensor) -> Tensor:
    return z.mean(-1, keepdim=True)


def _token_median(z: Tensor) -> Tensor:
    return z.median(-1, keepdim=True).values  # the lower median for an even feature count


def smoothquant_scale(weight: Tensor, stats: LayerStats) -> Tensor:
    """s_j = sqrt(max|x_j| / max|W_:,j|), floored so that dead channels do not divide by zero."""
    tiny = 1e-5
    x_max = stats.absmax.float().clamp_min(tiny)
    w_max = weight.detach().abs().amax(0).float().clamp_min(tiny)
    return (x_max / w_max).sqrt()


CORRECTIONS: dict[str, Correction] = {
    c.name: c
    for c in (
        Correction("none", "plain mask"),
        Correction("variance", "x_sp * sqrt(Var(x) / Var(x_sp)) per token", variance=True),
        Correction("shift_mean", "prune x - mean(x) per token, add the mean back", token_shift=_token_mean),
        Correction("shift_median", "prune x - median(x) per token, add it back", token_shift=_token_median),
        Correction("shift_static", "prune x - eta (calibrated channel mean), W @ eta folded into the bias",
                   static_shift=LayerStats.mean),
        Correction("scaling", "SmoothQuant-like: prune x / s, W columns * s (s calibrated)",
                   smooth_scale=smoothquant_scale),
        Correction("bias", "calibrated per-output bias W @ E[x - x_sp]", calibrated_bias=True),
    )
}


def variance_rescale(z: Tensor, z_sparse: Tensor) -> Tensor:
    dense_var = z.float().var(-1, unbiased=False, keepdim=True)
    sparse_var = z_sparse.float().var(-1, unbiased=False, keepdim=True)
    factor = torch.where(sparse_var > 0, (dense_var / sparse_var).sqrt(), torch.ones_like(sparse_var))
    return z_sparse * factor.to(z_sparse.dtype)
