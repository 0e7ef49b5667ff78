"""Compile an exported (rewritten) program with Inductor, nm_linear lowered to fused ATen ops."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch._inductor.compile_fx import compile_fx
from torch.export import ExportedProgram

from actprune_compiler.backends.freeze import DEFAULT_FREEZE, refuse_regional_freeze
from actprune_compiler.backends.regional import compile_regions
from actprune_compiler.lowering.inductor import POST_GRAD_PASS, uses_dense_gemv, uses_packed_gemm
from actprune_compiler.passes.graph_host import fake_value
from actprune_compiler.passes.select_linears import is_linear


def inductor_with_nm_lowering(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Callable:
    """A torch.compile backend: Inductor, with nm_linear expanded before its lowering (the expansion is
    in Inductor's own decomposition table), and actprune's lowering code in the FX graph cache's key.
    The dense linears take actprune's GEMMs too (route_dense_linears)."""
    route_dense_linears(gm)
    ours = {} if torch._inductor.config.post_grad_custom_post_pass else {"post_grad_custom_post_pass": POST_GRAD_PASS}
    with torch._inductor.config.patch(ours):
        return compile_fx(gm, example_inputs)


def route_dense_linears(gm: fx.GraphModule) -> int:
    """Point the linears left dense (lm_head, layers kept dense, the whole dense model) of a CPU float32 graph
    at actprune's kernels, in place; return how many:
    - one-token inputs at actprune::dense_gemv: dot products with W's rows, read from the weight cache's copy
      in 2 MiB pages, faster than oneDNN's GEMV and far cheaper to call (uses_dense_gemv). The cache then
      holds that copy of each (lm_head's is as large as the embedding), as it holds W^T for every rewritten
      linear;
    - larger ones, without freezing, at actprune::packed_linear. Inductor packs a weight for oneDNN's GEMM
      only when it freezes it; weights that stay graph inputs (regional compilation, warm starts from the FX
      graph cache) would take the unpacked GEMM, about a quarter slower at prefill sizes. The rewritten
      linears pack theirs in nm_linear's lowering, and this gives the dense ones the same GEMM from the
      same weight cache."""
    def kernel(node: fx.Node) -> torch._ops.OpOverload | None:
        if not is_linear(node):
            return None
        x, weight = fake_value(node.args[0]), fake_value(node.args[1]) if len(node.args) > 1 else None
        if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        if uses_dense_gemv(x):
            return torch.ops.actprune.dense_gemv.default
        return torch.ops.actprune.packed_linear.default if uses_packed_gemm(x) else None

    routed = [(node, target) for node in gm.graph.nodes if (target := kernel(node)) is not None]
    for node, target in routed:
        x, weight, *rest = node.args
        bias = rest[0] if rest else node.kwargs.get("bias")
        node.target, node.args, node.kwargs = target, (x, weight, bias), {}
    if routed:
        gm.recompile()
    return len(routed)


def inference_call(compiled: Callable, freeze: bool) -> Callable:
    """Call without autograd, with Inductor's freezing on while Dynamo traces (when it decides
    whether parameters are constants): frozen weights are folded and prepacked for the GEMMs.
    Float attributes (a norm's eps) become constants of the graph, not tensors read with .item():
    a regional graph is cut into pieces, and a piece cannot read them; and left to itself Dynamo
    finds out only after the passes ran, and traces the whole model a second time."""

    @functools.wraps(compiled)
    def call(*args, **kwargs):
        with (torch.no_grad(), torch._inductor.config.patch(freezing=freeze),
              torch._dynamo.config.patch(specialize_float=True)):
            return contiguous_cache(compiled(*args, **kwargs))

    return call


def contiguous_cache(outputs: Any) -> Any:
    """Make a Hugging Face KV cache in `outputs` contiguous, in place; other outputs pass through.

    The prefill leaves the keys and values in the layout attention made them (each head strided
    inside the tokens); every decode step after it concatenates into a contiguous tensor. Dynamo
    guards on strides, so the first decode step alone would trace and compile a graph of its own
    (seconds per graph for a real model). One copy of the cache after the prefill lets every decode
    step share one graph."""
    for layer in getattr(getattr(outputs, "past_key_values", None), "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor) and not tensor.is_contiguous():
                setattr(layer, name, tensor.contiguous())
    return outputs


class CompiledProgram(nn.Module):
    """The compiled module; inference only (no autograd). `regions` describes a regional compilation."""

    def __init__(self, compiled: Callable, source: nn.Module, freeze: bool, regions=None) -> None:
        super().__init__()
        self.call = inference_call(compiled, freeze)
        self.source = source
        self.regions = regions

    def forward(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def compile_program(program: ExportedProgram | nn.Module, *, dynamic: bool = True,
                    freeze: bool = DEFAULT_FREEZE, regional: bool = False) -> CompiledProgram:
    """torch.compile(program.module()) with actprune's Inductor lowering.

    dynamic=True compiles once for symbolic batch and sequence sizes instead of once per shape.
    freeze=True lets Inductor treat the weights as constants (they must not change afterwards); by default
    they stay graph inputs (backends/freeze.py says why).
    regional=True compiles each kind of repeated block (decoder layer) once and runs every layer of the
    kind through that code, and the parts between them (embedding, final norm, lm_head) as regions of
    their own (backends/regional.py): compile time no longer grows with depth. Weights stay graph
    inputs (no freezing), which is what lets the layers share code. Needs an ExportedProgram.
    """
    refuse_regional_freeze(regional, freeze)
    if regional:
        if not isinstance(program, ExportedProgram):
            raise TypeError(f"regional compilation takes an ExportedProgram (it cuts the graph where the nodes' "
                            f"module paths change), not {type(program).__name__}")
        module = program.module()
        regions = compile_regions(module, functools.partial(torch.compile, backend=inductor_with_nm_lowering,
                                                            dynamic=dynamic))
        return CompiledProgram(regions.module, module, False, regions)
    module = program.module() if isinstance(program, ExportedProgram) else program
    compiled = torch.compile(module, backend=inductor_with_nm_lowering, dynamic=dynamic)
    return CompiledProgram(compiled, module, freeze)
