"""An artifact folder: program.pt2, report.json, graph.txt, written as one atomic folder.

program.pt2 is a torch.export archive, which holds pickled data: loading it runs code, so only
load artifacts from a source you trust. report.json and graph.txt are plain text and can be read
(`actprune inspect`) without loading the program.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

import actprune_compiler.ops  # noqa: F401  (registers actprune::nm_linear before deserialising)
from actprune_compiler.passes.graph_host import fake_value
from actprune_compiler.reporting.files import atomic_folder
from actprune_compiler.sparsity.config import SparsityConfig

PROGRAM, REPORT, GRAPH = "program.pt2", "report.json", "graph.txt"

# What actprune's readers (eval, inspect) take from report.json, all of which compile writes: a report
# that is damaged or edited by hand is named as such, not met as a KeyError deep inside a reader.
# {key: shape} is an object with those keys, [shape] a list of them, "*" any key; a type is a leaf.
Shape = Any
REPORT_SHAPE: dict[str, Shape] = {
    "model": str, "model_class": str, "device": str, "dtype": str, "label": str,
    "config": dict,  # and SparsityConfig reads it
    "totals": {"linears": int, "replaced": int, "dense_not_matched": int, "dense_excluded": int},
    "graph_ops": {"nm_linear": int, "linear": int},
    "timings": {"*": (int, float)},
    "layers": [{"module": str, "in_features": int, "out_features": int, "decision": str}],
}


def save_artifact(out_dir: str | Path, program: ExportedProgram, report: dict[str, Any], *,
                  force: bool = False, extra: dict[str, bytes] | None = None) -> Path:
    """Write the three files (and `extra` ones, by name) into a new folder; an existing non-empty one is
    replaced only with force."""

    def fill(folder: Path) -> None:
        for name, data in (extra or {}).items():
            (folder / name).write_bytes(data)
        torch.export.save(program, folder / PROGRAM)
        (folder / GRAPH).write_text(program.graph_module.print_readable(print_output=False, include_stride=False,
                                                                        include_device=False))
        (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")

    return atomic_folder(out_dir, fill, force=force)


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / REPORT).is_file()


def load_report(out_dir: str | Path, *, check: bool = True) -> dict[str, Any]:
    """The report, read as JSON: nothing is unpickled. check: refuse one that is not what compile writes
    (REPORT_SHAPE), naming what is wrong."""
    path = Path(out_dir) / REPORT
    if not path.exists():
        raise FileNotFoundError(f"{out_dir} is not an actprune artifact (no {REPORT}); "
                                "create one with: actprune compile --model ... --out DIR")
    try:
        report = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "not text"
        raise ValueError(f"{path} is not valid JSON ({where}); recompile the artifact") from None
    if check:
        check_report(report, path)
    return report


def check_report(report: Any, path: str | Path) -> None:
    """Raise ValueError naming the first thing in a report that is not what actprune compile writes."""
    problem = _shape_problem(report, REPORT_SHAPE, "it")
    if problem is None:
        try:
            SparsityConfig.from_dict(report["config"])
        except (ValueError, TypeError) as error:
            problem = f"its config is not a config actprune reads ({' '.join(str(error).split())})"
    if problem is not None:
        raise ValueError(f"{path} is damaged: {problem}; actprune compile writes an object with "
                         f"{', '.join(REPORT_SHAPE)}; recompile the artifact")


def _shape_problem(value: Any, shape: Shape, where: str) -> str | None:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, not an object"
        for key, inner in shape.items():
            if key == "*":
                problems = (_shape_problem(v, inner, f"{where}[{k!r}]") for k, v in value.items())
                if problem := next((p for p in problems if p), None):
                    return problem
            elif key not in value:
                return f"{where} lacks {key!r}"
            elif problem := _shape_problem(value[key], inner, f"{where}[{key!r}]" if where != "it" else f"its {key}"):
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        problems = (_shape_problem(item, shape[0], f"{where}[{index}]") for index, item in enumerate(value))
        return next((p for p in problems if p), None)
    types = shape if isinstance(shape, tuple) else (shape,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join({str: "a string", int: "a whole number", float: "a number", dict: "an object"}
                            .get(t, t.__name__) for t in types)
        return f"{where} is {_kind(value)}, not {names}"
    return None


def _kind(value: Any) -> str:
    """'a string "2:4"', 'an object {}': what JSON holds there, shortened."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    text = json.dumps(value)
    return f"{kinds.get(type(value), 'null')} {text if len(text) <= 40 else text[:36] + ' ...'}".removeprefix("null ")


def load_program(out_dir: str | Path) -> ExportedProgram:
    """Deserialise program.pt2 (this unpickles: trusted artifacts only)."""
    path = Path(out_dir) / PROGRAM
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {PROGRAM}; recompile it with actprune compile")
    # torch.export.load logs a whole traceback as a warning on an unreadable archive before it tries
    # its legacy format; the failure becomes one sentence below, so the dump is kept quiet.
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return torch.export.load(path)
    except Exception as error:  # noqa: BLE001  (any failure to read the archive means the same thing)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable torch.export program ({type(error).__name__}: {first}); "
                         "recompile it with actprune compile") from None
    finally:
        logger.setLevel(level)


def input_ranges(program: ExportedProgram) -> tuple[tuple[int, float], tuple[int, float]]:
    """(min, max) of input_ids' batch and sequence sizes the program accepts (max is inf when unbounded).

    export_causal_lm makes both dimensions dynamic, bounded by its max_seq_len (the model's
    max_position_embeddings unless given); a static dimension accepts its one size."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    ranges = []
    for size in fake_value(node).shape:
        if isinstance(size, torch.SymInt):
            bounds = program.range_constraints[size.node.expr]
            upper = float(bounds.upper)  # torch's int_oo becomes inf
            ranges.append((int(bounds.lower), upper if math.isinf(upper) else int(upper)))
        else:
            ranges.append((int(size), int(size)))
    batch, seq = ranges
    return batch, seq
