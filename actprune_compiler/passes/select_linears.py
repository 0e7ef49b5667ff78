"""Find the linear nodes of a graph and decide, from the config, which ones to rewrite."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn

import actprune_compiler.ops  # noqa: F401  (registers actprune::nm_linear, which is_nm_linear names)
from actprune_compiler.passes.graph_host import GraphHost, fake_value
from actprune_compiler.sparsity.config import DEFAULT_MODULES, SparsityConfig, matches
from actprune_compiler.sparsity.decision import LayerDecision
from actprune_compiler.sparsity.quant import check_quantizable, layer_format, quant_format

# aten.linear in exported graphs (rewrite before decomposing); torch-level linear in Dynamo graphs.
LINEAR_TARGETS = (torch.ops.aten.linear.default, torch._C._nn.linear, torch.nn.functional.linear)


def is_linear(node: fx.Node) -> bool:
    """A plain linear layer's node, in an exported or a Dynamo graph."""
    return node.op == "call_function" and node.target in LINEAR_TARGETS


def is_nm_linear(node: fx.Node) -> bool:
    """A linear layer the passes rewrote: one actprune.nm_linear node."""
    return node.op == "call_function" and node.target is torch.ops.actprune.nm_linear.default


def is_quant_linear(node: fx.Node) -> bool:
    """A linear layer left dense whose weight the passes quantised: one actprune.quant_linear node."""
    return node.op == "call_function" and node.target is torch.ops.actprune.quant_linear.default


@dataclass
class LinearSite:
    node: fx.Node
    path: str  # module path as in model.named_modules(), e.g. "model.layers.0.self_attn.q_proj"
    in_features: int
    out_features: int
    decision: LayerDecision = LayerDecision.dense("not matched by modules")
    before: str = ""  # the node as the pass found it, and as it left it (for `actprune inspect`)
    after: str = ""

    @property
    def selected(self) -> bool:
        return self.decision.is_sparse

    @property
    def n(self) -> int:
        return self.decision.n

    @property
    def m(self) -> int:
        return self.decision.m

    @property
    def x(self) -> fx.Node:
        return self.node.args[0]

    @property
    def weight(self) -> fx.Node:
        return self.node.args[1]

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def bias(self) -> fx.Node | None:
        return self.node.args[2] if len(self.node.args) > 2 else self.node.kwargs.get("bias")


def module_path(node: fx.Node, prefix: str = "") -> str:
    """The innermost module that called this node, in named_modules() spelling."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return named_modules_spelling(list(stack.values())[-1][0]).removeprefix(prefix)


def named_modules_spelling(path: str) -> str:
    """A module path as named_modules() spells it; Dynamo spells L['self'].model.layers[0].mlp or
    L['args'][0].model.layers.0.mlp, export model.layers.0.mlp."""
    path = re.sub(r"^L\['[^']+'\](\[\d+\])*\.?", "", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return re.sub(r"\['([^']+)'\]", r".\1", path)


def format_node(node: fx.Node) -> str:
    args = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in node.args)
    kwargs = "".join(f", {k}={v.name if isinstance(v, fx.Node) else repr(v)}" for k, v in node.kwargs.items())
    return f"{node.name} = {node.target}({args}{kwargs})"


def _weight_shape(node: fx.Node) -> tuple[int, int]:
    val = fake_value(node.args[1])
    if val is None:
        raise ValueError(f"linear node {node.name!r} has no shape information on its weight")
    out_features, in_features = val.shape
    return int(in_features), int(out_features)


def decide(path: str, in_features: int, config: SparsityConfig, keep_dense: frozenset[str]) -> LayerDecision:
    """The config's decision about a matched linear layer (module path, input features)."""
    if matches(path, config.exclude):
        return LayerDecision.dense("excluded")
    if path in keep_dense:
        return LayerDecision.dense("sensitive")
    n, m = config.parsed_pattern.group(in_features)
    if in_features % m:
        raise ValueError(
            f"layer {path} has {in_features} input features, not a multiple of M={m} "
            f"(pattern {config.pattern}); choose a pattern whose M divides {in_features} "
            f"or leave the layer dense with exclude={path!r}")
    if not 0 < n < m:
        raise ValueError(
            f"pattern {config.pattern} keeps {n} of the {m} input features of layer {path}, which is "
            f"{'no sparsity' if n else 'nothing'}; choose a ratio that keeps between 1 and {m - 1} of them")
    return LayerDecision.sparse(config.target, n, m)


