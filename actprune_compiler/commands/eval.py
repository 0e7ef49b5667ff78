"""actprune eval: WikiText-2 perplexity and lm-eval zero-shot accuracy of the compiled (pruned) model."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import torch

from actprune_compiler.artifact.folder import PROGRAM, REPORT, is_artifact, load_report
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    config_from_args,
    example_limit,
    existing_folder,
    flag,
    int_at_least,
    non_negative_int,
    positive_int,
    recovery_line,
    rotation_line,
    task_list,
)
from actprune_compiler.eval import distributed
from actprune_compiler.eval.artifact_eval import evaluate_artifact
from actprune_compiler.eval.data import find_data_dir, missing_data, where_data_goes
from actprune_compiler.eval.perplexity import BOS_MODES
from actprune_compiler.eval.render import headline_metric
from actprune_compiler.eval.runner import EvalOptions, evaluate, write_result
from actprune_compiler.models.devices import resolve_device
from actprune_compiler.reporting.files import check_output_file
from actprune_compiler.reporting.runinfo import format_times
from actprune_compiler.reporting.tables import format_table
from actprune_compiler.sparsity.config import SparsityConfig


def add_eval_args(p: argparse.ArgumentParser) -> None:
    # A string default goes through type= too, so args.tasks is always a tuple of known tasks.
    p.add_argument("--tasks", type=task_list, default="wikitext2",
                   help="comma-separated: wikitext2 and any lm-eval task or group (local copies: arc_easy, "
                        "arc_challenge, boolq, piqa, winogrande, hellaswag; others read the hub, see --allow-hub)")
    p.add_argument("--seqlen", type=int_at_least(2), default=2048,  # one token predicts nothing
                   help="perplexity window length (tokens)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="score only the first N windows")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="windows (ppl) or requests (lm-eval) per forward")
    p.add_argument("--bos", default="auto", choices=BOS_MODES,
                   help="where BOS tokens go in the perplexity windows (docs/evaluation.md, Perplexity)")
    p.add_argument("--limit", type=example_limit, default=None,
                   help="examples per zero-shot task (lm-eval --limit): a fraction below 1 or a count")
    p.add_argument("--num-fewshot", type=non_negative_int, default=None)
    p.add_argument("--apply-chat-template", action="store_true")
    p.add_argument("--data-dir", type=existing_folder, default=None,
                   help="evaluation data folder (default: $ACTPRUNE_DATA_DIR, else the project's data/)")
    p.add_argument("--allow-hub", action="store_true",
                   help="tasks whose data is not local are fetched from the Hugging Face hub "
                        "(default: missing data fails before the model loads)")
    p.add_argument("--regional", action="store_true",
                   help="compile one decoder layer and reuse its code for every layer (weights stay inputs, so "
                        "Inductor's cache also gives warm starts); default: the whole graph, weights frozen")
    p.add_argument("--no-compile", action="store_true",
                   help="score the uncompiled program (reference kernels): quick quality checks; recorded")


def options_from_args(args: argparse.Namespace):
    return EvalOptions(tasks=args.tasks, seqlen=args.seqlen, max_windows=args.max_windows,
                       batch_size=args.batch_size, bos=args.bos, limit=args.limit, num_fewshot=args.num_fewshot,
                       apply_chat_template=args.apply_chat_template, data_dir=args.data_dir,
                       calib_data=args.calib_data, compile=not args.no_compile, regional=args.regional)


@functools.cache
def config_flag_defaults() -> dict[str, Any]:
    """{dest: default} of the flags that make the program (add_config_args): an artifact fixes them."""
    p = argparse.ArgumentParser(add_help=False)
    add_config_args(p, pattern_default=None)
    return vars(p.parse_args([]))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy of the compiled (pruned) model")
    add_model_args(p, artifact=True)
    add_config_args(p, pattern_default=None)
    # None stands for "not given", so that a flag given with an artifact is seen even when it equals its
    # default; run() puts the defaults back for a model.
    p.set_defaults(**dict.fromkeys(config_flag_defaults()))
    add_eval_args(p)
    p.add_argument("--output", default=None, help="write the result JSON here (atomically)")
    return p


def program_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line, {dest: value}; the others get their defaults back."""
    given = {}
    for dest, default in config_flag_defaults().items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, default)
        else:
            given[dest] = getattr(args, dest)
    return given


