"""Activation target: replace each selected linear with one actprune.nm_linear node."""

from __future__ import annotations

import torch
from torch import fx

from actprune_compiler.passes.graph_host import GraphHost
from actprune_compiler.passes.select_linears import LinearSite, format_node
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.constants import LayerConstants, LearnedLayer, layer_constants
from actprune_compiler.sparsity.stats import LayerStats


def insert_nm_linear(host: GraphHost, sites: list[LinearSite], config: SparsityConfig,
                     stats: dict[str, LayerStats] | None = None,
                     learned: dict[str, LearnedLayer] | None = None) -> dict[str, LayerConstants]:
    """Rewrite every selected site; return the constants each one received, by module path.

    learned: a recovery method's weight and bias per module path; its weight replaces the layer's."""
    made = {}
    rotated: dict[fx.Node, tuple[torch.Tensor, fx.Node]] = {}  # an input's x @ Q, reused by layers sharing x and Q
    for site in (s for s in sites if s.selected):
        weight = host.value(site.weight)
        # the seed's module swap (config.drop_bias) computes x·Wᵀ without the layer's bias
        bias_node = config.kept_bias(site.bias)
        bias = host.value(bias_node) if bias_node is not None else None
        mine = (learned or {}).get(site.path)
        if config.recovery != "none" and mine is None:
            raise ValueError(f"recovery {config.recovery!r} learned no values for {site.path}, which this graph "
                             "prunes: train them with the same config and the same layers kept dense")
        consts = layer_constants(config, weight, bias, (stats or {}).get(site.path), mine)
        if consts.bias is not None:  # a new constant: the model's own bias parameter stays untouched
            kind = "learned_bias" if mine is not None else "corrected_bias"
            bias_node = host.add_constant(f"{site.path}.{kind}", consts.bias)
        weight_node, x_node = site.weight, site.x
        if consts.weight is not None:
            kind = "rotated_weight" if consts.rotation is not None else "learned_weight"
            weight_node = host.substitute(weight_node, f"{site.path}.{kind}", consts.weight)
        if consts.rotation is not None:
            x_node = _rotate(host, site, consts, rotated)
        kwargs = {"criterion": config.criterion, "correction": config.correction}
        for name in ("score_scale", "shift"):
            if (t := getattr(consts, name)) is not None:
                kwargs[name] = host.add_constant(f"{site.path}.{name}", t)
        with host.graph.inserting_before(site.node):
            new = host.graph.call_function(torch.ops.actprune.nm_linear.default,
                                           (x_node, weight_node, bias_node, site.n, site.m), kwargs)
        new.meta.update(site.node.meta)
        new.meta["actprune"] = {"module": site.path, "pattern": f"{site.n}:{site.m}",
                                "criterion": config.criterion, "correction": config.correction,
                                **({"rotation": config.label} if consts.rotation is not None else {})}
        site.node.replace_all_uses_with(new)
        host.graph.erase_node(site.node)
        site.node = new
        site.after = format_node(new)
        made[site.path] = consts
    return made


def _rotate(host: GraphHost, site: LinearSite, consts: LayerConstants,
            rotated: dict[fx.Node, tuple[torch.Tensor, fx.Node]]) -> fx.Node:
    """The node computing site.x @ Q: a new one (its K² multiply-adds per token counted in consts), or the one
    a layer with the same input and the same Q made (q/k/v and gate/up see the same calibration inputs)."""
    q = consts.rotation
    if (done := rotated.get(site.x)) is not None and torch.equal(done[0], q):
        return done[1]
    q_node = host.add_constant(f"{site.path}.rotation", q)
    with host.graph.inserting_before(site.node):
        node = host.graph.call_function(torch.ops.aten.matmul.default, (site.x, q_node))
    # the layer's place in the model (inspect and regional compilation read it) and x @ Q's own fake value
    node.meta.update({k: site.node.meta[k] for k in ("nn_module_stack", "stack_trace") if k in site.node.meta})
    for key in ("val", "example_value"):
        if isinstance(fake := site.x.meta.get(key), torch.Tensor) and hasattr(fake, "fake_mode"):
            with fake.fake_mode:
                node.meta[key] = fake @ fake.new_empty(q.shape)
    consts.rotation_macs = q.shape[0] * q.shape[1]
    rotated[site.x] = (q, node)
    return node
