"""Regional compilation for the torch.compile front door: trace the model whole, compile each kind of layer once.

Dynamo traces model.forward as one graph: one set of guards per call, the KV cache included, and none of
the Python that runs around each layer in eager mode (which costs more than the layer's GEMMs when decoding
a small model). The backend's passes rewrite that graph with the model's real module paths, so every
per-layer decision (kept dense, calibrated constants, learned values) is made as for the whole graph.

The rewritten graph is then cut into regions as an exported program is (regional.py): each run of nodes
inside one decoder layer, and the runs between the layers. Regions that compute the same thing, from
inputs with the same metadata, form a kind, and Inductor compiles each kind once from the fake tensors
Dynamo recorded for the first region's inputs (as Dynamo's DDPOptimizer compiles the pieces of a graph it
splits), so the graph's symbolic sizes stay symbolic. Every region of the kind calls that code with its
own inputs: its layer's weights are graph inputs, and a constant the passes added (a criterion's scale, a
correction, a learned bias) is passed to the code as one more input. The top-level graph that calls the
kinds in order is what the backend returns; it runs as plain Python, 30-odd calls per forward.

Each layer's KV cache is its own graph input, so Dynamo gives each layer's cache length a symbol of its
own; the kind's key numbers symbols by first appearance, so the layers still share one kind. The kind's
code was compiled assuming what held for the first layer's symbols, and holds for every layer because
every layer's cache grows by the same tokens at each call.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch._guards import detect_fake_mode

from actprune_compiler.backends.inductor import inductor_with_nm_lowering
from actprune_compiler.backends.regional import RegionKind, Regions, attr_key, extract, finish, replace, runs
from actprune_compiler.passes.graph_host import fake_value

_SYMBOL = re.compile(r"\b[su]\d+\b")  # a ShapeEnv symbol as printed: s0, s17, u3


def _input_key(nodes: list[fx.Node]) -> str:
    """The region inputs' metadata (shapes, strides, dtypes, devices; symbols renumbered in order of appearance)."""
    values = [fake_value(node) for node in nodes]
    described = [attr_key(v) if isinstance(v, torch.Tensor) else (type(v).__name__,) for v in values]
    numbers: dict[str, str] = {}
    return _SYMBOL.sub(lambda m: numbers.setdefault(m.group(0), f"S{len(numbers)}"), repr(described))


def _symbols(value: Any, bound: bool = False) -> set:
    """The symbols in a value's sizes; bound=True: only those a compiled graph can read off it as an argument
    (a size that is a symbol itself, not an expression such as 1 - s48)."""
    if isinstance(value, torch.Tensor):
        return set().union(*(_symbols(d, bound) for d in (*value.shape, *value.stride())))
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        return ({expr} if expr.is_Symbol else set()) if bound else set(expr.free_symbols)
    if isinstance(value, (tuple, list)):
        return set().union(*(_symbols(v, bound) for v in value))
    return set()


def _size_inputs(nodes: list[fx.Node], sizes: dict) -> list[fx.Node]:
    """The graph's size inputs (SymInt placeholders) for the symbols the region's values have but its arguments
    do not give (Gemma's sliding window arrives as 1 - s48): Inductor's code reads sizes off its arguments."""
    inside = set(nodes)
    given = set().union(*(_symbols(fake_value(used), bound=True) for n in nodes
                          for used in n.all_input_nodes if used not in inside))
    needed = set().union(*(_symbols(fake_value(n)) for n in nodes)) - given
    if missing := sorted(str(s) for s in needed if s not in sizes):
        raise ValueError(f"regional compilation cannot give a region the sizes {missing}, which no graph input "
                         "holds; compile the whole model instead (regional=False)")
    return [sizes[s] for s in sorted(needed, key=str)]


def _compile_kind(compile_fn: Callable, gm: fx.GraphModule, example: list) -> Callable:
    """compile_fn(gm, example), past Inductor's FX graph cache when the cache cannot check an entry: a cached
    entry's guards may name sizes by their source in the whole graph (Gemma's cache length,
    L['kwargs']['cache'].layers[0].cumulative_length), which the piece's arguments do not hold, and the lookup
    raises KeyError. Such a kind compiles afresh in every process; the others load from the cache."""
    try:
        return compile_fn(gm, example)
    except KeyError:
        with torch._inductor.config.patch(fx_graph_cache=False):
            return compile_fn(gm, example)


def _computes_tensors(nodes: list[fx.Node]) -> bool:
    return any(isinstance(fake_value(n), torch.Tensor) for n in nodes)


class KindCall(nn.Module):
    """One region: its kind's compiled code, called with the region's constants and then its inputs. The
    constants stay buffers of the Dynamo graph module the passes added them to."""

    def __init__(self, kind: RegionKind, constants: list[torch.Tensor]) -> None:
        super().__init__()
        self.kind = kind
        self.constants = constants

    def forward(self, *args):
        return self.kind.compiled(*self.constants, *args)


def _constants_as_inputs(graph: fx.Graph) -> None:
    """The region graph's get_attr w0, w1, ... become its first placeholders: one code, each region's own values."""
    first = next(iter(graph.nodes))
    for node in [n for n in graph.nodes if n.op == "get_attr"]:
        with graph.inserting_before(first):
            placeholder = graph.placeholder(node.target)
        node.replace_all_uses_with(placeholder)
        graph.erase_node(node)


def compile_graph_regions(gm: fx.GraphModule, compile_fn: Callable[[fx.GraphModule, list], Callable]) -> Regions:
    """Replace each region of a Dynamo graph by a call of its kind's code; compile_fn (a torch.compile
    backend, e.g. Inductor) compiles each kind once, now, from its first region's fake inputs."""
    if bad := [n.name for n in gm.graph.nodes if n.op == "call_method" and n.target == "item"]:
        raise ValueError(f"regional compilation needs float attributes specialised, but the graph reads "
                         f"{len(bad)} of them at run time ({bad[0]}, ...); trace it with "
                         "torch._dynamo.config.patch(specialize_float=True), as compile_model does")
    fake_mode = detect_fake_mode([fake_value(n) for n in gm.graph.nodes if n.op == "placeholder"])
    kinds: dict[str, RegionKind] = {}
    graph = gm.graph
    sizes = {value.node.expr: n for n in graph.nodes if n.op == "placeholder"
             and isinstance(value := fake_value(n), torch.SymInt)}
    for i, region in enumerate(runs(graph)):
        if not _computes_tensors(region.nodes):  # size arithmetic: stays in the top-level graph
            continue
        extra = _size_inputs(region.nodes, sizes)
        sub, inputs, outputs, tensors, key = extract(gm, region, extra)
        key += "\n" + _input_key(inputs)
        kind = kinds.get(key)
        if kind is None:
            kind = kinds[key] = RegionKind(key, sub)
            _constants_as_inputs(sub)
            example = [fake_mode.from_tensor(t, static_shapes=True) for t in tensors]
            example += [fake_value(n) for n in inputs]
            kind.compiled = _compile_kind(compile_fn, fx.GraphModule({}, sub, class_name=f"Kind{len(kinds) - 1}"),
                                          example)
        kind.blocks.append(region.block or "")
        replace(gm, region.nodes, f"region_{i}", KindCall(kind, tensors), inputs, outputs)
    finish(gm)
    return Regions(gm, list(kinds.values()))


def regional_inductor(gm: fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """A torch.compile backend: Inductor (with actprune's lowering), one compile per kind of region."""
    return compile_graph_regions(gm, inductor_with_nm_lowering).module.forward
