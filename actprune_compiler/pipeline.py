"""model spec -> load -> export -> (calibrate) -> passes -> artifact, timed; what `actprune compile` runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actprune_compiler.api import SparsifiedProgram, count_ops, layer_totals, sparsify, versions
from actprune_compiler.artifact import save_artifact
from actprune_compiler.backends import compile_program
from actprune_compiler.config import SparsityConfig
from actprune_compiler.export import export_causal_lm
from actprune_compiler.models import load_model


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


@dataclass
class Compiled:
    model: nn.Module
    tokenizer: Any
    sparsified: SparsifiedProgram
    report: dict[str, Any]


def build(model_spec: str, config: SparsityConfig, *, dtype: str = "float32", calib_data: str | None = None,
          with_attention_mask: bool = False, loaded: tuple[nn.Module, Any] | None = None) -> Compiled:
    """Load, export, calibrate if the method needs it, and rewrite. Nothing is written to disk."""
    timer = Timer()
    with timer("load_s"):
        model, tokenizer = loaded or load_model(model_spec, dtype)
    with timer("export_s"):
        program = export_causal_lm(model, with_attention_mask=with_attention_mask)
    stats = calibration = None
    if config.needs_calibration():
        from actprune_compiler.passes.calibrate import calibrate

        with timer("calibrate_s"):
            stats, calibration = calibrate(model, tokenizer, config, calib_data)
    sensitive = []
    if config.skip_sensitive:
        from actprune_compiler.sensitivity import layer_sensitivity

        with timer("sensitivity_s"):
            ranking = layer_sensitivity(model, tokenizer, config, calib_data, stats)
        sensitive = [row["module"] for row in ranking[: config.skip_sensitive]]
    with timer("passes_s"):
        effective = config.replace(exclude=config.exclude + tuple(sensitive), skip_sensitive=0)
        sparsified = sparsify(program, effective, stats, copy_program=False)
    report = {
        "model": model_spec, "model_class": type(model).__name__, "dtype": str(dtype),
        "config": config.to_dict(), "label": config.label,
        "inputs": ["input_ids", "attention_mask"] if with_attention_mask else ["input_ids"],
        "totals": layer_totals(sparsified.layers), "graph_ops": count_ops(sparsified.program.graph),
        "calibration": calibration, "excluded_as_sensitive": sensitive, "timings": timer.seconds,
        "versions": versions(),
        "layers": sparsified.layers,
    }
    return Compiled(model, tokenizer, sparsified, report)


def check_compiled(compiled: Compiled, seq_len: int = 64, batch: int = 2) -> dict[str, Any]:
    """Compile with Inductor and compare one forward with the uncompiled (reference-kernel) program.

    In float32 a few near-tied mask choices flip between the two (rounding differs upstream) and
    each flip moves later layers, so max |diff| can be large while both are correct; the float64
    check (`--dtype float64`) shows agreement to ~1e-10. Top-1 agreement is reported too.
    """
    vocab = compiled.model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    program = compiled.sparsified.program
    with torch.no_grad():
        start = time.perf_counter()
        reference = program.module()(ids)
        eager_s = time.perf_counter() - start
        runner = compile_program(program)
        start = time.perf_counter()
        result = runner(ids)
        compile_s = time.perf_counter() - start
    diff = (result - reference).abs()
    return {"inductor_compile_and_first_run_s": round(compile_s, 3), "uncompiled_forward_s": round(eager_s, 3),
            "dtype": str(reference.dtype).removeprefix("torch."), "shape": [batch, seq_len],
            "max_abs_diff_vs_uncompiled": float(diff.max()), "mean_abs_diff_vs_uncompiled": float(diff.mean()),
            "top1_agreement": float((result.argmax(-1) == reference.argmax(-1)).float().mean())}


def compile_to_artifact(model_spec: str, config: SparsityConfig, out_dir: str | Path, *, dtype: str = "float32",
                        calib_data: str | None = None, with_attention_mask: bool = False,
                        check: bool = True) -> Compiled:
    compiled = build(model_spec, config, dtype=dtype, calib_data=calib_data,
                     with_attention_mask=with_attention_mask)
    if check:
        compiled.report["check"] = check_compiled(compiled)
    save_artifact(out_dir, compiled.sparsified.program, compiled.report)
    return compiled
