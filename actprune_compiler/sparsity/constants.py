"""The static tensors of one rewritten layer: what its criterion and correction fix before run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from actprune_compiler.sparsity.activation import score_dtype
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA
from actprune_compiler.sparsity.stats import LayerStats

if TYPE_CHECKING:
    from actprune_compiler.recovery.sparse_linear import LearnedLayer


@dataclass
class LayerConstants:
    """The static tensors one rewritten layer needs; None where the method needs none."""

    score_scale: Tensor | None = None
    shift: Tensor | None = None
    bias: Tensor | None = None  # the new bias, when a correction or a recovery method folds something into it
    weight: Tensor | None = None  # the new weight, when a recovery method learned one (recovery/methods.py)

    def to(self, device: torch.device) -> LayerConstants:
        """Every constant on `device` (the weight's): statistics may come from another device, and a
        graph constant on the wrong device fails only when the compiled program first runs."""
        moved = {name: None if t is None else t.to(device) for name, t in vars(self).items()}
        return LayerConstants(**moved)

    def summary(self) -> dict[str, dict[str, float | list[int]]]:
        out = {}
        for name in ("score_scale", "shift", "bias", "weight"):
            t = getattr(self, name)
            if t is not None:
                t = t.float()
                out[name] = {"shape": list(t.shape), "mean": float(t.mean()), "min": float(t.min()),
                             "max": float(t.max())}
        return out


@torch.no_grad()  # constants are computed from parameters once; they must not carry autograd state
def layer_constants(config: SparsityConfig, weight: Tensor, bias: Tensor | None,
                    stats: LayerStats | None, learned: LearnedLayer | None = None) -> LayerConstants:
    """Everything the criterion, correction and recovery method fix before run time, for one layer.

    `learned` (recovery): its bias already holds whatever the correction folded, since training ran
    with the correction's constants; it replaces the corrected bias, and its weight the layer's."""
    criterion, fix = CRITERIA[config.criterion], CORRECTIONS[config.correction]
    if (criterion.needs_calibration or fix.needs_calibration) and stats is None:
        raise ValueError(f"criterion {config.criterion!r} with correction {config.correction!r} needs "
                         "calibration statistics; run calibrate() first (the CLI does it for you)")
    out = LayerConstants()
    scale = criterion.static_scale(weight, stats) if criterion.static_scale else None
    if fix.smooth_scale:
        inverse = 1.0 / fix.smooth_scale(weight, stats)
        scale = inverse if scale is None else scale * inverse
    out.score_scale = None if scale is None else scale.to(score_dtype(weight.dtype))
    new_bias = None
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # what the folds accumulate in
    if fix.static_shift:
        out.shift = fix.static_shift(stats).to(weight.dtype)
        new_bias = weight.to(acc) @ out.shift.to(acc)
    if fix.calibrated_bias:
        new_bias = weight.to(acc) @ stats.pruning_error_mean().to(acc)
    if new_bias is not None:
        out.bias = (new_bias if bias is None else bias.to(acc) + new_bias).to(weight.dtype)
    if learned is not None:
        out.bias, out.weight = learned.bias.to(weight.dtype), learned.weight
    return out.to(weight.device)
