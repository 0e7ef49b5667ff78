"""Where a graph's tensors live, so one set of passes serves both front doors.

An ExportedProgram lifts parameters and constants to placeholders described by its graph
signature; a Dynamo graph gets parameters as placeholders fed with the real tensors (or as
get_attr nodes). The passes only need to read a weight, swap in a pruned one, and add a constant.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx
from torch._dynamo.source import ConstantSource
from torch._guards import detect_fake_mode
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument


def mutates(node: fx.Node) -> bool:
    """Whether a node changes a tensor in place. FX counts only some call_functions as impure, so its dead-code
    elimination would drop a Dynamo graph's `cache.index_copy_(...)` whose result nobody reads: a static KV
    cache would then never be written."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        if node.target is operator.setitem:
            return True
        schema = getattr(node.target, "_schema", None)
        name = getattr(node.target, "__name__", "")
        return bool(schema is not None and schema.is_mutable) or (name.endswith("_") and not name.endswith("__"))
    return False


def eliminate_dead_code(graph: fx.Graph) -> None:
    """Remove what the passes left unused, keeping every in-place update."""
    graph.eliminate_dead_code(is_impure_node=lambda node: node.is_impure() or mutates(node))


def fake_value(node: fx.Node) -> Any:
    """What a node computes, as tracing recorded it (a fake tensor, a SymInt, ...): torch.export writes it to
    meta["val"], Dynamo to meta["example_value"]. None when neither was recorded."""
    return node.meta["val"] if "val" in node.meta else node.meta.get("example_value")


def _safe_name(text: str) -> str:
    return re.sub(r"\W", "_", text)


