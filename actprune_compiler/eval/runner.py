"""One evaluation run: build the (pruned or dense) program, compile it, score it, time it."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actprune_compiler.api import sparsify
from actprune_compiler.backends import compile_program
from actprune_compiler.calibration.hooks import check_calibration_text
from actprune_compiler.eval.data import calibration_text, load_wikitext2
from actprune_compiler.eval.harness import check_fewshot, make_lm, run_tasks
from actprune_compiler.eval.perplexity import perplexity, resolve_bos
from actprune_compiler.export import MAX_BATCH, export_causal_lm
from actprune_compiler.kernels.gpu import kernel_choices
from actprune_compiler.models.devices import model_device, placement
from actprune_compiler.models.load import load_model
from actprune_compiler.passes.select_linears import check_selection
from actprune_compiler.reporting.files import write_json
from actprune_compiler.reporting.runinfo import Timer, versions
from actprune_compiler.sparsity.config import SparsityConfig


@dataclass
class EvalOptions:
    tasks: tuple[str, ...] = ("wikitext2",)
    seqlen: int = 2048
    max_windows: int | None = None
    batch_size: int = 1  # windows per forward for perplexity; requests per forward for lm-eval
    bos: str = "auto"
    limit: int | float | None = None
    num_fewshot: int | None = None
    apply_chat_template: bool = False
    data_dir: str | None = None
    calib_data: str | None = None
    # False scores the uncompiled program (reference kernels, same masks up to float32 rounding):
    # for quality sweeps where Inductor's compile would cost more than the scoring. Recorded.
    compile: bool = True
    # Compile one decoder layer and reuse its code for every layer (backends/regional.py), weights as
    # inputs: compile time stops growing with depth, and Inductor's cache gives warm starts.
    regional: bool = False
    progress: bool = True

    def key(self) -> dict[str, Any]:
        """What makes two runs comparable (used by sweeps to skip finished runs); data_dir is a place,
        the sweep's data checksum stands for what is in it. regional appears only when on: results
        recorded before it existed keep matching."""
        key = {"tasks": list(self.tasks), "seqlen": self.seqlen, "max_windows": self.max_windows,
               "batch_size": self.batch_size, "bos": self.bos, "limit": self.limit, "num_fewshot": self.num_fewshot,
               "apply_chat_template": self.apply_chat_template, "compile": self.compile,
               "calib_data": self.calib_data}
        return {**key, "regional": True} if self.regional else key


def warm_up_shapes(options: EvalOptions) -> list[tuple[int, int]]:
    """Shapes that make Inductor build every graph scoring will use (a size-1 batch is its own graph)."""
    shapes = set()
    if "wikitext2" in options.tasks:
        shapes.add((options.batch_size, options.seqlen))
    if any(t != "wikitext2" for t in options.tasks):
        shapes.update({(1, 32), (max(2, options.batch_size), 32)})
    return sorted(shapes)


def _runner(model, tokenizer, config: SparsityConfig | None, options: EvalOptions,
            calib_text: tuple[str, str] | None = None):
    """(callable, sparsified program or None, calibration summary, seconds by stage) for a config or dense.

    calib_text: (text, description) already read (actprune eval reads it before the model loads, so that
    missing data fails at once); None reads options.calib_data here when the config needs it."""
    timer = Timer()
    if config is None:
        with timer("export_s"):
            program = export_causal_lm(model)
        sparsified, calibration = None, None
    else:
        needs_text = config.needs_calibration() or config.skip_sensitive
        if calib_text is None and needs_text:
            calib_text = calibration_text(options.calib_data, options.data_dir)
        text, source = calib_text if needs_text else (None, "")
        sparsified = sparsify(model, config, tokenizer=tokenizer, calib_text=text, calib_source=source)
        program, calibration = sparsified.program, calibration_record(sparsified.report)
        timer.seconds.update(sparsified.report["timings"])
    return program_runner(program, model_device(model), options), sparsified, calibration, timer.seconds


def calibration_record(report: dict[str, Any]) -> dict[str, Any] | None:
    """A result's `calibration`: the statistics' summary, and beside it what a recovery method learned or a
    rotation added and what each costs (report.json keeps them at its top level)."""
    calibration = report.get("calibration")
    for method in ("recovery", "rotation"):
        if report.get(method):
            calibration = {**(calibration or {}), method: report[method]}
    return calibration


def program_runner(program, device: torch.device | str, options: EvalOptions, *, with_mask: bool = False):
    """ids -> logits through the program, compiled unless options say not (an attention_mask input, when the
    program has one, is all ones: perplexity windows and right-padded lm-eval requests need no mask)."""
    # The whole graph with its weights frozen as constants, as actprune eval has always scored it (regional
    # compilation cannot freeze)
    module = (compile_program(program, freeze=not options.regional, regional=options.regional) if options.compile
              else program.module())

    def run(ids):  # token ids come from the tokenizer on the CPU; the program runs where its weights are
        with torch.no_grad():
            ids = ids.to(device)
            return module(ids, torch.ones_like(ids)) if with_mask else module(ids)

    return run


def check_fits(model_spec: str, model, tokenizer, config: SparsityConfig | None, options: EvalOptions,
               calib_text: tuple[str, str] | None = None, name: Callable[[str], str] = str) -> None:
    """Refuse, right after the load and before anything is exported or compiled, an evaluation this model
    cannot take: no tokenizer, windows longer than its positions or batches larger than a program takes, a
    config that does not fit its layers (passes/select_linears.check_selection), too little calibration
    text, more few-shot examples than a task has. name: how a message spells a setting (the CLI: --seqlen)."""
    if tokenizer is None:
        raise ValueError(f"model {model_spec!r} has no tokenizer; evaluation needs one")
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if "wikitext2" in options.tasks and positions and options.seqlen > positions:
        raise ValueError(f"{name('seqlen')} {options.seqlen} is longer than model {model_spec} takes: it has "
                         f"{positions} positions; give {name('seqlen')} {positions} or less")
    if options.batch_size > MAX_BATCH:
        raise ValueError(f"{name('batch_size')} {options.batch_size} is more than an exported program takes; "
                         f"give {name('batch_size')} {MAX_BATCH} or less")
    if config is not None:
        check_selection(model, config, name)
        if calib_text is not None:
            check_calibration_text(tokenizer, *calib_text, config, name)
    check_fewshot(options.tasks, options.num_fewshot, options.data_dir, name)


def evaluate(model_spec: str, config: SparsityConfig | None, options: EvalOptions, *, dtype: str = "default",
             device: str | None = None, loaded: tuple[Any, Any] | None = None,
             calib_text: tuple[str, str] | None = None, name: Callable[[str], str] = str) -> dict[str, Any]:
    """Score `model_spec` pruned by `config` (None: dense) through the compiled program.

    calib_text: the calibration (text, description), when the caller has read it already; None reads
    options.calib_data (when the config calibrates) after the model has loaded. name: how a message
    spells a setting (see check_fits)."""
    wall = time.perf_counter()
    model, tokenizer = loaded or load_model(model_spec, dtype, device)
    load_s = round(time.perf_counter() - wall, 3)
    if config is not None and calib_text is None and (config.needs_calibration() or config.skip_sensitive):
        calib_text = calibration_text(options.calib_data, options.data_dir)
    check_fits(model_spec, model, tokenizer, config, options, calib_text, name)
    runner, sparsified, calibration, stage_s = _runner(model, tokenizer, config, options, calib_text)
    stage_s = {"load_s": load_s, **stage_s}
    made = {"model": model_spec, "model_class": type(model).__name__, **placement(model),
            "pruning": config.label if config else "none", "config": config.to_dict() if config else None}
    return score(runner, model, tokenizer, options, wall, stage_s, made,
                  replaced=sparsified.replaced if sparsified else 0, calibration=calibration)


def score(runner, model, tokenizer, options: EvalOptions, wall: float, stage_s: dict[str, float],
           made: dict[str, Any], *, replaced: int, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Compile (warm up), score the tasks, and assemble the result: `made` says what was scored."""
    if options.compile:
        with torch.no_grad():  # compile up front, so runtime_s is scoring time alone
            start = time.perf_counter()
            for shape in warm_up_shapes(options):
                runner(torch.zeros(shape, dtype=torch.long))
            stage_s["compile_s"] = round(time.perf_counter() - start, 3)
    eval_start = time.perf_counter()
    metrics: dict[str, Any] = {}
    if "wikitext2" in options.tasks:
        text = load_wikitext2("test", options.data_dir)
        bos = resolve_bos(options.bos, tokenizer)
        metrics["wikitext2"] = {**perplexity(runner, tokenizer, text.text, seqlen=options.seqlen,
                                             max_windows=options.max_windows, batch_size=options.batch_size,
                                             bos=bos, progress=options.progress),
                                "source": text.source, "raw_sha256": text.sha256,
                                "text_sha256": text.text_sha256, "rows": text.rows}
    zero_shot = [t for t in options.tasks if t != "wikitext2"]
    if zero_shot:
        lm = make_lm(runner, model, tokenizer, options.batch_size)
        metrics.update(run_tasks(lm, zero_shot, data_dir=options.data_dir, limit=options.limit,
                                 num_fewshot=options.num_fewshot, apply_chat_template=options.apply_chat_template))
    now = time.perf_counter()
    return {
        **made, "options": options.key(), "compiled": options.compile, "metrics": metrics,
        "replaced_linears": replaced,
        "runtime_s": round(now - eval_start, 3),  # scoring alone; compilation is stages_s["compile_s"]
        "total_s": round(now - wall, 3), "stages_s": stage_s, "calibration": calibration,
        "versions": versions(), "machine": {"cpu": platform.processor() or platform.machine(),
                                            "threads": torch.get_num_threads()},
        "kernels": kernel_choices(),  # which GPU kernel each shape took (empty on CPU)
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    write_json(path, result)
