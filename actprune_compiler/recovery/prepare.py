"""What the passes need from the eager model before they rewrite: statistics, sensitive layers and a
recovery method's learned values. It orchestrates calibration/ and the recovery store, so it sits above both.

Shared by both front doors (sparsify for exported programs, compile_model for the torch.compile
backend), so a method that needs calibration behaves the same through either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from actprune_compiler.calibration.sensitivity import most_sensitive
from actprune_compiler.calibration.statistics import calibrate
from actprune_compiler.recovery.store import learned_values
from actprune_compiler.reporting.runinfo import Timer
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LearnedLayer
from actprune_compiler.sparsity.stats import LayerStats


@dataclass
class Prepared:
    stats: dict[str, LayerStats] | None = None
    summary: dict[str, Any] | None = None  # the calibration summary for report.json
    keep_dense: list[str] = field(default_factory=list)  # the skip_sensitive layers, most sensitive first
    learned: dict[str, LearnedLayer] | None = None  # a recovery method's weight and bias, by module path
    recovery: dict[str, Any] | None = None  # its summary for report.json: cost, KL before and after


def _missing(what: str, config: SparsityConfig) -> ValueError:
    return ValueError(f"config {config.label!r} needs {what}: pass tokenizer=... and calib_text=... "
                      "(e.g. actprune_compiler.eval.data.calibration_text()[0], WikiText-2 validation)")


def prepare(model: nn.Module | None, tokenizer, config: SparsityConfig, text: str | None, *,
            source: str = "caller's text", stats: dict[str, LayerStats] | None = None,
            keep_dense: list[str] | None = None, learned: dict[str, LearnedLayer] | None = None,
            timer: Timer | None = None) -> Prepared:
    """Gather what `config` needs and is not given: statistics (calibrated criteria/corrections, and the
    start of a recovery method), the layers to keep dense (skip_sensitive) and learned values (recovery,
    trained or read from the store). A config that needs none of them costs nothing."""
    timer = timer or Timer()
    # a given keep_dense is passed on as it is: the backend's option check refuses a bad one in one sentence
    out = Prepared(stats, keep_dense=[] if keep_dense is None else keep_dense, learned=learned)
    trains = config.recovery != "none" and learned is None
    if (config.needs_statistics() or trains) and stats is None:
        if model is None or text is None:
            raise _missing("calibration statistics", config)
        with timer("calibrate_s"):
            out.stats, out.summary = calibrate(model, tokenizer, config, text, source)
    if config.skip_sensitive and keep_dense is None:
        if model is None or text is None:
            raise _missing(f"a sensitivity ranking (skip_sensitive={config.skip_sensitive})", config)
        with timer("sensitivity_s"):
            out.keep_dense = most_sensitive(model, tokenizer, config, text, out.stats)
    if trains:
        if model is None or text is None:
            raise _missing(f"the eager model to train recovery {config.recovery!r} on", config)
        with timer("recovery_s"):
            out.learned, out.recovery = learned_values(model, tokenizer, config, text, out.stats,
                                                       keep_dense=frozenset(out.keep_dense))
    return out
