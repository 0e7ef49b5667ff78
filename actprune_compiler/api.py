"""The Python front door.

    load_model(spec)                  -> (model, tokenizer)
    sparsify(model, config)           -> SparsifiedProgram: the exported program, rewritten
    compile_program(program)          -> the program compiled by Inductor with actprune's lowering
    compile_model(model, config)      -> model.forward compiled by the torch.compile backend (KV cache)
    generate(model, ids, n, config)   -> greedy tokens from the decode loop: a static KV cache and one compiled
                                         single-token step (decode/)
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, fx, nn
from torch.export import ExportedProgram
from torch.utils.weak import WeakIdKeyDictionary

from actprune_compiler.backends.dynamo import compile_model
from actprune_compiler.backends.inductor import compile_program
from actprune_compiler.decode.loop import Decoder, Generation
from actprune_compiler.export import WRAPPER_PREFIX, export_causal_lm
from actprune_compiler.models.load import load_model
from actprune_compiler.passes import run_passes
from actprune_compiler.passes.graph_host import ExportedProgramHost
from actprune_compiler.passes.select_linears import check_selection, is_linear, is_nm_linear, is_quant_linear
from actprune_compiler.recovery.prepare import prepare
from actprune_compiler.reporting.runinfo import Timer
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.decision import LayerDecision
from actprune_compiler.sparsity.rotation import rotation_cost
from actprune_compiler.sparsity.stats import LayerStats

__all__ = ["Decoder", "Generation", "SparsifiedProgram", "compile_model", "compile_program", "count_ops", "generate",
           "layer_totals", "load_model", "sparsify"]
CACHE_STEP = 256  # a decoder's cache length is a multiple of this: nearby lengths share one compiled step


def count_ops(graph: fx.Graph) -> dict[str, int]:
    """How many nm_linear, plain linear and quantised dense linear nodes a graph holds."""
    nodes = list(graph.nodes)
    counts = {"nm_linear": sum(map(is_nm_linear, nodes)), "linear": sum(map(is_linear, nodes))}
    if quantized := sum(map(is_quant_linear, nodes)):
        counts["quant_linear"] = quantized
    return counts


def layer_totals(layers: list[dict[str, Any]]) -> dict[str, int]:
    decisions = [LayerDecision.from_dict(row["decided"]) for row in layers]
    reasons = Counter(d.reason for d in decisions if not d.is_sparse)
    return {"linears": len(layers), "replaced": sum(d.is_sparse for d in decisions),
            "dense_not_matched": reasons["not matched by modules"], "dense_excluded": reasons["excluded"],
            "dense_sensitive": reasons["sensitive"], "quantized": sum("quant" in row for row in layers),
            "decisions": dict(Counter(str(d) for d in decisions))}


@dataclass
class SparsifiedProgram:
    """A rewritten exported program, with what was decided per layer and how it was made."""

    program: ExportedProgram
    config: SparsityConfig
    layers: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def replaced(self) -> int:
        return layer_totals(self.layers)["replaced"]

    def module(self) -> nn.Module:
        return self.program.module()


def sparsify(model_or_program: nn.Module | ExportedProgram, config: SparsityConfig, *, tokenizer=None,
             calib_text: str | None = None, calib_source: str = "caller's text",
             stats: dict[str, LayerStats] | None = None, model: nn.Module | None = None,
             with_attention_mask: bool = False, copy_program: bool = True) -> SparsifiedProgram:
    """Export (a model) or copy (a program), calibrate if the method needs it, and apply the passes.

    Calibrated criteria/corrections and skip_sensitive run the eager model over `calib_text`; give
    `stats` to reuse statistics already gathered. A program is copied unless copy_program=False.
    """
    timer = Timer()
    if isinstance(model_or_program, ExportedProgram):
        program = copy.deepcopy(model_or_program) if copy_program else model_or_program
    elif isinstance(model_or_program, nn.Module):
        model = model_or_program
        check_selection(model, config)  # a config that does not fit fails now, not after the export
        with timer("export_s"):
            program = export_causal_lm(model, with_attention_mask=with_attention_mask)
    else:
        raise TypeError(f"sparsify takes a causal LM (nn.Module) or an ExportedProgram, "
                        f"not {type(model_or_program).__name__}")
    prepared = prepare(model, tokenizer, config, calib_text, source=calib_source, stats=stats, timer=timer)
    with timer("passes_s"):
        layers = run_passes(ExportedProgramHost(program, WRAPPER_PREFIX), config, prepared.stats,
                            keep_dense=frozenset(prepared.keep_dense), learned=prepared.learned)
    # A whole model's program prunes every layer recovery trained (a Dynamo graph may hold only some)
    pruned = {row["module"] for row in layers if LayerDecision.from_dict(row["decided"]).is_sparse}
    if stray := sorted(set(prepared.learned or {}) - pruned):
        raise ValueError(f"recovery learned values for {len(stray)} layers this program keeps dense "
                         f"({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}); they would be ignored")
    report = {"config": config.to_dict(), "label": config.label,
              "inputs": ["input_ids", "attention_mask"] if with_attention_mask else ["input_ids"],
              "totals": layer_totals(layers), "graph_ops": count_ops(program.graph), "calibration": prepared.summary,
              "recovery": prepared.recovery, "rotation": rotation_cost(layers) if config.rotation != "none" else None,
              "excluded_as_sensitive": prepared.keep_dense, "timings": timer.seconds, "layers": layers}
    return SparsifiedProgram(program, config, layers, report)


def _identity(value: Any) -> Any:
    """A value as part of a dictionary key: itself when it is a plain value, else the object's identity."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else id(value)


_decoders: WeakIdKeyDictionary = WeakIdKeyDictionary()  # model -> {(config, options, length): Decoder}


def generate(model: nn.Module, input_ids: Tensor, max_new_tokens: int, config: SparsityConfig | None = None,
             *, eos_token_id: int | None = None, **options: Any) -> Generation:
    """Greedy continuation of one prompt ([1, P] token ids) by the decode loop: the model pruned by `config`
    (None: dense), with a static KV cache and one compiled single-token step. The step is compiled on the
    first call and kept with the model, so later calls with the same config reuse it (a generation longer
    than the cache compiles a step for a longer one). options: as compile_model takes them (tokenizer,
    calib_text, stats, ...). Stops early only at eos_token_id, when given."""
    limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    needed = input_ids.shape[-1] + max_new_tokens
    length = -(-needed // CACHE_STEP) * CACHE_STEP
    if limit is not None:
        length = min(length, limit)  # a request beyond the model's positions is refused by generate, in a sentence
    key = (config, tuple(sorted((name, _identity(value)) for name, value in options.items())), length)
    decoders = _decoders.setdefault(model, {})
    if key not in decoders:
        decoders[key] = Decoder(model, config, max_length=length, **options)
    return decoders[key].generate(input_ids, max_new_tokens, eos_token_id=eos_token_id)
