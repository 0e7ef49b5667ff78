"""The torch.compile backend "actprune": the same passes on Dynamo's graphs, then Inductor.

    model.forward = torch.compile(model.forward, backend="actprune", options={"pattern": "8:16"})
    model.generate(...)   # prefill and decode graphs, KV cache included, all rewritten

(`torch.compile(model, ...)` works for direct calls, but its `.generate` runs the uncompiled
module: Dynamo's OptimizedModule compiles only `forward`. `compile_model` does the right thing.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch._dynamo.backends.registry import _BACKENDS, register_backend
from torch._dynamo.utils import counters
from torch.utils.weak import WeakIdKeyDictionary

from actprune_compiler.backends.freeze import (
    DEFAULT_FREEZE,
    call_with_frozen,
    freeze_parameters,
    refuse_regional_freeze,
)
from actprune_compiler.backends.inductor import inductor_with_nm_lowering, inference_call
from actprune_compiler.backends.regional_graph import compile_graph_regions, regional_inductor
from actprune_compiler.models.devices import resolve_device
from actprune_compiler.passes import run_passes
from actprune_compiler.passes.graph_host import GraphModuleHost
from actprune_compiler.passes.select_linears import check_selection
from actprune_compiler.recovery.prepare import prepare
from actprune_compiler.sparsity.config import SparsityConfig, matches
from actprune_compiler.sparsity.constants import LearnedLayer
from actprune_compiler.sparsity.decision import LayerDecision
from actprune_compiler.sparsity.stats import LayerStats

log = logging.getLogger("actprune")
INNER_BACKENDS = ("inductor", "eager")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(SparsityConfig)}


@dataclass
class GraphRecord:
    """What the backend did to one Dynamo graph."""

    config: str
    rewritten: list[str]  # module paths whose linear became nm_linear (or got a pruned weight)
    dense: list[str]  # linears left as they were (not matched, or excluded)
    regions: dict | None = None  # compiled regionally: regions, kinds and regions per kind (regional_graph.py)


@dataclass
class BackendLog:
    graphs: list[GraphRecord] = field(default_factory=list)
    # parameter -> config label; weakly keyed, so a freed model's entries die with it and a new
    # parameter at a recycled id() is never mistaken for an old one
    pruned_weights: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)

    def reset(self) -> None:
        self.graphs.clear()
        self.pruned_weights.clear()


LOG = BackendLog()


@dataclass
class BackendOptions:
    config: SparsityConfig
    inner: str = "inductor"
    stats: dict[str, LayerStats] | None = None  # calibration statistics by module path
    keep_dense: frozenset[str] = frozenset()  # module paths chosen to stay dense (skip_sensitive)
    freeze: bool = DEFAULT_FREEZE  # fold the weights as constants (inference); see backends/freeze.py
    device: torch.device | None = None  # where every graph input must be; None: wherever the model is
    learned: dict[str, LearnedLayer] | None = None  # a recovery method's weight and bias by module path
    regional: bool = False  # compile each kind of decoder layer once (regional_graph.py)


EXTRA_OPTIONS = {"inner_backend": "inductor | eager", "stats": "calibration statistics by module path",
                 "keep_dense": "module paths to leave dense (what skip_sensitive chose)",
                 "learned": "a recovery method's learned values by module path (what compile_model trains)",
                 "freeze": f"fold the weights as constants (default {DEFAULT_FREEZE}; they must not change "
                           "afterwards)",
                 "device": "cpu, cuda or cuda:N: compile_model moves the model there; the backend refuses inputs "
                           "elsewhere",
                 "regional": "compile each kind of decoder layer once (compile_model(regional=True) sets it, and "
                             "traces with float attributes specialised)"}


def parse_options(options: dict[str, Any] | None) -> BackendOptions:
    """Backend options -> what the backend needs; every option that changes the result is either used
    or refused here, before anything is traced."""
    options = dict(options or {})
    inner = options.pop("inner_backend", "inductor")
    freeze = options.pop("freeze", DEFAULT_FREEZE)
    if not isinstance(freeze, bool):
        raise ValueError(f"freeze must be True or False, not {freeze!r}")
    if inner not in INNER_BACKENDS:
        raise ValueError(f"inner_backend {inner!r} is unknown; allowed: {', '.join(INNER_BACKENDS)}")
    device = options.pop("device", None)
    device = None if device is None else resolve_device(device)
    stats = options.pop("stats", None)
    keep_dense = options.pop("keep_dense", ())
    if isinstance(keep_dense, str):
        raise ValueError(f"keep_dense must be a list of module paths, not the string {keep_dense!r}")
    keep_dense = frozenset(keep_dense)
    learned = options.pop("learned", None)
    regional = options.pop("regional", False)
    if not isinstance(regional, bool):
        raise ValueError(f"regional must be True or False, not {regional!r}")
    refuse_regional_freeze(regional, freeze)
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"unknown actprune backend options {unknown}; allowed: "
                         f"{sorted(_CONFIG_FIELDS | set(EXTRA_OPTIONS))}")
    config = SparsityConfig(**options)
    hint = ("use compile_model(model, config, tokenizer=..., calib_text=...), which gathers it from the eager "
            "model first")
    if config.needs_statistics() and stats is None:
        raise ValueError(f"config {config.label!r} needs calibration statistics, which the backend cannot gather "
                         f"from a traced graph: {hint}, or pass options['stats']")
    if config.skip_sensitive and not keep_dense:
        raise ValueError(f"skip_sensitive={config.skip_sensitive} needs a sensitivity ranking: {hint}, or pass "
                         "options['keep_dense'] with the module paths to keep dense")
    if config.recovery != "none" and learned is None:
        raise ValueError(f"recovery {config.recovery!r} needs values trained on the eager model: {hint}, or pass "
                         "options['learned']")
    if config.recovery == "none" and learned:
        raise ValueError("options['learned'] holds a recovery method's values, but the config has recovery 'none'; "
                         "set recovery to the method that learned them")
    return BackendOptions(config, inner, stats, keep_dense, freeze, device, learned, regional)


def _parameters(host: GraphModuleHost) -> list[nn.Parameter]:
    """The graph's parameters: placeholders fed with them, or attributes when frozen."""
    values = (host.value(n) for n in host.graph.nodes if n.op in ("placeholder", "get_attr"))
    return [v for v in values if isinstance(v, nn.Parameter)]


