"""actprune inspect: the per-layer table and the rewritten graph, with a before/after view of one layer."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import fx

from actprune_compiler.api import sparsify
from actprune_compiler.artifact.folder import is_artifact, load_program, load_report
from actprune_compiler.commands.common import (
    add_config_args,
    add_placement_args,
    calibration_input,
    check_loaded,
    config_from_args,
    model_spec,
)
from actprune_compiler.commands.compile import print_summary
from actprune_compiler.export import WRAPPER_PREFIX
from actprune_compiler.models.devices import placement
from actprune_compiler.models.load import load_model
from actprune_compiler.passes.select_linears import format_node, matches, module_path
from actprune_compiler.reporting.tables import format_table


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", help="per-layer table and rewritten graph of an artifact or a model")
    p.add_argument("source", type=model_spec, help="artifact folder, or a model spec (then --pattern etc. apply)")
    add_config_args(p)
    add_placement_args(p)
    p.add_argument("--layer", default="*", help="fnmatch filter on module paths, e.g. '*.0.mlp.*'")
    p.add_argument("--show", default=None, metavar="LAYER", help="before/after graph view of one layer")
    p.add_argument("--program", action="store_true",
                   help="also load program.pt2 to list the layer's graph nodes (this unpickles: trusted artifacts "
                        "only); without it only report.json is read")
    return p


def layer_graph_lines(graph: fx.Graph, path: str) -> list[str]:
    """The nodes that belong to one module, in order: what that layer became in the graph."""
    return [format_node(n) for n in graph.nodes
            if n.op == "call_function" and module_path(n, WRAPPER_PREFIX) == path]


def check_layer_flags(args: argparse.Namespace, paths: list[str]) -> None:
    """--layer must match some linear layer and --show name one, of the artifact or of the model just loaded."""
    names = ", ".join(sorted({path.rsplit(".", 1)[-1] for path in paths})) or "none"
    if not any(matches(path, (args.layer,)) for path in paths):
        raise ValueError(f"--layer {args.layer!r} matches none of the {len(paths)} linear layers; their names are "
                         f"{names} (a pattern such as '*.0.mlp.*' or 'q_proj')")
    if args.show is not None and args.show not in paths:
        raise ValueError(f"--show {args.show!r} is not one of the {len(paths)} linear layers; give a whole module "
                         f"path such as {paths[0] if paths else 'model.layers.0.mlp.down_proj'!r}")


def check_no_config_flags(args: argparse.Namespace) -> None:
    """An artifact's program is made: a config flag would be ignored, which the table would not show."""
    p = argparse.ArgumentParser(add_help=False)
    add_config_args(p)
    add_placement_args(p)
    given = [dest for dest, default in vars(p.parse_args([])).items() if getattr(args, dest) != default]
    if given:
        shown = ", ".join("--" + dest.replace("_", "-") for dest in given)
        raise ValueError(f"{shown} would not apply: {args.source} is an artifact, whose config is fixed (its "
                         "report.json); drop them, or inspect a model with them")


def load_source(args: argparse.Namespace):
    """(report, graph or None) from an artifact folder, or built in memory from a model spec."""
    if is_artifact(args.source):
        check_no_config_flags(args)
        report = load_report(args.source)
        check_layer_flags(args, [row["module"] for row in report["layers"]])
        graph = load_program(args.source).graph if args.program else None
        return report, graph
    if Path(args.source).is_dir() and not Path(args.source, "config.json").exists():
        raise ValueError(f"{args.source} is neither an actprune artifact (no report.json) nor a model folder")
    config = config_from_args(args)
    if config is None:
        raise ValueError("inspecting a model needs a pattern such as 8:16")
    text, source = calibration_input(args, config)  # missing calibration data fails before the model loads
    model, tokenizer = load_model(args.source, args.dtype, args.device)
    check_loaded(model, tokenizer, config, (text, source))
    check_layer_flags(args, [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)])
    sparsified = sparsify(model, config, tokenizer=tokenizer, calib_text=text, calib_source=source)
    report = {"model": args.source, "model_class": type(model).__name__, **placement(model), **sparsified.report}
    return report, sparsified.program.graph


def run(args: argparse.Namespace) -> int:
    report, graph = load_source(args)
    print_summary(report)
    rows = [r for r in report["layers"] if matches(r["module"], (args.layer,))]
    print(f"\n{len(rows)} of {len(report['layers'])} linears match --layer {args.layer!r}:")
    print(format_table(rows, ["module", "in_features", "out_features", "bias", "decision"]))
    if args.show:
        row = next(r for r in report["layers"] if r["module"] == args.show)  # check_layer_flags found it
        print(f"\n{args.show}: {row['decision']}")
        print(f"  before: {row.get('before', '(not rewritten)')}")
        print(f"  after:  {row.get('after', '(not rewritten)')}")
        for name, summary in row.get("constants", {}).items():
            print(f"  constant {name}: {summary}")
        if graph is None:
            print("  (add --program to list this layer's nodes from program.pt2)")
        else:
            print("  nodes of this layer in the rewritten graph:")
            for line in layer_graph_lines(graph, args.show):
                print(f"    {line}")
    return 0
