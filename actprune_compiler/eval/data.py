"""Evaluation data on disk (the project's data/ folder, shipped with the repository), or from the hub."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from actprune_compiler.reporting.files import CACHE_DIR, atomic_write, sha256_file

DATA_ENV = "ACTPRUNE_DATA_DIR"
WIKITEXT_DIR = "wikitext2/wikitext_document_level/wikitext-2-raw-v1"
# What each zero-shot task reads, relative to the data folder.
TASK_FILES = {
    "arc_easy": ["arc_easy/ARC-Easy-Test.jsonl"],
    "arc_challenge": ["arc_challenge/ARC-Challenge-Test.jsonl"],
    "boolq": ["boolq/superglue_opencompass/val.jsonl"],
    "piqa": ["piqa/valid.jsonl", "piqa/valid-labels.lst"],
    "winogrande": ["winogrande/dev.jsonl"],
    "hellaswag": ["hellaswag/hellaswag_val.jsonl"],
}


# The repository's data/ folder (beside this package, not inside it): a clone or an editable install
# (`pip install -e .`, what `make setup` does) has it. data/SOURCES.md and data/checksums.sha256 describe it.
_REPO = Path(__file__).resolve().parents[2]
PROJECT_DATA_DIR = _REPO / "data"
SHARED_DATA_DIR = _REPO.parent / "shared" / "data"  # a shared checkout's data, beside the repository
CHECKSUMS = "checksums.sha256"


def default_data_dirs() -> list[Path]:
    """Where data is looked for: $ACTPRUNE_DATA_DIR, the project's data/, then ../shared/data beside the repo."""
    candidates = [PROJECT_DATA_DIR, SHARED_DATA_DIR]
    if env := os.environ.get(DATA_ENV):
        candidates.insert(0, Path(env).expanduser())
    return candidates