def _refuse_repruning(host: GraphModuleHost, config: SparsityConfig) -> None:
    """Weight targets prune the real parameters once; pruning them again with another config is an error."""
    for value in _parameters(host):
        if value in LOG.pruned_weights:
            if LOG.pruned_weights[value] != config.label:
                raise ValueError(f"these weights were already pruned in place with "
                                 f"{LOG.pruned_weights[value]!r}; reload the model to prune them with "
                                 f"{config.label!r}")


def _require_device(example_inputs: Sequence[torch.Tensor], device: torch.device) -> None:
    """A graph input on another device would fail deep inside Inductor, or run there silently."""
    elsewhere = sorted({str(t.device) for t in example_inputs if isinstance(t, torch.Tensor) and t.device != device
                        and not (device.index is None and t.device.type == device.type)})
    if elsewhere:
        raise ValueError(f"the actprune backend was asked for device {device}, but graph inputs are on "
                         f"{', '.join(elsewhere)}; move the model and its inputs there (compile_model does it)")


def actprune_backend(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                     options: dict[str, Any] | None = None) -> Callable:
    """(Dynamo graph, real inputs) -> compiled callable, with actprune's passes applied first."""
    parsed = parse_options(options)
    config = parsed.config
    if parsed.device is not None:
        _require_device(example_inputs, parsed.device)
    host = GraphModuleHost(gm, example_inputs)
    if config.target == "weight":
        _refuse_repruning(host, config)
    rows = run_passes(host, config, parsed.stats, keep_dense=parsed.keep_dense, learned=parsed.learned)
    decided = [(r["module"], LayerDecision.from_dict(r["decided"])) for r in rows]
    rewritten = [module for module, decision in decided if decision.is_sparse]
    dense = [module for module, decision in decided if not decision.is_sparse]
    record = GraphRecord(config.label, rewritten, dense)
    LOG.graphs.append(record)
    newly = [t for t in host.overwritten if t not in LOG.pruned_weights]
    if newly:  # a recompile prunes the same weights again, to the same values: say it once
        for tensor in newly:
            LOG.pruned_weights[tensor] = config.label
        log.warning("pruned the weights of %d linear layers in place (%s); the model's parameters "
                    "are now sparse", len(newly), config.label)
    if parsed.inner == "eager":
        return gm.forward
    if parsed.regional and not torch.is_grad_enabled():
        regions = compile_graph_regions(gm, inductor_with_nm_lowering)
        record.regions = regions.summary()
        return regions.module.forward
    if parsed.regional:  # the regions are inference code; said, so a whole-graph compile is never a surprise
        log.warning("regional compilation is for inference, and this graph was traced with autograd "
                    "on, so it is compiled whole")
    if not parsed.freeze or torch.is_grad_enabled():  # freezing is for inference; a training call keeps inputs
        return inductor_with_nm_lowering(gm, example_inputs)
    frozen = freeze_parameters(gm, example_inputs)
    with torch._inductor.config.patch(freezing=True):
        return call_with_frozen(inductor_with_nm_lowering(gm, example_inputs), frozen)


