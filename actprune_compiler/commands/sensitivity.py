"""actprune sensitivity: rank the layers by the output error that pruning each one alone causes."""

from __future__ import annotations

import argparse
from collections import defaultdict

from actprune_compiler.calibration import calibrate, layer_sensitivity
from actprune_compiler.commands.common import (
    add_config_args,
    add_model_args,
    check_loaded,
    config_from_args,
    positive_int,
)
from actprune_compiler.eval.data import calibration_text
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import check_output_file, write_json
from actprune_compiler.reporting.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sensitivity", help="per-layer output error when only that layer is pruned")
    add_model_args(p)
    add_config_args(p)
    p.add_argument("--top", type=positive_int, default=15, help="how many of the most sensitive layers to list")
    p.add_argument("--output", default=None, help="write every layer's figure as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config is None or config.target != "activation":
        raise ValueError("sensitivity ranks activation pruning: give --pattern N:M and --target activation")
    check_output_file(args.output, inputs=(args.model, args.calib_data))  # before the model loads
    text, source = calibration_text(args.calib_data)  # missing calibration data fails before the model loads
    model, tokenizer = load_model(args.model, args.dtype, args.device)
    check_loaded(model, tokenizer, config, (text, source))
    stats = calibrate(model, tokenizer, config, text, source)[0] if config.needs_calibration() else None
    rows = layer_sensitivity(model, tokenizer, config, text, stats)
    print(f"{args.model}, {config.label}: relative output error ||W(x - x_sparse)||^2 / ||Wx||^2 on "
          f"{config.calib_samples} x {config.calib_seqlen} calibration tokens")
    print(format_table([{**r, "relative_error": f"{r['relative_error']:.4f}"} for r in rows[: args.top]],
                       ["module", "relative_error"]))
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r["module"].rsplit(".", 1)[-1]].append(r["relative_error"])
    print("\nmean by layer kind:")
    print(format_table([{"kind": k, "layers": len(v), "mean_relative_error": f"{sum(v) / len(v):.4f}",
                         "max": f"{max(v):.4f}"} for k, v in sorted(by_kind.items(), key=lambda kv: -max(kv[1]))],
                       ["kind", "layers", "mean_relative_error", "max"]))
    if args.output:
        write_json(args.output, {"model": args.model, "config": config.to_dict(), "layers": rows})
        print(f"wrote {args.output}")
    return 0
