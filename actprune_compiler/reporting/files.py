"""Writing results so that a crash or Ctrl-C never leaves a half-written file or folder; file checksums; the
folder where actprune keeps what it can make again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once, at import: setting the umask to read it is not safe while other threads create files.
_UMASK = _read_umask()

# What actprune can make again but keeps to save time: dequantised models, learned values, prepared data.
CACHE_DIR = Path(os.environ.get("ACTPRUNE_CACHE", Path.home() / ".cache" / "actprune"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def check_output_file(path: str | Path | None, flag: str = "--output") -> None:
    """Refuse, before any work, an output path that is a folder or sits under a file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path} lies under {parent}, which is a file, not a folder")


def check_output_folder(path: str | Path, force: bool, flag: str = "--out") -> None:
    """Refuse, before any work, a folder target that is a file, or is not empty without force."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path} lies under {parent}, which is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"{flag} {path} already exists and is not empty; pass --force to replace it")


def atomic_folder(path: str | Path, fill: Callable[[Path], Any], *, force: bool = False) -> Path:
    """Build a folder in a hidden sibling, then rename it into place: the folder holds the old
    files or the whole new set, never a mix of the two. Replacing an existing folder (only with
    force) takes two renames; if the second fails, the old folder is put back."""
    path = Path(path)
    check_output_folder(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        fill(building)
        os.chmod(building, 0o777 & ~_UMASK)
        if not path.exists():
            os.replace(building, path)
            return path
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
        try:
            os.replace(building, path)
        except BaseException:
            os.replace(old / path.name, path)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)  # the new folder is in place: leftovers are harmless
        return path
    finally:
        shutil.rmtree(building, ignore_errors=True)