def register() -> None:
    if "actprune" not in _BACKENDS:
        register_backend(name="actprune")(actprune_backend)


def config_of(config: SparsityConfig | dict[str, Any] | None) -> SparsityConfig:
    """compile_model's config: a SparsityConfig, a dict of its fields (as before), or None for the default one.
    The backend's own options are compile_model's keyword arguments, never silently taken from the dict."""
    if config is None or isinstance(config, SparsityConfig):
        return config or SparsityConfig()
    if not isinstance(config, dict):
        raise TypeError(f"compile_model takes a SparsityConfig (or a dict of its fields), not {type(config).__name__}")
    if options := sorted(set(config) & set(EXTRA_OPTIONS)):
        raise ValueError(f"{options[0]} is an option of compile_model, not a SparsityConfig field: pass it as "
                         f"compile_model(model, config, {options[0]}=...)")
    return SparsityConfig.from_dict(config)


def backend_options(model: nn.Module, config: SparsityConfig | dict[str, Any] | None, *, tokenizer=None,
                    calib_text: str | None = None, freeze: bool = DEFAULT_FREEZE, regional: bool = False,
                    device: str | torch.device | None = None, inner_backend: str = "inductor",
                    stats: dict[str, LayerStats] | None = None, keep_dense: list[str] | None = None,
                    learned: dict[str, LearnedLayer] | None = None) -> dict[str, Any]:
    """The backend's options for `config` on this model, with what the backend cannot gather from a traced
    graph gathered here from the eager model: calibration statistics (calibrated criteria and corrections),
    the sensitivity ranking (skip_sensitive) and a recovery method's learned values, unless given. Everything
    is checked now, not at the first call. device: the model is moved there first."""
    config = config_of(config)
    refuse_regional_freeze(regional, freeze)  # before any calibration or training
    if device is not None:
        model.to(resolve_device(device))
    check_selection(model, config)  # Dynamo's graphs may each hold some layers: the whole model is checked here
    prepared = prepare(model, tokenizer, config, calib_text, stats=stats, keep_dense=keep_dense, learned=learned)
    options = {**config.to_dict(), "inner_backend": inner_backend, "stats": prepared.stats,
               "keep_dense": prepared.keep_dense, "learned": prepared.learned, "freeze": freeze,
               "regional": regional, "device": device}
    parsed = parse_options(options)
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if unknown := sorted(parsed.keep_dense - linears):
        raise ValueError(f"keep_dense names {unknown}, which are not linear layers of this model")
    return options


