"""actprune compile: export, rewrite and save a program.pt2 artifact, with a check against the reference."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from actprune_compiler.commands.common import add_config_args, add_model_args, config_from_args
from actprune_compiler.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compile", help="export, rewrite and save a program.pt2 artifact")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--out", required=True, help="artifact folder (program.pt2, report.json, graph.txt)")
    p.add_argument("--attention-mask", action="store_true", help="export an attention_mask input too")
    p.add_argument("--no-check", action="store_true", help="skip the Inductor compile + comparison check")
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
    print("times: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()))
    if check := report.get("check"):
        print(f"check ({check['dtype']}, shape {check['shape']}): Inductor compile + first run "
              f"{check['inductor_compile_and_first_run_s']:.1f} s; compiled vs uncompiled: max |diff| "
              f"{check['max_abs_diff_vs_uncompiled']:.3g}, mean {check['mean_abs_diff_vs_uncompiled']:.3g}, "
              f"top-1 agreement {check['top1_agreement']:.1%}")
        if check["dtype"] != "float64" and check["max_abs_diff_vs_uncompiled"] > 1e-3:
            print("  (N:M masks are discontinuous: float32 rounding flips near-tied choices; "
                  "--dtype float64 verifies the compiled program exactly)")


def run(args: argparse.Namespace) -> int:
    from actprune_compiler.pipeline import compile_to_artifact

    config = config_from_args(args)
    if config is None:
        raise ValueError("actprune compile needs a pattern such as 8:16 (use 'actprune eval' for the dense model)")
    compiled = compile_to_artifact(args.model, config, args.out, dtype=args.dtype, calib_data=args.calib_data,
                                   with_attention_mask=args.attention_mask, check=not args.no_check)
    print_summary(compiled.report)
    print(f"wrote {args.out}/program.pt2, report.json, graph.txt")
    return 0
