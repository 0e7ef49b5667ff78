"""Regional compilation: compile one decoder layer and run every layer of the same shape through its code.

Inductor's compile time grows with the graph, and a flattened LLM graph repeats the same layer 30 or
more times. Here the program's flat graph is cut into regions: each run of nodes inside one repeated
block (a child of a ModuleList, e.g. `model.layers.7`, found from the nodes' nn_module_stack) is a
region, and so is each run of the nodes between them (embedding, rotary tables and mask before the
layers; final norm and lm_head after them). Regions whose graphs are the same up to node names, with
weights and constants of the same shapes, dtypes and devices, form one kind; each kind is traced by
Dynamo and compiled by Inductor once, as a function of a module that holds the region's tensors
(`w0`, `w1`, ...). Every region of the kind calls that one compiled function with a module holding its
own tensors; Dynamo guards on the tensors' metadata, never on which module it is, so the compiled
code is shared. Weights stay graph inputs: Inductor's freezing, which bakes them into each graph, is
off. The top-level graph that calls the regions runs uncompiled.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from actprune_compiler.passes.select_linears import named_modules_spelling

# A module path whose last component is an index: a child of a ModuleList/Sequential (a repeated block).
_REPEATED = re.compile(r"^(?:.*\.)?\d+$")


def block_of(node: fx.Node) -> str | None:
    """The outermost repeated block (e.g. 'lm.model.layers.3') that `node` was traced in, if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for entry in stack.values():
        path = named_modules_spelling(entry[0] if isinstance(entry, tuple) else str(entry))
        if _REPEATED.match(path):
            return path
    return None


class RegionTensors(nn.Module):
    """One region's weights and constants as `w0`, `w1`, ...: what its kind's compiled code reads from `self`.

    One class for every region, so that the module passed to the compiled function never differs in type."""

    def __init__(self, values: list) -> None:
        super().__init__()
        for i, value in enumerate(values):
            if isinstance(value, nn.Parameter):
                self.register_parameter(f"w{i}", value)
            elif isinstance(value, torch.Tensor):
                self.register_buffer(f"w{i}", value, persistent=False)
            else:  # a submodule (a higher-order op's subgraph)
                setattr(self, f"w{i}", value)


class RegionCall(nn.Module):
    """A call of the region's kind's compiled code with this region's tensors."""

    def __init__(self, kind: RegionKind, tensors: RegionTensors) -> None:
        super().__init__()
        self.tensors = tensors
        self.kind = kind

    def forward(self, *args):
        return self.kind.compiled(self.tensors, *args)


@dataclass(eq=False)
class RegionKind:
    """Regions with the same graph: `code` is the graph's Python (a function of the tensors module and the
    region's inputs), compiled once into `compiled` for all of them."""

    key: str
    graph: fx.Graph
    blocks: list[str] = field(default_factory=list)  # the block (or '' between blocks) of each region of the kind
    code: Callable | None = None
    compiled: Callable | None = None


@dataclass(eq=False)
class _Region:
    block: str | None
    nodes: list[fx.Node]


def runs(graph: fx.Graph) -> list[_Region]:
    """Runs of consecutive computing nodes with the same block; a call_module (export's input guards) or the
    output ends a run, so that every region is a contiguous stretch of the graph."""
    regions: list[_Region] = []
    current: _Region | None = None
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op not in ("call_function", "call_method"):
            current = None
            continue
        block = block_of(node)
        if current is None or current.block != block:
            current = _Region(block, [])
            regions.append(current)
        current.nodes.append(node)
    return regions