def check_selection(model: nn.Module, config: SparsityConfig, name: Callable[[str], str] = str) -> None:
    """Refuse, before anything is exported or compiled, a config that does not fit the model's linear layers:
    a modules or exclude pattern that matches none of them (a typo in exclude would prune, silently, the
    layers meant to stay dense), a pattern whose M does not divide a pruned layer's input features, or a
    skip_sensitive that would keep every pruned layer dense. The default modules need only match some
    layers (a model may lack a kind). name: how a message spells a config field (the CLI: --exclude)."""
    linears = {path: module for path, module in model.named_modules() if isinstance(module, nn.Linear)}
    if not linears:
        return
    if config.quant != "none":
        check_quantizable(next(iter(linears.values())).weight, config.quant, name("quant"))
        for path, module in linears.items():
            try:
                fmt = layer_format(config.quant, config.selects(path), module.in_features)
                quant_format(fmt, module.out_features, module.in_features)
            except ValueError as error:
                raise ValueError(f"{name('quant')} {config.quant} cannot hold layer {path}: {error}") from None
    layers = {path: module.in_features for path, module in linears.items()}
    names = ", ".join(sorted({path.rsplit(".", 1)[-1] for path in layers}))
    given = config.modules if config.modules != DEFAULT_MODULES else ()
    for pattern in given:
        if not any(matches(path, (pattern,)) for path in layers):
            raise ValueError(f"{name('modules')} pattern {pattern!r} matches none of the model's {len(layers)} linear "
                             f"layers; their names are {names} (e.g. {next(iter(layers))})")
    selected = {path: features for path, features in layers.items() if matches(path, config.modules)}
    for pattern in config.exclude:
        if not any(matches(path, (pattern,)) for path in selected):
            raise ValueError(f"{name('exclude')} pattern {pattern!r} matches none of the {len(selected)} linear layers "
                             f"that {name('modules')} selects, so it would keep nothing dense; their names are "
                             f"{', '.join(sorted({p.rsplit('.', 1)[-1] for p in selected})) or 'none'}")
    pruned = {path: features for path, features in layers.items() if config.selects(path)}
    for path, features in pruned.items():
        keep, group = config.parsed_pattern.group(features)
        if features % group:
            raise ValueError(f"{name('pattern')} {config.pattern} prunes groups of M={group} input features, and layer "
                             f"{path} has {features}, not a multiple of {group}; choose an M that divides {features}, "
                             f"or keep the layer dense with {name('exclude')} {path}")
        if not 0 < keep < group:
            raise ValueError(f"{name('pattern')} {config.pattern} keeps {keep} of the {group} input features of layer "
                             f"{path}, which is {'no sparsity' if keep else 'nothing'}; choose a ratio that keeps "
                             f"between 1 and {group - 1} of them")
    if pruned and config.skip_sensitive >= len(pruned):
        raise ValueError(f"{name('skip_sensitive')} {config.skip_sensitive} would keep all {len(pruned)} layers that "
                         f"would be pruned dense; give at most {len(pruned) - 1}")


def select_linears(host: GraphHost, config: SparsityConfig,
                   keep_dense: frozenset[str] = frozenset()) -> list[LinearSite]:
    """Every linear node, in graph order, with the config's decision about it.

    keep_dense: module paths chosen to stay dense (e.g. the most sensitive layers). A config that
    leaves a graph with linear layers but nothing to prune is an error, never a dense no-op.
    """
    sites = []
    for node in host.graph.nodes:
        if not is_linear(node):
            continue
        in_features, out_features = _weight_shape(node)
        site = LinearSite(node, module_path(node, host.module_prefix), in_features, out_features)
        site.before = site.after = format_node(node)
        if matches(site.path, config.modules):
            site.decision = decide(site.path, site.in_features, config, keep_dense)
        sites.append(site)
    matched = [s for s in sites if matches(s.path, config.modules)]
    if sites and not matched:
        names = sorted({s.path.rsplit(".", 1)[-1] for s in sites})
        raise ValueError(f"modules {', '.join(config.modules)} match none of the {len(sites)} linear layers; "
                         f"their names are {', '.join(names)} (e.g. {sites[0].path})")
    if matched and not any(s.selected for s in matched):
        raise ValueError(f"exclude {', '.join(config.exclude) or '()'} (and the layers kept dense as sensitive) "
                         f"leave none of the {len(matched)} layers that modules match to prune")
    return sites
