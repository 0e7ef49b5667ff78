"""What each recovery method learns. Every method folds into the layer's weight and bias, so none
costs anything at run time; each nests the one before it, and all start from the calibrated bias.

For one pruned layer, with S(x) the config's masked input (criterion and correction applied):

    y = (1 + s) * (W (S(x) + a) + b) + t

    offset:   a (one vector per projection input), trained; s = t = 0
    affine:   a, s and t (per output channel) trained
    finetune: a, s, t and W trained (the mask is a constant of each step: gradients reach the kept inputs)

folded: W' = (1 + s) * W (row-wise), b' = (1 + s) * (W a + b) + t. The initial a is E[x - S(x)] on
the calibration tokens, so a method at 0 steps equals correction 'bias'.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecoveryMethod:
    name: str
    summary: str
    offset: bool = False
    affine: bool = False
    weights: bool = False


    @property
    def trains(self) -> bool:
        return self.offset or self.affine or self.weights


# Adam's learning rate for the vectors (a, s, t) when the config gives none; weights train at
# WEIGHT_LR_RATIO of it (full-weight steps as large as the vectors' would undo the dense model).
DEFAULT_LR = 1e-3
WEIGHT_LR_RATIO = 0.02
BATCH = 4  # sequences of calib_seqlen tokens per optimiser step

RECOVERY: dict[str, RecoveryMethod] = {
    m.name: m
    for m in (
        RecoveryMethod("none", "nothing learned"),
        RecoveryMethod("offset", "input offset a per projection, KL-trained, folded into the bias",
                       offset=True),
        RecoveryMethod("affine", "offset a plus per-output scale s and shift t, folded into weight and bias",
                       offset=True, affine=True),
        RecoveryMethod("finetune", "affine plus the projection weights, KL-trained through the mask",
                       offset=True, affine=True, weights=True),
    )
}


def learning_rate(config) -> float:
    """Adam's rate for the learned vectors: the config's, or DEFAULT_LR."""
    return config.recovery_lr or DEFAULT_LR
