"""An artifact directory: program.pt2, report.json, graph.txt; every file written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.export import ExportedProgram

PROGRAM, REPORT, GRAPH = "program.pt2", "report.json", "graph.txt"


def atomic_write(path: str | Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an artifact is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def save_artifact(out_dir: str | Path, program: ExportedProgram, report: dict[str, Any]) -> Path:
    out = Path(out_dir)
    atomic_write(out / PROGRAM, lambda tmp: torch.export.save(program, tmp))
    atomic_write(out / GRAPH, lambda tmp: Path(tmp).write_text(
        program.graph_module.print_readable(print_output=False, include_stride=False, include_device=False)))
    write_json(out / REPORT, report)  # last: its presence means the artifact is complete
    return out


def load_report(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / REPORT
    if not path.exists():
        raise FileNotFoundError(f"{out_dir} is not an actprune artifact (no {REPORT}); "
                                "create one with: actprune compile --model ... --out DIR")
    return json.loads(path.read_text())


def load_program(out_dir: str | Path) -> ExportedProgram:
    import actprune_compiler.ops  # noqa: F401  (registers actprune::nm_linear before deserialising)

    return torch.export.load(Path(out_dir) / PROGRAM)
