"""Writing results so that a crash or Ctrl-C never leaves a half-written file or folder; checking output
paths before any work, so that a result is never computed for a place it cannot go; file checksums; the folder
where actprune keeps what it can make again."""

from __future__ import annotations

import hashlib
import json
import os
import re
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

# Asked just before a file or folder is put in place; a raise keeps it out. A command adds one that raises
# once it has been interrupted (reporting/signals.check), so that an interrupted run never writes its
# result, even when a library caught the interrupt and carried on.
COMMIT_CHECKS: list[Callable[[], None]] = []


def _commit_allowed() -> None:
    for check in COMMIT_CHECKS:
        check()


def file_name_part(text: str) -> str:
    """Text (a model alias, folder path or hub id) as part of one file name: 'runs/tiny' -> 'runs-tiny'.
    A folder path left as it is would put the file under nested folders that nothing links to."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "model"


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
        _commit_allowed()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


Inputs = tuple[str | Path | None, ...]


def check_output_file(path: str | Path | None, flag: str = "--output", inputs: Inputs = ()) -> None:
    """Refuse, before any work, an output file path that is empty or a folder, cannot be created where it
    lies, or would overwrite one of the command's inputs (a file, or a file inside an input folder)."""
    if path is None:
        return
    if not str(path).strip():
        raise ValueError(f"{flag} is empty; give a file path")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path")
    _check_writable(path, flag, path.parent)
    target = path.resolve()
    for given, source in _existing(inputs):
        if target == source or (source.is_dir() and source in target.parents and target.exists()):
            what = "the input" if target == source else "a file of the input"
            raise ValueError(f"{flag} {path} would overwrite {what} {given}; give another path")


def check_output_folder(path: str | Path, force: bool, flag: str = "--out", inputs: Inputs = (), *,
                        replaced: bool = True) -> None:
    """Refuse, before any work, an output folder that is empty or a file, cannot be created where it lies,
    or is not empty without force. replaced: the command replaces the folder as a whole (atomic_folder), so
    it may not hold the current folder or one of the command's inputs either; else (bench) it writes its
    files into the folder and leaves the rest alone."""
    if not str(path).strip():
        raise ValueError(f"{flag} is empty; give a folder path")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder path")
    _check_writable(path, flag, path.parent if replaced else path)
    if not replaced:
        return
    target = path.resolve()
    held = [("the current folder", Path.cwd().resolve())] + [(f"the input {given}", source)
                                                             for given, source in _existing(inputs)]
    for what, source in held:
        if target == source or target in source.parents:
            raise ValueError(f"{flag} {path} {'is' if target == source else 'holds'} {what}, which replacing it "
                             "would remove; give a folder of its own")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"{flag} {path} already exists and is not empty; pass --force to replace it")


def _existing(inputs: Inputs) -> list[tuple[str, Path]]:
    """(as given, resolved) for each input that is a path on this machine (a model alias is not)."""
    return [(str(given), Path(given).expanduser().resolve()) for given in inputs
            if given is not None and str(given).strip() and Path(given).expanduser().exists()]


def _check_writable(path: Path, flag: str, folder: Path) -> None:
    """Whether a file can be created in `folder` (or, where it does not exist yet, in the folder that would
    hold it): tried, not guessed from permission bits, which say nothing for root or under /proc."""
    parent = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{flag} {path} lies under {parent}, which is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".actprune-probe-", dir=parent)
    except OSError as error:
        raise ValueError(f"{flag} {path} cannot be written: creating a file in {parent} fails "
                         f"({error.strerror or error})") from None
    os.close(fd)
    os.unlink(probe)


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
        _commit_allowed()
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
