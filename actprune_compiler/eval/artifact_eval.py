"""`actprune eval --model ARTIFACT`: score an `actprune compile` artifact's program.pt2 as it was saved."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

from actprune_compiler.artifact.folder import input_ranges, load_program, load_report
from actprune_compiler.eval.compiled_code import fxgraph_cache_since, load_compiled_code
from actprune_compiler.eval.harness import check_fewshot
from actprune_compiler.eval.runner import EvalOptions, calibration_record, program_runner, score, warm_up_shapes
from actprune_compiler.models.gguf import pretrained_source
from actprune_compiler.models.load import gguf_file
from actprune_compiler.reporting.runinfo import Timer

log = logging.getLogger("actprune")


def evaluate_artifact(folder: str | Path, options: EvalOptions, *, report: dict[str, Any] | None = None,
                      name: Callable[[str], str] = str) -> dict[str, Any]:
    """Score an `actprune compile` artifact: its program.pt2 as saved (not re-exported), on the device and in
    the dtype it was compiled in, with its model's tokenizer and config (never its weights).

    The result is the one a fresh `evaluate(model, config, ...)` gives, plus "artifact": the folder.
    name: how a message spells a setting (the CLI: --num-fewshot)."""

    wall = time.perf_counter()
    report = report if report is not None else load_report(folder)
    tokenizer, config = _tokenizer_and_config(report["model"], report["dtype"], folder)
    timer = Timer()
    with timer("load_s"):
        program = load_program(folder)
    check_window_shapes(program, options, folder)
    check_fewshot(options.tasks, options.num_fewshot, options.data_dir, name)
    compiled_code = _compiled_code(folder, report, options)
    before = dict(counters["inductor"])
    device = report["device"]
    runner = program_runner(program, device, options, with_mask="attention_mask" in report.get("inputs", ()))
    made = {"model": report["model"], "model_class": report["model_class"], "device": device,
            "dtype": report["dtype"], "pruning": report["label"], "config": report["config"],
            "artifact": str(folder), **({"compiled_code": compiled_code} if compiled_code else {})}
    stand_in = ProgramModel(config, device, report["model"])
    result = score(runner, stand_in, tokenizer, options, wall, timer.seconds, made,
                   replaced=report["totals"]["replaced"], calibration=calibration_record(report))
    if compiled_code:  # how many graphs came from it: every one, unless torch or actprune's lowering changed
        compiled_code["fxgraph_cache"] = fxgraph_cache_since(before)
    return result


def _compiled_code(folder: str | Path, report: dict[str, Any], options: EvalOptions) -> dict[str, Any] | None:
    """Load the artifact's compiled code into Inductor's caches when this evaluation compiles regionally, as
    it was made; say so when it is there but unused."""
    if "compiled_code" not in report:
        return None
    if not (options.compile and options.regional):
        log.info("%s carries compiled code for regional compilation; this evaluation compiles %s and does not use "
                 "it", folder, "nothing (--no-compile)" if not options.compile else
                 "the whole graph (add --regional to use it)")
        return None
    return load_compiled_code(folder)


def check_window_shapes(program, options: EvalOptions, folder: str | Path) -> None:
    """Refuse, before anything compiles, window shapes the program's dynamic shapes do not allow."""
    (batch_min, batch_max), (seq_min, seq_max) = input_ranges(program)
    if "wikitext2" in options.tasks and options.seqlen > seq_max:
        raise ValueError(f"--seqlen {options.seqlen} is longer than the artifact {folder} takes: its program was "
                         f"exported for sequences of at most {seq_max} tokens; pass --seqlen {seq_max} or less")
    if options.batch_size > batch_max:
        raise ValueError(f"--batch-size {options.batch_size} is more than the artifact {folder} takes: its program "
                         f"was exported for batches of at most {batch_max}; pass --batch-size {batch_max} or less")
    for batch, seq in warm_up_shapes(options):
        if not (batch_min <= batch <= batch_max and seq_min <= seq <= seq_max):
            raise ValueError(f"the artifact {folder} takes batches of {batch_min}..{batch_max} sequences of "
                             f"{seq_min}..{seq_max} tokens, and this evaluation needs {batch}x{seq}; "
                             "compile a new artifact")


class ProgramModel(torch.nn.Module):
    """What lm-eval's HFLM reads from the model it is handed (config, device, name), for a program loaded
    from an artifact: the weights live in the program, so this holds none."""

    def __init__(self, config, device: str, name: str) -> None:
        super().__init__()
        self.config, self.name_or_path, self._device = config, name, torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def tie_weights(self) -> None:  # HFLM calls it on the model; there is nothing to tie
        pass

    def forward(self, *args, **kwargs):
        raise RuntimeError("an artifact's weights are in its program; score through the runner")


def _tokenizer_and_config(spec: str, dtype: str, folder: str | Path):
    """(tokenizer, HF config) of the model an artifact was compiled from, found as load_model finds
    them (an alias's dequantised copy when there is one, else the GGUF file), without loading weights."""
    from transformers import AutoConfig, AutoTokenizer  # here, not at the top: 0.3 s of import beyond torch's


    source, extra = spec, {}
    local = Path(spec).expanduser()
    if (gguf := gguf_file(spec)) is not None:
        source, name = pretrained_source(gguf, dtype)
        extra = {"gguf_file": name} if name else {}
    elif local.is_dir():
        if not (local / "config.json").exists():
            raise ValueError(f"model folder {spec!r}, which the artifact {folder} was compiled from (report.json), "
                             "has no config.json; expected a save_pretrained() folder")
        source = str(local)
    elif spec.count("/") != 1 or spec.startswith((".", "/")):
        raise ValueError(f"the artifact {folder} was compiled from model {spec!r} (report.json), which is not found "
                         f"from {Path.cwd()}; eval reads that model's tokenizer, so run it from where the artifact "
                         "was compiled")
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except OSError as error:
        raise ValueError(f"could not read the config of model {spec!r}, which the artifact {folder} was compiled "
                         f"from: {error}") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None:
        raise ValueError(f"model {spec!r} has no tokenizer; evaluation needs one")
    return tokenizer, config