def find_data_dir(explicit: str | Path | None = None) -> Path | None:
    """--data-dir when given (it must exist), else the first of default_data_dirs() that exists."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--data-dir {explicit} is not a folder")
        return path
    return next((p for p in default_data_dirs() if p.is_dir()), None)


def where_data_goes() -> str:
    """The sentence that says where evaluation data goes, for error messages and the tests."""
    sentence = (f"the project's data folder {PROJECT_DATA_DIR} (shipped with the repository: restore it with "
                f"`git checkout -- data`, check it with `sha256sum -c {CHECKSUMS}` there), or a folder passed as "
                f"--data-dir or set in ${DATA_ENV}, or {SHARED_DATA_DIR}")
    if env := os.environ.get(DATA_ENV):
        sentence += f" (${DATA_ENV} is set to {env} and is searched first)"
    return sentence


def verify_data_dir(path: str | Path | None = None) -> list[str]:
    """Check a data folder against its checksums.sha256 (`sha256sum -c` format; paths relative to the folder).

    Returns one line per problem (a missing or changed file, or no checksums file); empty when all match.
    Reads every listed file, so it runs only when asked.
    """
    root = Path(path).expanduser() if path is not None else PROJECT_DATA_DIR
    listing = root / CHECKSUMS
    if not listing.is_file():
        return [f"{listing}: missing"]
    problems = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        expected, sep, name = line.partition("  ")
        if not sep:  # "<hash> *<name>" is sha256sum's binary mode
            expected, sep, name = line.partition(" *")
        if not sep or len(expected) != 64:
            problems.append(f"{listing}:{number}: not a `sha256sum` line: {line!r}")
            continue
        file = root / name
        if not file.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256_file(file)) != expected.lower():
            problems.append(f"{name}: sha256 {actual}, expected {expected}")
    return problems


@dataclass(frozen=True)
class WikiText:
    text: str  # what is scored: the line-level rows joined with "\n\n"
    source: str  # where it came from, for the results file
    sha256: str  # of the raw file reconstructed below (data/SOURCES.md lists it)
    rows: int  # line-level rows joined

    @property
    def text_sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def hub_rows(raw: str) -> list[str]:
    """The hub's line-level rows of a raw WikiText file: its builder yields each line with its newline,
    except whitespace-only lines, which become empty strings. Joined with "\\n\\n" that is the seed's text;
    keeping them as " \\n" instead changes the text, and the dense perplexity by about 2%."""
    return [line if line.strip() else "" for line in raw.splitlines(keepends=True)]


def _missing(what: str, relative: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: put it at DATA/{relative} with DATA {where_data_goes()}; "
        f"or run where the Hugging Face hub is reachable")


def load_wikitext2(split: str = "test", data_dir: str | Path | None = None) -> WikiText:
    """The seed's text: WikiText-2 raw's line-level rows (the hub's `wikitext` dataset) joined with
    "\\n\\n" (GPTQ-style).

    Locally only lm-eval's document-level copy exists; the raw file is " \\n" + "\\n".join(pages)
    (the builder dropped only that first line), and hub_rows() turns it into the hub's rows.
    """
    from datasets import load_from_disk  # the optional eval extra; 0.45 s to import

    root = find_data_dir(data_dir)
    folder = root / WIKITEXT_DIR / split if root else None
    if folder is not None and folder.is_dir():
        pages = load_from_disk(str(folder))["page"]
        raw = " \n" + "\n".join(pages)
        rows = hub_rows(raw)
        source = f"{folder} (document level; {len(rows)} line-level rows rebuilt)"
    else:
        try:
            from datasets import load_dataset

            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            # blank rows are empty here, so this is the raw file only up to their whitespace
            raw, source = "".join(rows), "hub: wikitext/wikitext-2-raw-v1"
        except Exception as error:
            raise _missing(f"WikiText-2 {split} split", f"{WIKITEXT_DIR}/{split}") from error
    return WikiText("\n\n".join(rows), source, hashlib.sha256(raw.encode()).hexdigest(), len(rows))


def task_data(task: str, data_dir: str | Path | None = None) -> dict[str, Path] | None:
    """The local files of a zero-shot task, or None when they are not here (use the hub task)."""
    root = find_data_dir(data_dir)
    if root is None or task not in TASK_FILES:
        return None
    paths = {rel: root / rel for rel in TASK_FILES[task]}
    return paths if all(p.is_file() for p in paths.values()) else None


def missing_data(tasks: Collection[str], data_dir: str | Path | None = None,
                 calibration: str | None = None) -> list[str]:
    """What the tasks (and the calibration source, when the run calibrates) would read that is not in the
    data folder, one "what (DATA/relative path)" item each; empty when all of it is local.

    A calibration text file is not checked here (its flag is), only the named WikiText-2 splits.
    Without this check the missing parts come from the hub, after the model has loaded.
    """
    root = find_data_dir(data_dir)
    splits = ["test"] if "wikitext2" in tasks else []
    if calibration in CALIB_SOURCES:
        splits.append(calibration.split("-", 1)[1])
    missing = [f"WikiText-2 {split} split (DATA/{WIKITEXT_DIR}/{split})" for split in splits
               if root is None or not (root / WIKITEXT_DIR / split).is_dir()]
    for task in tasks:
        if task != "wikitext2" and (root is None or task_data(task, root) is None):
            absent = [rel for rel in TASK_FILES.get(task, []) if root is None or not (root / rel).is_file()]
            missing.append(f"{task} ({', '.join(f'DATA/{rel}' for rel in absent) or 'no local copy'})")
    return missing


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _arc_rows(files: dict[str, Path]) -> list[dict]:
    """AI2's release -> the hub schema lm-eval's arc tasks template on."""
    (path,) = files.values()
    return [{"id": d["id"], "question": d["question"]["stem"], "answerKey": d["answerKey"],
             "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                         "label": [c["label"] for c in d["question"]["choices"]]}} for d in _jsonl(path)]


def _boolq_rows(files: dict[str, Path]) -> list[dict]:
    """SuperGLUE form with "true"/"false" strings -> integer labels (0 = no, 1 = yes)."""
    (path,) = files.values()
    return [{**d, "label": {"false": 0, "true": 1}[str(d["label"]).lower()]} for d in _jsonl(path)]


def _piqa_rows(files: dict[str, Path]) -> list[dict]:
    """PIQA keeps its answers in a separate .lst file; lm-eval wants a `label` field."""
    rows, labels = _jsonl(files["piqa/valid.jsonl"]), files["piqa/valid-labels.lst"].read_text().split()
    if len(rows) != len(labels):
        raise ValueError(f"PIQA has {len(rows)} questions but {len(labels)} labels")
    return [{**row, "label": int(label)} for row, label in zip(rows, labels, strict=True)]


def _as_is(files: dict[str, Path]) -> list[dict]:
    (path,) = files.values()
    return _jsonl(path)


TO_HUB_SCHEMA = {"arc_easy": _arc_rows, "arc_challenge": _arc_rows, "boolq": _boolq_rows, "piqa": _piqa_rows,
                 "winogrande": _as_is, "hellaswag": _as_is}


def prepared_task_file(task: str, files: dict[str, Path]) -> Path:
    """The task's local files in the hub's schema, as one JSONL cached by the sources' checksums."""
    key = hashlib.sha256("".join(sha256_file(p) for p in files.values()).encode()).hexdigest()[:12]
    target = CACHE_DIR / "data" / f"{task}-{key}.jsonl"
    if not target.exists():
        rows = TO_HUB_SCHEMA[task](files)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        # a temporary file of its own, then a rename: two processes preparing the same task never collide,
        # and the final name never holds a half-written file
        atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    return target


def data_checksums(files: dict[str, Path]) -> dict[str, str]:
    return {rel: sha256_file(path) for rel, path in files.items()}


CALIB_SOURCES = ("wikitext2-validation", "wikitext2-train")


def calibration_text(source: str | None = None, data_dir: str | Path | None = None) -> tuple[str, str]:
    """(text, description) for calibration: wikitext2-validation (default), wikitext2-train, or a text
    file. Never the test split that perplexity is scored on."""
    source = source or "wikitext2-validation"
    if source in CALIB_SOURCES:
        text = load_wikitext2(source.split("-", 1)[1], data_dir)
        return text.text, f"{source} ({text.source})"
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--calib-data {source!r} is neither {' nor '.join(CALIB_SOURCES)} nor a text file")
    try:
        return path.read_text(), f"file {path}"
    except UnicodeDecodeError as error:
        raise ValueError(f"--calib-data {source!r} is not a UTF-8 text file ({error.reason} at byte {error.start}); "
                         "give a text file") from None