class GraphHost:
    """Common part: the graph, and naming of new constants."""

    graph: fx.Graph
    module_prefix: str = ""  # stripped from nn_module_stack paths (a wrapper's attribute)

    def value(self, node: fx.Node) -> torch.Tensor:
        raise NotImplementedError

    def add_constant(self, name: str, tensor: torch.Tensor) -> fx.Node:
        raise NotImplementedError

    def replace_value(self, node: fx.Node, tensor: torch.Tensor) -> fx.Node:
        """Use `tensor` where `node`'s value was used by its single user; return the node to use.

        A tensor shared with other users (tied embeddings) gets a new constant instead, so pruning
        one layer never changes another.
        """
        if len(node.users) > 1:
            return self.add_constant(f"{node.name}_pruned", tensor)
        self._overwrite(node, tensor)
        return node

    def substitute(self, node: fx.Node, name: str, tensor: torch.Tensor) -> fx.Node:
        """The node to use in place of `node` for one rewritten layer, holding `tensor` (a learned weight)."""
        return self.replace_value(node, tensor)

    def _overwrite(self, node: fx.Node, tensor: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class ExportedProgramHost(GraphHost):
    def __init__(self, program: ExportedProgram, module_prefix: str = "") -> None:
        self.program = program
        self.graph = program.graph
        self.module_prefix = module_prefix
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        self._fake_mode = detect_fake_mode([fake_value(n) for n in placeholders])

    def _spec(self, node: fx.Node) -> InputSpec:
        for spec in self.program.graph_signature.input_specs:
            if isinstance(spec.arg, TensorArgument) and spec.arg.name == node.name:
                return spec
        raise ValueError(f"graph input {node.name!r} is not a parameter, buffer or constant")

    def value(self, node: fx.Node) -> torch.Tensor:
        spec = self._spec(node)
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in self.program.state_dict:
            return self.program.state_dict[spec.target]
        if spec.target in self.program.constants:
            return self.program.constants[spec.target]
        raise ValueError(f"graph input {node.name!r} ({spec.kind.name}) holds no stored tensor")

    def _overwrite(self, node: fx.Node, tensor: torch.Tensor) -> None:
        spec = self._spec(node)
        old = self.value(node)
        store = self.program.state_dict if spec.target in self.program.state_dict else self.program.constants
        new = torch.nn.Parameter(tensor, requires_grad=False) if isinstance(old, torch.nn.Parameter) else tensor
        store[spec.target] = new

    def add_constant(self, name: str, tensor: torch.Tensor) -> fx.Node:
        tensor = tensor.detach()  # calibrated from parameters; a constant must not carry autograd state
        target = f"actprune.{name}"
        specs = self.program.graph_signature.input_specs
        first_user_input = next(i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT)
        anchor_name = specs[first_user_input].arg.name
        anchor = next(n for n in self.graph.nodes if n.op == "placeholder" and n.name == anchor_name)
        with self.graph.inserting_before(anchor):
            node = self.graph.placeholder(f"c_actprune_{_safe_name(name)}")
        node.meta["val"] = self._fake_mode.from_tensor(tensor, static_shapes=True)
        specs.insert(first_user_input, InputSpec(InputKind.CONSTANT_TENSOR, TensorArgument(node.name), target))
        self.program.constants[target] = tensor
        return node

    def finish(self) -> None:
        eliminate_dead_code(self.graph)
        self.graph.lint()
        self._name_outputs()
        self.program.graph_module.recompile()

    def _name_outputs(self) -> None:
        """The signature names each output by its node: a pass that replaced an output's node (lm_head turned
        into quant_linear) renames it there too."""
        outputs = self.graph.output_node().args[0]
        for spec, node in zip(self.program.graph_signature.output_specs, outputs, strict=True):
            if isinstance(spec.arg, TensorArgument) and isinstance(node, fx.Node):
                spec.arg.name = node.name


class GraphModuleHost(GraphHost):
    """A Dynamo (or plain FX) graph: placeholders are fed `example_inputs`, the real tensors."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], module_prefix: str = "") -> None:
        self.gm = gm
        self.graph = gm.graph
        self.module_prefix = module_prefix
        self.example_inputs = list(example_inputs)
        self._placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        self.overwritten: list[torch.Tensor] = []  # real tensors pruned in place, for the backend's log

    def value(self, node: fx.Node) -> torch.Tensor:
        if node.op == "get_attr":
            return functools.reduce(getattr, node.target.split("."), self.gm)
        if node.op == "placeholder":
            return self.example_inputs[self._placeholders.index(node)]
        raise ValueError(f"node {node.name!r} ({node.op}) is computed at run time, not a stored tensor")

    def _overwrite(self, node: fx.Node, tensor: torch.Tensor) -> None:
        # The real parameter is modified once, in place: every later call sees the pruned weight.
        target = self.value(node)
        with torch.no_grad():
            target.copy_(tensor)
        self.overwritten.append(target)

    def substitute(self, node: fx.Node, name: str, tensor: torch.Tensor) -> fx.Node:
        # A new constant, not the parameter overwritten: the user's model keeps its weights, and a
        # recompile computes its constants from the original weight again, as the first compile did.
        return self.add_constant(name, tensor)

    def add_constant(self, name: str, tensor: torch.Tensor) -> fx.Node:
        tensor = tensor.detach()  # calibrated from parameters; a constant must not carry autograd state
        attr = f"actprune_{_safe_name(name)}"
        self.gm.register_buffer(attr, tensor)
        # AOTAutograd lifts a Dynamo graph's parameters and buffers by the source Dynamo recorded for
        # each; a constant the pass made has none in user code, so it gets a name-only source.
        sources = getattr(self.gm, "_param_name_to_source", None)
        if sources is not None:
            sources[attr] = ConstantSource(f"actprune constant {attr}")
        anchor = next(n for n in self.graph.nodes if n.op != "placeholder")
        with self.graph.inserting_before(anchor):
            node = self.graph.get_attr(attr)
        node.meta["val"] = tensor
        return node

    def finish(self) -> None:
        eliminate_dead_code(self.graph)
        self.graph.lint()
        self.gm.recompile()