def attr_key(value) -> tuple:
    """What the compiled code may depend on: a tensor's metadata; anything else (a submodule) by identity."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), tuple(value.stride()), value.dtype, str(value.device),
                isinstance(value, nn.Parameter), value.requires_grad)
    return ("object", id(value))


def extract(gm: fx.GraphModule, region: _Region, extra_inputs: list[fx.Node] = ()):
    """The region as a graph of its own: (graph, inputs from the rest of the graph, outputs used after it,
    the tensors its get_attr nodes read, a key equal for regions that compute the same thing).
    extra_inputs come first among the inputs, whether the region reads them or not."""
    inside = set(region.nodes)
    inputs: list[fx.Node] = list(extra_inputs)
    attrs: list[fx.Node] = []
    for node in region.nodes:
        for used in node.all_input_nodes:
            if used in inside:
                continue
            bucket = attrs if used.op == "get_attr" else inputs
            if used not in bucket:
                bucket.append(used)
    outputs = [n for n in region.nodes if any(user not in inside for user in n.users)]

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(inputs):
        env[node] = graph.placeholder(f"in{i}")
        env[node].meta.update(node.meta)
    for i, node in enumerate(attrs):
        env[node] = graph.get_attr(f"w{i}")
    for node in region.nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in outputs))

    tensors = [functools.reduce(getattr, n.target.split("."), gm) for n in attrs]  # as GraphModuleHost reads get_attr
    # Node names differ from layer to layer (add_6, add_12, ...): the key numbers nodes by position.
    index = {node: i for i, node in enumerate(graph.nodes)}
    lines = []
    for node in graph.nodes:
        args = fx.map_arg((node.args, node.kwargs), lambda n: f"%{index[n]}")
        lines.append(f"{node.op} {node.target} {args!r}")
    key = "\n".join(lines) + "\n" + repr([attr_key(t) for t in tensors])
    return graph, inputs, outputs, tensors, key


def replace(gm: fx.GraphModule, nodes: list[fx.Node], name: str, module: nn.Module, inputs: list[fx.Node],
             outputs: list[fx.Node]) -> None:
    """Put a call of `module` where the run of `nodes` was; the nodes after it read its outputs instead."""
    graph, inside = gm.graph, set(nodes)
    gm.add_submodule(name, module)
    # The call goes after the run's last node: a run is contiguous, so everything it reads is defined
    # before that, and everything reading its outputs comes after.
    with graph.inserting_after(nodes[-1]):
        last = call = graph.call_module(name, tuple(inputs))
    for j, node in enumerate(outputs):
        with graph.inserting_after(last):
            last = graph.call_function(operator.getitem, (call, j))
        last.meta.update(node.meta)
        for user in [u for u in node.users if u not in inside]:
            user.replace_input_with(node, last)
    for node in reversed(nodes):
        graph.erase_node(node)


@dataclass
class Regions:
    """The top-level module that calls the regions, and the region kinds it compiled."""

    module: fx.GraphModule
    kinds: list[RegionKind]

    def summary(self) -> dict:
        return {"regions": sum(len(k.blocks) for k in self.kinds), "kinds": len(self.kinds),
                "blocks_per_kind": [len(k.blocks) for k in self.kinds]}


def compile_regions(gm: fx.GraphModule, compile_fn: Callable[[Callable], Callable]) -> Regions:
    """Replace each region of `gm` (a graph of an exported program, with nn_module_stack metadata) by a
    call of its kind's code, compiled by compile_fn once per kind (lazily: at the first call)."""
    kinds: dict[str, RegionKind] = {}
    graph = gm.graph
    for i, region in enumerate(runs(graph)):
        sub, inputs, outputs, tensors, key = extract(gm, region)
        kind = kinds.get(key)
        if kind is None:
            kind = kinds[key] = RegionKind(key, sub)
            template = fx.GraphModule({f"w{j}": t for j, t in enumerate(tensors)}, sub,
                                      class_name=f"Region{len(kinds) - 1}")
            kind.code = type(template).forward  # reads the tensors from its first argument
            kind.compiled = compile_fn(kind.code)
        kind.blocks.append(region.block or "")
        replace(gm, region.nodes, f"region_{i}", RegionCall(kind, RegionTensors(tensors)), inputs, outputs)
    finish(gm)
    return Regions(gm, list(kinds.values()))


def finish(gm: fx.GraphModule) -> None:
    """Drop the get_attr nodes only the replaced regions read (the calls fetch nothing they do not pass), recompile."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
