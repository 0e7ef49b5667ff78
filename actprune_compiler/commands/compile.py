"""actprune compile: export, rewrite and save a program.pt2 artifact, with a check against the reference."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from actprune_compiler.api import sparsify
from actprune_compiler.artifact.check import check_program
from actprune_compiler.artifact.folder import save_artifact
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    calibration_input,
    check_loaded,
    config_from_args,
    recovery_line,
    rotation_line,
)
from actprune_compiler.eval.compiled_code import compile_for_artifact
from actprune_compiler.models.devices import placement
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import check_output_folder
from actprune_compiler.reporting.runinfo import Timer, format_times, versions
from actprune_compiler.reporting.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compile", help="export, rewrite and save a program.pt2 artifact")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--out", required=True, help="artifact folder (program.pt2, report.json, graph.txt)")
    p.add_argument("--attention-mask", action="store_true", help="export an attention_mask input too")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check, which compiles 3 rewritten layers (first, middle, last) with Inductor in "
                        "float64 and compares them with the reference kernel: evidence that this program's compiled "
                        "code computes what nm_linear defines (about 50 s for SmolLM2-135M on 2 cores)")
    p.add_argument("--compiled-code", action="store_true",
                   help="also compile the program (regionally) and store Inductor's cache artifacts in the folder, "
                        "so 'actprune eval --model OUT --regional' takes Inductor's code from it instead of compiling")
    p.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    return p


def layer_groups(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layer name (q_proj, ..., lm_head) and decision: a table that fits a screen."""
    groups: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"layers": 0})
    for row in layers:
        name = row["module"].rsplit(".", 1)[-1]
        key = (name, row["decision"], row["in_features"], row["out_features"])
        group = groups[key]
        group.update(name=name, shape=f"{row['in_features']} -> {row['out_features']}", decision=row["decision"])
        group["layers"] += 1
    return list(groups.values())


def print_summary(report: dict[str, Any]) -> None:
    totals, ops, t = report["totals"], report["graph_ops"], report["timings"]
    print(f"{report['model']} ({report['model_class']}, {report['dtype']}): {report['label']} "
          f"{report['config']['target']}, criterion {report['config']['criterion']}, "
          f"correction {report['config']['correction']}")
    print(format_table(layer_groups(report["layers"]), ["name", "layers", "shape", "decision"]))
    print(f"linears {totals['linears']}, replaced {totals['replaced']}, dense (not matched) "
          f"{totals['dense_not_matched']}, dense (excluded) {totals['dense_excluded']}; "
          f"graph: {ops['nm_linear']} nm_linear, {ops['linear']} linear")
    if learned := report.get("recovery"):
        print(recovery_line(learned))
    if rotation := report.get("rotation"):
        print(rotation_line(rotation))
    print(format_times(t))
    if check := report.get("check"):
        print(check["line"])


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None:
        raise ValueError("actprune compile needs a pattern such as 8:16 (use 'actprune eval' for the dense model)")
    check_output_folder(args.out, args.force, inputs=(args.model, args.calib_data))
    text, source = calibration_input(args, config)  # missing calibration data fails before the model loads
    timer = Timer()
    with timer("load_s"):
        model, tokenizer = load_model(args.model, args.dtype, args.device)
    check_loaded(model, tokenizer, config, (text, source))
    sparsified = sparsify(model, config, tokenizer=tokenizer, calib_text=text, calib_source=source,
                          with_attention_mask=args.attention_mask)
    report = {"model": args.model, "model_class": type(model).__name__, **placement(model), **sparsified.report,
              "timings": {**timer.seconds, **sparsified.report["timings"]}, "versions": versions()}
    if not args.no_check:
        with timer("check_s"):
            report["check"] = check_program(sparsified)
        report["timings"]["check_s"] = timer.seconds["check_s"]
        if not report["check"]["passed"]:
            raise RuntimeError(report["check"]["line"] + "; nothing was written")
    extra = {}
    if args.compiled_code:
        with timer("compiled_code_s"):
            data, report["compiled_code"] = compile_for_artifact(sparsified.program, model.device,
                                                                 with_mask=args.attention_mask)
        report["timings"]["compiled_code_s"] = timer.seconds["compiled_code_s"]
        extra[report["compiled_code"]["file"]] = data
    report["layers"] = report.pop("layers")  # last: the long per-layer table
    save_artifact(args.out, sparsified.program, report, force=args.force, extra=extra)
    print_summary(report)
    stored = f", {report['compiled_code']['file']}" if "compiled_code" in report else ""
    print(f"wrote {args.out}/program.pt2, report.json, graph.txt{stored}")
    return 0
