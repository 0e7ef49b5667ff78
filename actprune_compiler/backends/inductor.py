"""Compile an exported (rewritten) program with Inductor, nm_linear lowered to fused ATen ops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from actprune_compiler.lowering import inductor_decompositions


def inductor_with_nm_lowering(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Callable:
    """A torch.compile backend: Inductor, with nm_linear expanded before its lowering."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, decompositions=inductor_decompositions())


class CompiledProgram(nn.Module):
    """The compiled module, always called without autograd (inference only)."""

    def __init__(self, compiled: Callable, source: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled
        self.source = source

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.compiled(*args, **kwargs)


def compile_program(program: ExportedProgram | nn.Module, *, dynamic: bool = True) -> CompiledProgram:
    """torch.compile(program.module()) with actprune's Inductor lowering.

    dynamic=True compiles once for symbolic batch and sequence sizes instead of once per shape.
    """
    module = program.module() if isinstance(program, ExportedProgram) else program
    return CompiledProgram(torch.compile(module, backend=inductor_with_nm_lowering, dynamic=dynamic), module)
