"""Recovery: values learned against the dense model (KL distillation) and folded into the graph's constants.

methods.py      the registry: what each method trains
sparse_linear.py the eager, differentiable form of one rewritten layer with its learned values
distill.py      the training loop (dense teacher, sparse student, calibration text)
store.py        learned values on disk, keyed by model, config and text, so evaluation reuses them
"""

from actprune_compiler.recovery.methods import RECOVERY, RecoveryMethod

__all__ = ["RECOVERY", "RecoveryMethod"]
