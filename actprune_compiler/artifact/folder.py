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

PROGRAM, REPORT, GRAPH = "program.pt2", "report.json", "graph.txt"


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


def load_report(out_dir: str | Path) -> dict[str, Any]:
    """The report, read as JSON: nothing is unpickled."""
    path = Path(out_dir) / REPORT
    if not path.exists():
        raise FileNotFoundError(f"{out_dir} is not an actprune artifact (no {REPORT}); "
                                "create one with: actprune compile --model ... --out DIR")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); "
                         "recompile the artifact") from None


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
