"""Eager runs of the model with input hooks over caller-given text: statistics and sensitivity.

Nothing here reads files or knows about evaluation data: the caller passes the text.
"""

from actprune_compiler.calibration.hooks import input_hooks, run_eager, selected_linears, token_batches
from actprune_compiler.calibration.sensitivity import layer_sensitivity, most_sensitive
from actprune_compiler.calibration.statistics import calibrate, collect_stats

__all__ = ["calibrate", "collect_stats", "input_hooks", "layer_sensitivity", "most_sensitive", "run_eager",
           "selected_linears", "token_batches"]
