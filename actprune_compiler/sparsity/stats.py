"""Per-layer input statistics gathered on calibration data (see calibration/statistics.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerStats:
    """Running sums over every calibration token that reached one linear layer's input."""

    in_features: int
    count: int = 0
    total: Tensor = field(init=False)
    total_sq: Tensor = field(init=False)
    absmax: Tensor = field(init=False)
    error_total: Tensor | None = None  # sum of x - x_sparse, for the calibrated-bias correction
    error_count: int = 0
    # also sum x xᵀ (a rotation's principal directions): K² float64 values per layer
    with_gram: bool = False
    gram: Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.total = torch.zeros(self.in_features, dtype=torch.float64)
        self.total_sq = torch.zeros(self.in_features, dtype=torch.float64)
        self.absmax = torch.zeros(self.in_features, dtype=torch.float64)
        if self.with_gram:
            self.gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)

    def _follow(self, device: torch.device) -> None:
        """Accumulate on the device the activations come from: no copy to the CPU per batch."""
        if self.total.device != device:
            self.total, self.total_sq, self.absmax = (t.to(device) for t in (self.total, self.total_sq, self.absmax))
            if self.gram is not None:
                self.gram = self.gram.to(device)
            if self.error_total is not None:
                self.error_total = self.error_total.to(device)

    def update(self, x: Tensor) -> None:
        tokens = x.detach().reshape(-1, self.in_features).to(torch.float64)
        self._follow(tokens.device)
        self.count += tokens.shape[0]
        self.total += tokens.sum(0)
        self.total_sq += tokens.square().sum(0)
        self.absmax = torch.maximum(self.absmax, tokens.abs().amax(0))
        if self.gram is not None:
            self.gram += tokens.T @ tokens

    def update_error(self, error: Tensor) -> None:
        tokens = error.detach().reshape(-1, self.in_features).to(torch.float64)
        if self.error_total is None:
            self.error_total = torch.zeros(self.in_features, dtype=torch.float64, device=tokens.device)
        self._follow(tokens.device)
        self.error_total += tokens.sum(0)
        self.error_count += tokens.shape[0]

    def pruning_error_mean(self, layer: str = "this layer") -> Tensor:
        if self.error_total is None:
            raise ValueError(f"no pruning error was collected for {layer}; calibrate() with the same config "
                             "(correction 'bias' or a recovery method collects it)")
        return (self.error_total / max(self.error_count, 1)).float()

    def mean(self) -> Tensor:
        return (self.total / max(self.count, 1)).float()

    def second_moment(self) -> Tensor:
        """E[x xᵀ]: [in_features, in_features]."""
        if self.gram is None:
            raise ValueError("no second moments were collected; calibrate() with the rotation's config")
        return self.gram / max(self.count, 1)

    def rms(self) -> Tensor:
        return (self.total_sq / max(self.count, 1)).sqrt().float()

    def summary(self) -> dict[str, float | int]:
        return {"tokens": self.count, "rms_mean": float(self.rms().mean()),
                "mean_abs_mean": float(self.mean().abs().mean()), "absmax": float(self.absmax.max())}
