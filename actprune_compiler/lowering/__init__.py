"""How nm_linear becomes fast code, per backend. The graph keeps one node; lowering expands it."""

from actprune_compiler.lowering.inductor import inductor_decompositions

__all__ = ["inductor_decompositions"]
