"""The static tensors of one rewritten layer: what its criterion and correction fix before run time, and
what a recovery method learned for it (LearnedLayer, trained in recovery/)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actprune_compiler.sparsity.activation import score_dtype
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA
from actprune_compiler.sparsity.rotation import ROTATIONS, rotation_matrix
from actprune_compiler.sparsity.stats import LayerStats


@dataclass
class LearnedLayer:
    """What one layer's graph receives: a new weight (None: unchanged) and a new bias."""

    bias: Tensor
    weight: Tensor | None = None

    @torch.no_grad()
    def summary(self, original_weight: Tensor) -> dict[str, float]:
        out = {"bias_abs_mean": float(self.bias.float().abs().mean())}
        if self.weight is not None:
            change = (self.weight.float() - original_weight.float()).norm() / original_weight.float().norm()
            out["weight_relative_change"] = float(change)
        return out

    def is_finite(self) -> bool:
        return bool(self.bias.isfinite().all()) and (self.weight is None or bool(self.weight.isfinite().all()))


@dataclass
class LayerConstants:
    """The static tensors one rewritten layer needs; None where the method needs none."""

    score_scale: Tensor | None = None
    shift: Tensor | None = None
    bias: Tensor | None = None  # the new bias, when a correction or a recovery method folds something into it
    weight: Tensor | None = None  # the new weight: a recovery method's, or W Q (rotation)
    rotation: Tensor | None = None  # Q: the layer's input is masked as x @ Q (sparsity/rotation.py)
    rotation_macs: int = 0  # run-time multiply-adds per token of x @ Q; 0 where another layer's x @ Q is reused

    def to(self, device: torch.device) -> LayerConstants:
        """Every constant on `device` (the weight's): statistics may come from another device, and a
        graph constant on the wrong device fails only when the compiled program first runs."""
        moved = {name: t.to(device) if isinstance(t, Tensor) else t for name, t in vars(self).items()}
        return LayerConstants(**moved)

    def summary(self) -> dict[str, dict[str, float | list[int]]]:
        out = {}
        for name in ("score_scale", "shift", "bias", "weight", "rotation"):
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
    if config.needs_statistics() and stats is None:
        raise ValueError(f"config {config.label!r} needs calibration statistics; run calibrate() first "
                         "(the CLI does it for you)")
    out = LayerConstants()
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # what the folds accumulate in
    if ROTATIONS[config.rotation] is not None:  # every constant below belongs to the rotated layer W Q
        m = config.parsed_pattern.group(weight.shape[1])[1]
        q = rotation_matrix(stats.second_moment(), m, ROTATIONS[config.rotation]).to(weight.device)
        out.rotation = q.to(weight.dtype)
        out.weight = weight = (weight.to(acc) @ q.to(acc)).to(weight.dtype)
    scale = criterion.static_scale(weight, stats) if criterion.static_scale else None
    if fix.smooth_scale:
        inverse = 1.0 / fix.smooth_scale(weight, stats)
        scale = inverse if scale is None else scale * inverse
    out.score_scale = None if scale is None else scale.to(score_dtype(weight.dtype))
    new_bias = None
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
