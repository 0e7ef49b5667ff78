"""What nm_linear computes: the config, the criteria, the corrections, the masks, the activation the
GEMM sees, calibration statistics, per-layer constants and decisions. Everything else reads this."""

from actprune_compiler.sparsity.config import Pattern, SparsityConfig, matches, parse_pattern
from actprune_compiler.sparsity.decision import LayerDecision

__all__ = ["LayerDecision", "Pattern", "SparsityConfig", "matches", "parse_pattern"]
