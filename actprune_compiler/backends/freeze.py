"""Freezing: the one default (DEFAULT_FREEZE), the one refusal (regional compilation cannot freeze), and
freezing inside the torch.compile backend, for the plain `torch.compile(forward, backend="actprune",
options={"freeze": True})` call, as compile_model(..., freeze=True) freezes.

Dynamo passes a model's parameters to the backend as graph inputs unless Inductor's freezing was
already on while it traced (compile_model arranges that; a plain call does not). Here the backend
does what Dynamo would have done: each placeholder fed with an nn.Parameter becomes an attribute of
the graph, with the source Dynamo recorded for it, and Inductor compiles with freezing, folding and
prepacking the weights. The placeholders stay, unused, so Dynamo keeps passing the parameters: each
call checks that they are the frozen ones, unchanged (identity and version counter), and fails
loudly otherwise (Dynamo's guards would not notice a parameter replaced by one of the same shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import fx, nn
from torch._dynamo.source import ConstantSource

# Every front door (compile_model, compile_program, the plain torch.compile call) keeps the weights as graph
# inputs unless asked to freeze: then Inductor's FX graph cache can hold the compiled graphs (warm starts),
# regional compilation works (it cannot freeze), and the CPU GEMMs take weights packed once in actprune's
# weight cache, as fast as frozen ones. freeze=True folds them as constants; they must not change afterwards.
DEFAULT_FREEZE = False


def refuse_regional_freeze(regional: bool, freeze: bool, how: str = "freeze=False") -> None:
    """Regional compilation runs every layer of a kind through one compiled code, with that layer's weights as
    inputs: freezing them cannot go with it. `how` names the way out in the caller's words."""
    if regional and freeze:
        raise ValueError("regional compilation shares one compiled layer among the layers, so their weights stay "
                         f"graph inputs and cannot be frozen; use {how}")


def version_of(tensor: torch.Tensor) -> int:
    """The tensor's in-place version counter; -1 for an inference tensor, which has none."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def freeze_parameters(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> dict[int, nn.Parameter]:
    """Turn parameter placeholders into attributes of `gm`; return {input position: parameter}."""
    sources = getattr(gm, "_param_name_to_source", None)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if sources is None or len(placeholders) != len(example_inputs):
        return {}
    frozen = {i: value for i, value in enumerate(example_inputs) if isinstance(value, nn.Parameter)}
    with gm.graph.inserting_after(placeholders[-1]):
        for i, param in frozen.items():
            node, name = placeholders[i], f"actprune_frozen_{i}"
            gm.register_parameter(name, param)
            sources[name] = ConstantSource(f"actprune frozen {node.name}")  # the placeholder keeps the real one
            attr = gm.graph.get_attr(name)
            attr.meta.update(node.meta)
            node.replace_all_uses_with(attr)
    gm.recompile()
    return frozen


def call_with_frozen(compiled: Callable, frozen: dict[int, nn.Parameter]) -> Callable:
    """`compiled`, refusing to run once a frozen parameter was replaced or changed in place."""
    checks = [(i, p, version_of(p)) for i, p in frozen.items()]

    def call(*args):
        if any(args[i] is not p or version_of(p) != v for i, p, v in checks):
            raise RuntimeError(
                "the actprune backend froze this graph's weights when it compiled, and a parameter has since "
                "been replaced or changed in place; call torch._dynamo.reset() and compile again, or pass "
                "options={'freeze': False} to keep the weights as inputs")
        return compiled(*args)

    return call