# Config flags whose SparsityConfig field has another name.
FLAG_FIELDS = {"seed_compat": "drop_bias"}


def check_artifact_flags(args: argparse.Namespace, given: dict[str, Any], report: dict[str, Any]) -> None:
    """An artifact's program is fixed: a flag that would make another one is refused, unless it says what the
    artifact already is (--pattern 8:16 for an 8:16 artifact)."""
    fixed = SparsityConfig.from_dict(report["config"])
    have = fixed.to_dict()
    for dest, value in given.items():
        field, shown_flag = FLAG_FIELDS.get(dest, dest), flag(dest) if value is True else f"{flag(dest)} {value}"
        if field not in have:  # --calib-data: the calibration ran when the artifact was compiled
            raise ValueError(f"{flag(dest)} conflicts with the artifact {args.model}: an artifact fixes its config "
                             f"({report['label']}) and calibration; drop {flag(dest)}, or compile a new artifact")
        if field == "pattern" and str(value).lower() in ("none", "dense"):
            wanted = "none"
        else:  # normalised as SparsityConfig does: '8 : 16' is 8:16, 'q_proj, k_proj' is q_proj,k_proj
            parsed = tuple(x for x in value.split(",") if x.strip()) if field == "exclude" else value
            wanted = fixed.replace(**{field: parsed}).to_dict()[field]
        if wanted != have[field]:
            shown = (",".join(have[field]) or "none") if isinstance(have[field], list) else have[field]
            raise ValueError(f"{shown_flag} conflicts with the artifact {args.model}, compiled with {field} {shown}: "
                             f"an artifact fixes its config (report.json); drop {flag(dest)}, or compile a new "
                             "artifact with it")
    if args.dtype not in ("default", report["dtype"]):
        raise ValueError(f"--dtype {args.dtype} conflicts with the artifact {args.model}, whose program is "
                         f"{report['dtype']}: an artifact fixes its dtype; drop --dtype, or compile a new artifact "
                         "with it")


def artifact_device(args: argparse.Namespace, report: dict[str, Any]) -> str:
    """Where the artifact's program runs: the device it was compiled on, which holds its tensors.

    torch.export.passes.move_to_device_pass could move it, but a program compiled on the CPU in float32
    would then not be what a fresh run on the GPU scores (bfloat16), so another device is refused."""
    recorded = report["device"]
    try:
        here = resolve_device(recorded)
    except ValueError:
        raise ValueError(f"the artifact {args.model} was compiled on {recorded}, which this machine lacks; "
                         f"evaluate it where {recorded} exists, or compile a new artifact here") from None
    asked = resolve_device(args.device) if args.device else here
    if _canonical(asked) != _canonical(here):
        raise ValueError(f"--device {args.device} differs from {recorded}, where the artifact {args.model} was "
                         f"compiled and its program's tensors are; drop --device, or compile a new artifact "
                         f"with --device {args.device}")
    if here.type == "cuda" and distributed.world() > 1:
        raise ValueError(f"under torchrun each process scores on its own GPU, but the artifact {args.model}'s "
                         f"program is on {recorded}; evaluate it in one process")
    return recorded


def _canonical(device) -> str:
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def artifact_report(spec: str) -> dict[str, Any]:
    """The artifact's report.json, refused in one sentence when damaged (artifact.folder.REPORT_SHAPE)."""
    return load_report(spec)


