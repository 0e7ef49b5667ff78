"""SparsityConfig: what to prune, how, and where. Frozen, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA, WEIGHT_CRITERIA, criteria_for
from actprune_compiler.sparsity.quant import QUANT_FORMATS
from actprune_compiler.sparsity.recovery_methods import RECOVERY
from actprune_compiler.sparsity.rotation import ROTATIONS

# The linear layers of a decoder block; lm_head is never pruned unless asked for by name.
DEFAULT_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)
TARGETS = ("activation", "weight")
QUANT = ("none", *QUANT_FORMATS)
MAX_M = 256
RECOVERY_STEPS = 100  # optimiser steps of a recovery method when the config gives none
T = TypeVar("T")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_FRACTION = re.compile(r"^\s*(\d*\.?\d+)\s*$")  # '0.5' on a command line is what 0.5 is in Python


@dataclass(frozen=True)
class Pattern:
    """Either N:M (keep n of every m consecutive features) or an unstructured sparsity ratio."""

    n: int = 0
    m: int = 0
    ratio: float | None = None  # fraction of features *pruned*, unstructured

    @property
    def is_nm(self) -> bool:
        return self.ratio is None

    def group(self, in_features: int) -> tuple[int, int]:
        """(keep, group size) for a layer: N:M as is, unstructured as top-k over the whole row."""
        if self.is_nm:
            return self.n, self.m
        return in_features - round(in_features * self.ratio), in_features

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"{self.ratio * 100:g}%"


def parse_pattern(value: str | float) -> Pattern:
    """'8:16' -> Pattern(8, 16); '50%', '0.5' or 0.5 -> unstructured 50%. Raises ValueError otherwise."""
    allowed = "allowed: 'N:M' with 0 < N < M <= 256 (e.g. '2:4', '8:16') or a ratio such as '50%' or 0.5"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 < value < 1:
            raise ValueError(f"pattern {value!r} is out of range; {allowed}")
        return Pattern(ratio=float(value))
    if not isinstance(value, str):
        raise ValueError(f"pattern {value!r} has type {type(value).__name__}; {allowed}")
    if match := _NM.match(value):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m <= MAX_M:
            raise ValueError(f"pattern {value!r} is invalid; {allowed}")
        return Pattern(n, m)
    if (match := _PERCENT.match(value)) or (fraction := _FRACTION.match(value)):
        ratio = float(match[1]) / 100 if match else float(fraction[1])
        if not 0 < ratio < 1:
            raise ValueError(f"pattern {value!r} is out of range; {allowed}")
        return Pattern(ratio=ratio)
    raise ValueError(f"pattern {value!r} is not understood; {allowed}")


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether a module path, or its last name, matches one of the fnmatch patterns."""
    leaf = path.rsplit(".", 1)[-1]
    return any(fnmatchcase(path, p) or fnmatchcase(leaf, p) for p in patterns)


def _choice(field_name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name} {value!r} is unknown; allowed: {', '.join(allowed)}")


