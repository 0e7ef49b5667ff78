"""Recovery: values learned against the dense model (KL distillation) and folded into the graph's constants.

sparse_linear.py the eager, differentiable form of one rewritten layer with its learned values
distill.py      the training loop (dense teacher, sparse student, calibration text)
store.py        learned values on disk, keyed by model, config and text, so evaluation reuses them
prepare.py      what the passes need from the eager model: statistics, sensitive layers, learned values

The registry of methods (what each one trains) is sparsity/recovery_methods.py, beside the config that
names them; the learned values of one layer (LearnedLayer) are in sparsity/constants.py.
"""

from actprune_compiler.sparsity.recovery_methods import RECOVERY, RecoveryMethod

__all__ = ["RECOVERY", "RecoveryMethod"]