def model_kind(spec: str) -> str:
    """'artifact' for an actprune compile folder, 'model' otherwise; a folder that is neither is refused."""
    folder = Path(spec).expanduser()
    if is_artifact(folder):
        return "artifact"
    if folder.is_dir() and not (folder / "config.json").exists():
        if (folder / PROGRAM).exists():
            load_report(folder)  # raises: "... is not an actprune artifact (no report.json); create one with ..."
        raise ValueError(f"{spec} is neither an actprune artifact (no {REPORT}) nor a model folder (no config.json)")
    return "model"


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    """One line in the seed's columns."""
    metrics = result["metrics"]
    row = {"model": result["model"], "pruning": result["pruning"]}
    if "wikitext2" in metrics:
        row["wikitext2 ppl"] = round(metrics["wikitext2"]["ppl"], 3)
    for task, value in metrics.items():
        if task != "wikitext2":
            row[task] = headline_metric(value["metrics"])
    row["runtime (min)"] = round(result["runtime_s"] / 60, 2)
    row["compile (s)"] = round(result["stages_s"]["compile_s"], 1) if result["compiled"] else "not compiled"
    row["replaced linears"] = result["replaced_linears"]
    return row


def check_local_data(args: argparse.Namespace, config) -> None:
    """Refuse, before the model loads, a run whose data is not in the data folder (it would go to the hub)."""
    calibrates = config is not None and (config.needs_calibration() or config.skip_sensitive)
    calibration = (args.calib_data or "wikitext2-validation") if calibrates else None
    missing = missing_data(args.tasks, args.data_dir, calibration)
    if missing:
        root = find_data_dir(args.data_dir)
        searched = f"the data folder {root}" if root else "any data folder"
        raise FileNotFoundError(
            f"evaluation data not found in {searched}: {'; '.join(missing)}; put each at its path under DATA, "
            f"with DATA {where_data_goes()}; or pass --allow-hub to fetch it from the Hugging Face hub")


def check_torchrun_tasks(tasks: tuple[str, ...], processes: int) -> None:
    """Under torchrun only perplexity is sharded here; actprune's lm-eval wrapper scores every request
    in every process, so zero-shot tasks would be computed K times over, not split."""
    zero_shot = [t for t in tasks if t != "wikitext2"]
    if processes > 1 and zero_shot:
        raise ValueError(f"zero-shot tasks ({', '.join(zero_shot)}) under torchrun go through actprune-lm-eval "
                         "(the lm-eval CLI); under torchrun, actprune eval takes --tasks wikitext2 only")


def run(args: argparse.Namespace) -> int:
    check_torchrun_tasks(args.tasks, distributed.world())
    given = program_flags(args)
    report = artifact_report(args.model) if model_kind(args.model) == "artifact" else None
    if report is not None:  # an artifact folder: score its program.pt2 as it is
        check_artifact_flags(args, given, report)
        device, config = artifact_device(args, report), None
    distributed.prepare_rank()  # own Inductor cache and share of the cores, before anything compiles
    if report is None:
        device = distributed.rank_device(args.device)  # under torchrun on CUDA: cuda:LOCAL_RANK
        config = config_from_args(args)
        if config is None and (unused := [dest for dest in given if dest != "pattern"]):
            shown = ", ".join(flag(FLAG_FIELDS.get(dest, dest)) for dest in unused)
            raise ValueError(f"{shown} would not apply: without --pattern (or with --pattern none) eval scores the "
                             "dense model; give --pattern, or drop them")
    options = options_from_args(args)
    # before the model loads, not after an hour of scoring
    check_output_file(args.output, inputs=(args.model, args.calib_data, args.data_dir))
    if not args.allow_hub:
        check_local_data(args, config)
    text, source = calibration_input(args, config)  # read now: a bad calibration source fails at once
    with distributed.process_group(device):
        if report is not None:
            result = evaluate_artifact(args.model, options, report=report, name=flag)
        else:
            result = evaluate(args.model, config, options, dtype=args.dtype, device=device,
                              calib_text=(text, source) if text is not None else None, name=flag)
        processes = distributed.world()
        if not distributed.is_main():  # every rank holds the same result; rank 0 alone reports it
            return 0
    result["processes"] = processes
    row = result_row(result)
    print(format_table([row], list(row)))
    if learned := (result.get("calibration") or {}).get("recovery"):
        print(recovery_line(learned))
    if rotation := (result.get("calibration") or {}).get("rotation"):
        print(rotation_line(rotation))
    print(format_times({**result["stages_s"], "run_s": result["runtime_s"]}))
    if args.output:
        write_result(args.output, result)
        print(f"wrote {args.output}")
    return 0
