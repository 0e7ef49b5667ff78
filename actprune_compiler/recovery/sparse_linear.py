"""The eager, differentiable form of one rewritten layer and the values a recovery method learns for it.

Its forward is what the graph will compute: the config's mask on the same constants (by topk), then
one linear with the folded weight and bias W' = (1 + s) W, b' = (1 + s)(W a + b) + t, built from
the learned a, s, t (and W) at every call, so training optimises exactly what is deployed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actprune_compiler.sparsity.activation import score_dtype, sparsify_activation
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LayerConstants, LearnedLayer
from actprune_compiler.sparsity.masks import prune_topk
from actprune_compiler.sparsity.recovery_methods import RecoveryMethod


class SparseLinear(nn.Module):
    def __init__(self, linear: nn.Linear, config: SparsityConfig, consts: LayerConstants, bias: Tensor | None,
                 initial_offset: Tensor, method: RecoveryMethod) -> None:
        """bias: what the graph's layer starts from (the corrected bias, the layer's own, or None)."""
        super().__init__()
        self.n, self.m = config.parsed_pattern.group(linear.in_features)
        self.criterion, self.correction = config.criterion, config.correction
        self.score_scale, self.shift = consts.score_scale, consts.shift
        self.dtype, device = linear.weight.dtype, linear.weight.device
        # The learned values live in float32 (float64 for float64 models): an Adam step of 1e-5 on a
        # bf16 value rounds away. A frozen weight stays as it is and is read in that precision.
        self.master = master = score_dtype(self.dtype)
        weight = linear.weight.detach()
        self.weight = nn.Parameter(weight.to(master) if method.weights else weight, requires_grad=method.weights)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.offset = nn.Parameter(initial_offset.to(device, master).clone(), requires_grad=method.offset)
        zeros = torch.zeros(linear.out_features, dtype=master, device=device)
        self.scale = nn.Parameter(zeros.clone(), requires_grad=method.affine)
        self.out_shift = nn.Parameter(zeros.clone(), requires_grad=method.affine)

    def folded(self) -> tuple[Tensor, Tensor]:
        """(W', b') in the master dtype, differentiable in every learned value."""
        w = self.weight.to(self.master)
        bias = w @ self.offset + (0 if self.bias is None else self.bias.to(self.master))
        gain = 1 + self.scale
        return gain[:, None] * w, gain * bias + self.out_shift

    def forward(self, x: Tensor) -> Tensor:
        sparse = sparsify_activation(x, self.n, self.m, self.criterion, self.correction, self.score_scale,
                                     self.shift, prune_topk)
        weight, bias = self.folded()
        return nn.functional.linear(sparse, weight.to(x.dtype), bias.to(x.dtype))

    @torch.no_grad()
    def fold(self) -> LearnedLayer:
        weight, bias = self.folded()
        changed = self.weight.requires_grad or bool(self.scale.any())
        return LearnedLayer(bias.to(self.dtype), weight.to(self.dtype) if changed else None)


def swap_in(model: nn.Module, layers: dict[str, nn.Linear], make) -> dict[str, SparseLinear]:
    """Replace each named linear of `model` by make(name, linear); return the new modules by name."""
    made = {}
    for name, linear in layers.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        made[name] = make(name, linear)
        setattr(parent, leaf, made[name])
    return made
