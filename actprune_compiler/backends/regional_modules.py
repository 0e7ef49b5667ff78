"""Regional compilation for the torch.compile front door: compile modules inside the layers, not the model.

The exported-program path cuts its flat graph into decoder layers (regional.py). A decoder layer under
torch.compile cannot share its code with the other layers: it updates the KV cache at `self.layer_idx`,
an integer Dynamo specialises on, so every layer would get a graph of its own. The units compiled here
are the largest modules whose forward takes no cache: inside a decoder layer that is the MLP (its
activation and the mask of its down projection fuse), and, inside the attention (which takes the cache),
each pruned projection on its own. Dynamo keys compiled code by the forward's code object and guards on
the tensors' metadata, not on which module runs it, so every unit of one class and shape runs one
compiled graph, and compile time no longer grows with depth. Norms, rotary tables, attention itself,
the embedding and lm_head run eagerly.

One compiled graph serves many layers, so nothing in it may be specific to one layer: which linears are
pruned is decided here, on the model's real module paths, and configs with per-layer values (criteria
scaled by weight norms or calibration statistics, corrections, recovery) or a weight target (which
prunes the weights of the layer that happened to compile first) are refused. Units compile with
fullgraph=True, so a unit Dynamo cannot compile (a graph break, its recompile limit) is an error, never
an eager dense layer.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import torch
from torch import nn

from actprune_compiler.sparsity.config import SparsityConfig, matches

_CACHE_ARGUMENT = re.compile(r"cache|past_key|layer_past", re.IGNORECASE)
# Every single-linear unit shares nn.Linear.forward's code: each (shape, bias) kind takes up to four graphs
# (batch 1 or more, prefill or decode), past Dynamo's default limit of 8 for three kinds.
RECOMPILE_LIMIT = 64
_INSIDE_A_BLOCK = re.compile(r"(^|\.)\d+\.")  # below a child of a ModuleList: model.layers.3.mlp


def takes_cache(module: nn.Module) -> bool:
    """Whether the module's forward has a KV-cache argument (it reads per-layer state Dynamo specialises on)."""
    return any(_CACHE_ARGUMENT.search(name) for name in inspect.signature(module.forward).parameters)


def pruned_linears(model: nn.Module, config: SparsityConfig, keep_dense: frozenset[str]) -> set[str]:
    """Module paths of the linears the config prunes: the passes' own decision, on the real paths."""
    from actprune_compiler.passes.select_linears import decide

    return {path for path, module in model.named_modules() if isinstance(module, nn.Linear)
            and matches(path, config.modules) and decide(path, module.in_features, config, keep_dense).is_sparse}


def units(model: nn.Module, pruned: set[str]) -> list[str]:
    """The module paths to compile: a pruned linear, or a module inside a repeated block (a decoder layer)
    without a cache argument whose linears (one at least) are all pruned, whichever is larger; a module
    holding an unpruned linear is split."""
    found: list[str] = []

    def visit(path: str, module: nn.Module) -> None:
        linears = [f"{path}.{name}".strip(".") for name, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not any(name in pruned for name in linears):
            return
        whole = isinstance(module, nn.Linear) or (_INSIDE_A_BLOCK.search(path) and not takes_cache(module))
        if whole and all(name in pruned for name in linears):
            found.append(path)
            return
        for name, child in module.named_children():
            visit(f"{path}.{name}".strip("."), child)

    visit("", model)
    return found


def refuse_per_layer_values(config: SparsityConfig, freeze: bool, how: str = "regional=False") -> None:
    """One compiled unit serves every layer: refuse what would differ from layer to layer, in one sentence.
    `how` names the switch that turns regional compilation off where the user turned it on."""
    from actprune_compiler.sparsity.criteria import CRITERIA

    why = None
    if config.target == "weight":
        why = "a weight target prunes the weights of the one layer whose call compiled the shared graph"
    elif config.needs_statistics():
        why = f"config {config.label!r} uses calibration statistics, which differ from layer to layer"
    elif CRITERIA[config.criterion].static_scale is not None:
        why = f"criterion {config.criterion!r} scales scores by each layer's own weights"
    elif config.recovery != "none":
        why = f"recovery {config.recovery!r} learns values for each layer"
    elif freeze:
        why = "freezing would bake the first layer's weights into the graph every layer runs"
    if why:
        raise ValueError(f"regional compilation shares one compiled graph among layers, but {why}; "
                         f"compile the whole model instead ({how})")


def _compile_each(model: nn.Module, paths: list[str], backend: str, options: dict[str, Any] | None,
                  dynamic: bool | None, **compile_kwargs) -> None:
    """Compile each unit's forward in place, weights as inputs (no freezing): one options object for
    all units, so Dynamo's backend check lets them share code. Inference only, like compile_model: the
    model's forward runs without autograd (once per call, not per unit: a unit is called 150 times per
    token)."""
    if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    compile_kwargs.setdefault("fullgraph", True)
    for path in paths:
        unit = model.get_submodule(path)
        unit.forward = torch.compile(unit.forward, backend=backend, options=options, dynamic=dynamic,
                                     **compile_kwargs)
    forward = model.forward

    @functools.wraps(forward)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return forward(*args, **kwargs)

    model.forward = without_grad
    model.actprune_units = paths  # what report() looks for: the units of this model


def compile_units(model: nn.Module, config: SparsityConfig, options: dict[str, Any], keep_dense: frozenset[str],
                  dynamic: bool | None = True, **compile_kwargs) -> list[str]:
    """Compile the units holding the linears the config prunes with the actprune backend; their paths.

    The backend is told to prune every linear it sees (modules '*', nothing excluded): the units hold
    only linears chosen here, on the model's real paths."""
    pruned = pruned_linears(model, config, keep_dense)
    if not pruned:
        raise ValueError(f"no linear layer of this model is pruned by {config.label!r} (modules "
                         f"{list(config.modules)}, exclude {list(config.exclude)}, {len(keep_dense)} kept dense), "
                         "so there is nothing to compile regionally")
    paths = units(model, pruned)
    shared = {**options, "modules": ["*"], "exclude": [], "keep_dense": [], "skip_sensitive": 0, "freeze": False,
              "regional_unit": True}
    _compile_each(model, paths, "actprune", shared, dynamic, **compile_kwargs)
    return paths


def compile_dense_units(model: nn.Module, config: SparsityConfig, dynamic: bool | None = True) -> list[str]:
    """The baseline for compile_units: the same units compiled by Inductor as it comes, nothing pruned."""
    paths = units(model, pruned_linears(model, config, frozenset()))
    _compile_each(model, paths, "inductor", None, dynamic)
    return paths


def unit_of(path: str, unit_paths: list[str]) -> tuple[str, str] | None:
    """(unit, the path inside it) for a module path inside one of the units; the unit itself is ''."""
    for unit in unit_paths:
        if path == unit:
            return unit, ""
        if path.startswith(unit + "."):
            return unit, path[len(unit) + 1:]
    return None
