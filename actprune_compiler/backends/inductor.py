"""Compile an exported (rewritten) program with Inductor, nm_linear lowered to fused ATen ops."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from actprune_compiler.lowering.inductor import CACHE_SALT


def inductor_with_nm_lowering(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Callable:
    """A torch.compile backend: Inductor, with nm_linear expanded before its lowering (the expansion is
    in Inductor's own decomposition table), and actprune's lowering code in the FX graph cache's key."""
    from torch._inductor.compile_fx import compile_fx

    salt = {} if torch._inductor.config.post_grad_custom_post_pass else {"post_grad_custom_post_pass": CACHE_SALT}
    with torch._inductor.config.patch(salt):
        return compile_fx(gm, example_inputs)


def inference_call(compiled: Callable, freeze: bool) -> Callable:
    """Call without autograd, with Inductor's freezing on while Dynamo traces (when it decides
    whether parameters are constants): frozen weights are folded and prepacked for the GEMMs."""

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with torch.no_grad(), torch._inductor.config.patch(freezing=freeze):
            return compiled(*args, **kwargs)

    return call


class CompiledProgram(nn.Module):
    """The compiled module; inference only (no autograd)."""

    def __init__(self, compiled: Callable, source: nn.Module, freeze: bool) -> None:
        super().__init__()
        self.call = inference_call(compiled, freeze)
        self.source = source

    def forward(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def compile_program(program: ExportedProgram | nn.Module, *, dynamic: bool = True,
                    freeze: bool = True) -> CompiledProgram:
    """torch.compile(program.module()) with actprune's Inductor lowering.

    dynamic=True compiles once for symbolic batch and sequence sizes instead of once per shape.
    freeze=True lets Inductor treat the weights as constants (they must not change afterwards).
    """
    module = program.module() if isinstance(program, ExportedProgram) else program
    compiled = torch.compile(module, backend=inductor_with_nm_lowering, dynamic=dynamic)
    return CompiledProgram(compiled, module, freeze)