def _names(field_name: str, value: Any) -> tuple[str, ...]:
    """Accept 'a,b', ['a', 'b'] or ('a', 'b'); return a tuple of non-empty names."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        names = tuple(str(item).strip() for item in items)
    except TypeError:
        raise ValueError(f"{field_name} must be a list of module names or patterns, got {value!r}") from None
    if any(not name for name in names):
        raise ValueError(f"{field_name} {value!r} contains an empty name")
    return names


@dataclass(frozen=True)
class SparsityConfig:
    """How actprune prunes a model.

    pattern:    "N:M" (keep N of every M consecutive input features) or an unstructured ratio ("50%").
    target:     "activation" (mask each token's input features at run time) or "weight"
                (mask the weight constants once, along the input dimension).
    criterion:  how elements are scored (see actprune_compiler.sparsity.criteria for the registry).
    correction: error mitigation around the activation mask (see actprune_compiler.sparsity.corrections).
    modules:    fnmatch patterns on the module path or its last name; default: the 7 projections.
    exclude:    fnmatch patterns of layers to leave dense even if `modules` matches them.
    skip_sensitive: leave the K layers with the largest output error (on calibration text) dense.
    calib_samples / calib_seqlen: calibration data size for criteria/corrections that need statistics.
    drop_bias:  the seed's behaviour (--seed-compat): its module swap copies the weight but not the bias,
                so activation-pruned layers lose their bias. actprune keeps it by default; Qwen2's q/k/v
                have biases, and dropping them is what collapses the seed's Qwen rows.
    recovery:   values learned against the dense model on calibration text and folded into each pruned
                layer's weight and bias (see actprune_compiler.sparsity.recovery_methods); no run-time cost.
    recovery_steps / recovery_lr: optimiser steps (4 sequences of calib_seqlen each) and Adam's rate
                (None: the method's default).
    rotation:   "pca": mask each input in the basis of its calibration inputs' principal directions,
                interleaved across groups; W Q is folded, x @ Q runs at run time (sparsity/rotation.py).
                "pca_contiguous": the same, directions in rank order (the ablation).
    quant:      "int8", "int4" (groups of 64 outputs), "int4g32" (32 outputs) or "int4k32" (32 inputs, as GGUF's
                Q4 blocks): every pruned layer's weight quantised as rows of W^T (sparsity/quant.py), after
                recovery and rotation are folded in, and the layers left dense (lm_head) in int8a8 (int8, their
                input quantised too: sparsity/quant.py); decode steps
                read only the kept rows' codes (kernels/quant_rows.cpp), the prefill multiplies by the
                dequantised weight. float32 models on the CPU only.
    """

    pattern: str = "8:16"
    target: str = "activation"
    criterion: str = "magnitude"
    correction: str = "none"
    modules: tuple[str, ...] = DEFAULT_MODULES
    exclude: tuple[str, ...] = ()
    skip_sensitive: int = 0
    calib_samples: int = 16
    calib_seqlen: int = 512
    drop_bias: bool = False
    recovery: str = "none"
    recovery_steps: int = RECOVERY_STEPS
    recovery_lr: float | None = None
    rotation: str = "none"
    quant: str = "none"

    def __post_init__(self) -> None:
        # Normalise first so that equal configs compare (and serialise) equal.
        object.__setattr__(self, "pattern", str(parse_pattern(self.pattern)))
        object.__setattr__(self, "modules", _names("modules", self.modules))
        object.__setattr__(self, "exclude", _names("exclude", self.exclude))
        _choice("target", self.target, TARGETS)
        _choice(f"criterion for target {self.target!r}", self.criterion, criteria_for(self.target))
        if self.target == "weight" and self.correction != "none":
            raise ValueError(f"correction {self.correction!r} applies to activation pruning only; "
                             "use correction 'none' with target 'weight'")
        _choice("correction", self.correction, tuple(CORRECTIONS))
        for name in ("calib_samples", "calib_seqlen"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.drop_bias, bool):
            raise ValueError(f"drop_bias must be true or false, got {self.drop_bias!r}")
        if self.drop_bias and self.target == "weight":
            raise ValueError("drop_bias reproduces the seed's activation-pruning module swap; its weight pruning "
                             "keeps the bias, so use drop_bias with target 'activation' only")
        self._check_recovery()
        self._check_rotation()
        _choice("quant", self.quant, QUANT)
        if self.quant != "none" and self.target == "weight":
            raise ValueError(f"quant {self.quant!r} quantises the rows of W^T that the activation mask skips; use it "
                             "with target 'activation' (weight pruning keeps the float weights)")
        if self.quant != "none" and CORRECTIONS[self.correction].token_shift is not None:
            # the token's shift makes its input dense again: no decode kernel reads kept rows for it
            run_time = ", ".join(n for n, c in CORRECTIONS.items() if c.token_shift is None)
            raise ValueError(f"quant {self.quant!r} needs the decode kernel over kept rows, which correction "
                             f"{self.correction!r} (a per-token shift) cannot use; use one of {run_time}")
        if not isinstance(self.skip_sensitive, int) or self.skip_sensitive < 0:
            raise ValueError(f"skip_sensitive must be a non-negative integer, got {self.skip_sensitive!r}")
        if self.skip_sensitive and self.target == "weight":
            # The ranking measures each layer's activation-mask error, which says nothing about weight pruning.
            raise ValueError("skip_sensitive ranks layers by their activation-pruning error; it applies to target "
                             "'activation' only (use exclude=... to keep weight-pruned layers dense)")

    def _check_recovery(self) -> None:
        _choice("recovery", self.recovery, tuple(RECOVERY))
        if not isinstance(self.recovery_steps, int) or isinstance(self.recovery_steps, bool) \
                or self.recovery_steps < 0:
            raise ValueError(f"recovery_steps must be a non-negative integer, got {self.recovery_steps!r}")
        if self.recovery_lr is not None:
            if isinstance(self.recovery_lr, bool) or not isinstance(self.recovery_lr, (int, float)) \
                    or not 0 < self.recovery_lr < math.inf:
                raise ValueError(f"recovery_lr must be a positive finite number or None, got {self.recovery_lr!r}")
            object.__setattr__(self, "recovery_lr", float(self.recovery_lr))  # 1 and 1.0: one config
        if self.recovery == "none":
            if self.recovery_steps != RECOVERY_STEPS or self.recovery_lr is not None:
                raise ValueError("recovery_steps and recovery_lr set how a recovery method trains; choose one with "
                                 "recovery=... (offset, affine, finetune) or leave them at their defaults")
            return
        if self.target == "weight":
            raise ValueError(f"recovery {self.recovery!r} learns around the activation mask; use it with target "
                             "'activation' only")
        if self.correction == "bias":
            raise ValueError(f"recovery {self.recovery!r} starts from the calibrated bias and learns it further; "
                             "use another correction than 'bias' with it")

    def _check_rotation(self) -> None:
        _choice("rotation", self.rotation, tuple(ROTATIONS))
        if self.rotation == "none":
            return
        # what would be measured or learned in the unrotated basis and applied in the rotated one
        clash = ("a weight target" if self.target == "weight"
                 else f"recovery {self.recovery!r}" if self.recovery != "none"
                 else f"correction {self.correction!r}" if CORRECTIONS[self.correction].needs_calibration
                 else f"criterion {self.criterion!r}" if CRITERIA[self.criterion].needs_calibration else None)
        if clash:
            run_time = ", ".join(name for name, fix in CORRECTIONS.items() if not fix.needs_calibration)
            raise ValueError(f"rotation {self.rotation!r} masks activations in a rotated basis, and {clash} is "
                             "calibrated or applied in the original one; use the rotation with an activation target, "
                             f"a run-time correction ({run_time}) and no recovery")
        if not self.parsed_pattern.is_nm:
            raise ValueError(f"rotation {self.rotation!r} spreads the principal directions over groups of M; use it "
                             f"with an N:M pattern, not {self.pattern!r}")

    def selects(self, path: str) -> bool:
        """Whether the layer at this module path is pruned by modules and exclude (skip_sensitive aside)."""
        return matches(path, self.modules) and not matches(path, self.exclude)

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def label(self) -> str:
        """Short name for tables: '8:16', '8:16 wt', '8:16 clact+variance'."""
        parts = [self.pattern]
        if self.target == "weight":
            parts.append("wt" if self.criterion == "magnitude" else f"wt-{self.criterion}")
        elif self.criterion != "magnitude" or self.correction != "none":
            extra = self.criterion if self.correction == "none" else f"{self.criterion}+{self.correction}"
            parts.append(extra)
        if self.modules != DEFAULT_MODULES:
            parts.append("[" + ",".join(m.removesuffix("_proj") for m in self.modules) + "]")
        if self.skip_sensitive:
            parts.append(f"skip{self.skip_sensitive}")
        if self.exclude:
            parts.append("excl " + ",".join(self.exclude))
        if self.recovery != "none":
            parts.append(f"{self.recovery}({self.recovery_steps})")
        if self.rotation != "none":
            parts.append(self.rotation)
        if self.drop_bias:
            parts.append("seed-compat (no bias)")
        if self.quant != "none":
            parts.append(self.quant)
        return " ".join(parts)

    def replace(self, **changes: Any) -> SparsityConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["modules"], data["exclude"] = list(self.modules), list(self.exclude)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SparsityConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SparsityConfig:
        return cls.from_dict(json.loads(text))

    def needs_statistics(self) -> bool:
        """Whether the criterion or correction reads calibration statistics when the graph is rewritten."""
        registry = CRITERIA if self.target == "activation" else WEIGHT_CRITERIA
        return (registry[self.criterion].needs_calibration or CORRECTIONS[self.correction].needs_calibration
                or self.rotation != "none")

    def needs_calibration(self) -> bool:
        """Whether anything runs the eager model over calibration text: statistics, or a recovery method."""
        return self.needs_statistics() or self.recovery != "none"

    def kept_bias(self, bias: T) -> T | None:
        """The bias an activation-pruned layer keeps: its own, or none under the seed's module swap."""
        return None if self.drop_bias else bias

    def needs_pruning_errors(self) -> bool:
        """Whether calibration measures E[x - x_sparse]: the calibrated bias, and where recovery starts."""
        return CORRECTIONS[self.correction].calibrated_bias or self.recovery != "none"

