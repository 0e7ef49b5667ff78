"""Compilation: Inductor for exported programs, and the torch.compile backend "actprune"."""

from actprune_compiler.backends.inductor import compile_program, inductor_with_nm_lowering

__all__ = ["compile_program", "inductor_with_nm_lowering"]