def compile_model(model: nn.Module, config: SparsityConfig | dict[str, Any] | None = None, *, tokenizer=None,
                  calib_text: str | None = None, freeze: bool = DEFAULT_FREEZE, regional: bool = False,
                  device: str | torch.device | None = None, inner_backend: str = "inductor",
                  stats: dict[str, LayerStats] | None = None, keep_dense: list[str] | None = None,
                  learned: dict[str, LearnedLayer] | None = None, dynamic: bool | None = True,
                  **compile_kwargs) -> nn.Module:
    """Compile `model.forward` in place with the actprune backend, so `model.generate` uses it too.

    Inference only. Calibrated criteria/corrections and skip_sensitive run the eager model over
    `calib_text` once, here, and hand the statistics to the backend (or give `stats`, `keep_dense` and a
    recovery method's `learned` values gathered before; see backend_options). freeze=False (the default,
    backends/freeze.py) keeps the weights as graph inputs, so Inductor's FX graph cache holds the compiled
    graphs and a second process with the same model and config starts warm (its CPU GEMMs take weights
    packed once in actprune's weight cache, as fast as frozen ones); freeze=True folds them as constants
    and Inductor caches nothing.
    dynamic=True: prompt and cache lengths are symbolic from the first compile; left to Dynamo's
    automatic detection they are not (a prompt length is followed by decode's length 1, which is
    always specialised), and every new prompt length recompiles.
    regional=True traces the model whole but compiles each kind of decoder layer once (regional_graph.py):
    compile time no longer grows with depth, and every per-layer value is kept. It cannot freeze.
    device: move the model there first; the backend then refuses inputs elsewhere. inner_backend: inductor,
    or eager (the rewritten graph run as it is).
    """
    options = backend_options(model, config, tokenizer=tokenizer, calib_text=calib_text, freeze=freeze,
                              regional=regional, device=device, inner_backend=inner_backend, stats=stats,
                              keep_dense=keep_dense, learned=learned)
    compiled = torch.compile(model.forward, backend="actprune", options=options, dynamic=dynamic, **compile_kwargs)
    model.forward = inference_call(compiled, freeze)
    return model


def compile_dense(model: nn.Module, *, freeze: bool = DEFAULT_FREEZE, regional: bool = False) -> nn.Module:
    """The baseline for compile_model: the dense model compiled the same way by Inductor as it comes
    (regional: each kind of decoder layer once, as compile_model(regional=True) does)."""
    refuse_regional_freeze(regional, freeze)
    backend = regional_inductor if regional else "inductor"
    model.forward = inference_call(torch.compile(model.forward, backend=backend, dynamic=True), freeze)
    return model


def report(model: nn.Module | None = None, modules: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Graphs compiled, recompilations, graph breaks, linears rewritten per graph, and (given the model)
    the matching linears that never appeared in a rewritten graph: those ran dense, in eager mode."""
    seen = {path for g in LOG.graphs for path in g.rewritten}
    out = {"graphs_compiled": len(LOG.graphs),  # for one compiled forward: 1 + its recompilations
           "dynamo_frames_compiled": counters["frames"]["ok"],
           "graph_breaks": sum(counters["graph_break"].values()),
           "rewritten_per_graph": [len(g.rewritten) for g in LOG.graphs],
           "dense_linears_per_graph": [len(g.dense) for g in LOG.graphs],
           "configs": sorted({g.config for g in LOG.graphs}),
           "regions": [g.regions for g in LOG.graphs if g.regions is not None]}
    if model is not None:
        wanted = modules or SparsityConfig().modules
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and matches(name, wanted)]
        out["matching_linears"] = len(linears)
        out["ran_outside_rewritten_graphs"] = [name for name in linears if name not in seen]
    return out
