"""Sweeps: models x configs, one JSON line per run, resumable, rendered as the seed's table.

A sweep may run for a week, so it has to survive anything: a kill mid-run (finished runs are kept, the
killed one is redone), a kill mid-write (the torn line is skipped, the next record starts on a new line),
a run that raises (recorded as failed, the others go on, the next invocation retries it), and Ctrl-C.

A sweep is planned once (plan_sweep: what is left to do), its runs are run (run_runs: any subset of the
plan, so that several workers can share one, see eval/workers.py), then read back (sweep_results).

Two sweeps started on one results file (two terminals, or a second one started by mistake) share its
runs rather than duplicate them: each run is claimed by one process (a lock per run, which the system
releases when the process ends, however it ends); the other process skips it, and at its end waits for
it before reading the results, so that both print the whole table. A user who starts a second sweep
wants the runs done once and sooner, not twice and not an error; a claimed run whose process died
unfinished is run by the one that waited for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from actprune_compiler.eval.data import CALIB_SOURCES, WIKITEXT_DIR, find_data_dir, sha256_file, task_data
from actprune_compiler.eval.isolated import call_in_child
from actprune_compiler.eval.runner import EvalOptions, evaluate
from actprune_compiler.eval.sweep_file import Sweep
from actprune_compiler.models.load import load_model
from actprune_compiler.sparsity.config import SparsityConfig

FAILED = "failed"  # the "status" of a run that raised; any other record is a finished run


# --- run keys: everything that changes a result --------------------------------------------------------

def data_checksum(options: EvalOptions) -> str:
    """12 hex digits over the evaluation files the sweep's runs read, so that changed data means new runs.
    Computed once per sweep; data that is not here (it would come from the hub) enters by name."""
    digest = hashlib.sha256()
    for name, path in _data_files(options):
        digest.update(f"{name} {sha256_file(path) if path else 'hub'}\n".encode())
    return digest.hexdigest()[:12]


def _data_files(options: EvalOptions) -> list[tuple[str, Path | None]]:
    """(name, local file or None) for the WikiText-2 splits, the calibration text and the task files."""
    root = find_data_dir(options.data_dir)
    calib = options.calib_data or CALIB_SOURCES[0]
    splits = ["test"] if "wikitext2" in options.tasks else []
    files: list[tuple[str, Path | None]] = []
    if calib in CALIB_SOURCES:
        splits.append(calib.split("-", 1)[1])
    else:  # a text file (a missing one fails its runs with calibration's own message)
        files.append((calib, Path(calib) if Path(calib).is_file() else None))
    for split in splits:
        folder = root / WIKITEXT_DIR / split if root else None
        arrows = sorted(folder.glob("*.arrow")) if folder and folder.is_dir() else []
        files += [(f"wikitext2/{split}/{a.name}", a) for a in arrows] or [(f"wikitext2/{split}", None)]
    for task in options.tasks:
        if task != "wikitext2":
            local = task_data(task, options.data_dir)
            files += list(local.items()) if local else [(task, None)]
    return files


def run_key(model: str, config: SparsityConfig | None, options: EvalOptions, dtype: str = "float32",
            data: str | None = None) -> str:
    return json.dumps({"model": model, "config": config.to_dict() if config else None, "options": options.key(),
                       "dtype": dtype, "data": data}, sort_keys=True)


def result_key(result: dict[str, Any], data: str | None = None) -> str | None:
    """The run key of a stored result, recomputed from its fields: a record written before a field existed
    holds that field's default, so it still counts as done. A record from before data checksums existed is
    taken to have used `data`, the data of this sweep (there is no way to tell)."""
    try:
        config = SparsityConfig.from_dict(result["config"]) if result.get("config") else None
        known = {f.name for f in fields(EvalOptions)}
        options = EvalOptions(**{k: v for k, v in result["options"].items() if k in known})
        return run_key(result["model"], config, options, result.get("dtype", "float32"),
                       result.get("data_checksum", data))
    except (KeyError, TypeError, ValueError, AttributeError):
        return result.get("key")


# --- results.jsonl: one line per run, appended, the latest record of a key wins ---------------------------

def is_failed(result: dict[str, Any]) -> bool:
    return result.get("status") == FAILED


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every record in file order, and how many lines were torn (a crash mid-write; their runs are redone)."""
    if not path.exists():
        return [], 0
    records, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            records.append(row)
        else:
            torn += 1
    return records, torn


def latest(records: list[dict[str, Any]], data: str | None = None) -> list[dict[str, Any]]:
    """The latest record per run key: a rerun (or a retry of a failed run) replaces the older record and
    takes its place in file order."""
    by_key: dict[Any, dict[str, Any]] = {}
    for index, row in enumerate(records):
        key = result_key(row, data) or index
        by_key.pop(key, None)
        by_key[key] = row
    return list(by_key.values())


def read_results(path: Path, data: str | None = None) -> list[dict[str, Any]]:
    """The latest record per run, failed ones included (see is_failed); torn lines are skipped."""
    return latest(read_records(path)[0], data)


def append_result(path: Path, result: dict[str, Any]) -> None:
    """One line in one write() call, synced to disk: a crash leaves the whole line or a torn tail that
    read_records skips. After a torn tail the record starts on a new line, so the tail cannot swallow it.
    An exclusive lock around the check and the write lets several workers append to one file: without it
    two could both see a torn tail, or both see none while one is writing, and run their lines together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(result) + "\n").encode()  # json escapes newlines
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close(), also when the process is killed
        if _ends_mid_line(fd):
            data = b"\n" + data
        if (written := os.write(fd, data)) != len(data):  # only when the disk is full
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


# --- running -------------------------------------------------------------------------------------------

def _evaluate_in_child(model_spec: str, config: SparsityConfig | None, options: EvalOptions,
                       dtype: str) -> dict[str, Any]:
    """evaluate() in a fresh process. Compiled programs stay alive inside Dynamo and Inductor
    (with freezing, each holds a copy of the weights): one long process running a 9-run sweep of
    smollm2-135m grew to 16 GB and was killed for memory. A child per run returns it all; it never
    outlives the sweep (eval/isolated.py)."""
    return call_in_child(evaluate, model_spec, config, options, dtype=dtype, initializer=_one_process)


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")


def _one_process() -> None:
    """A run is scored by one process. Under sweep workers (eval/workers.py) the child inherits torchrun's
    variables, and evaluation would take them for a data-parallel launch (eval/distributed.py) and wait
    to share its windows with the other workers, which are busy with runs of their own."""
    for name in TORCHRUN_VARIABLES:
        os.environ.pop(name, None)


def _failure(model_spec: str, config: SparsityConfig | None, sweep: Sweep, error: Exception) -> dict[str, Any]:
    """The record of a run that raised: enough to find it again (and retry it), and why it failed."""
    return {"model": model_spec, "pruning": config.label if config else "none",
            "config": config.to_dict() if config else None, "options": sweep.options.key(), "status": FAILED,
            "error": f"{type(error).__name__}: {' '.join(str(error).split())}",
            "traceback": "".join(traceback.format_exception(error)),  # a child's includes the remote one
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


@dataclass
class SweepPlan:
    """What a sweep has left to do, read from its results file once. Workers that share a sweep must share
    one plan (eval/workers.py broadcasts rank 0's): each reading the file itself could see another's
    first record and split a different list."""
    data: str  # the data checksum, part of every run key
    runs: dict[str, tuple[str, SparsityConfig | None]]  # every run of the sweep by key, in sweep order
    todo: list[str]  # the keys of the runs not finished (failed ones are retried), in sweep order
    torn: int  # torn lines in the results file
    records: Counter[str]  # records per run key in the results file when planned: a new one is another's

    def summary(self, results: Path) -> str:
        return (f"sweep: {len(self.runs) - len(self.todo)} of {len(self.runs)} run(s) already in {results}, "
                f"{len(self.todo)} to do" + (f"; skipped {self.torn} torn line(s) left by a crash mid-write"
                                             if self.torn else ""))


def plan_sweep(sweep: Sweep) -> SweepPlan:
    data = data_checksum(sweep.options)
    runs = {run_key(m, c, sweep.options, sweep.dtype, data): (m, c) for m in sweep.models for c in sweep.configs}
    records, torn = read_records(sweep.results)
    done = {result_key(r, data) for r in latest(records, data) if not is_failed(r)}
    return SweepPlan(data, runs, [key for key in runs if key not in done], torn, _record_counts(records, data))


def _record_counts(records: list[dict[str, Any]], data: str) -> Counter[str]:
    return Counter(result_key(r, data) for r in records)


def recorded_since_plan(sweep: Sweep, plan: SweepPlan, key: str) -> bool:
    """Whether a record of the run was appended after the plan was made: another process ran it (or failed
    it) meanwhile, in this round of the sweep."""
    return _record_counts(read_records(sweep.results)[0], plan.data)[key] > plan.records[key]


@contextmanager
def claim(sweep: Sweep, key: str, *, wait: bool) -> Iterator[bool]:
    """Hold the run `key` for this process while the block runs: True when held, False when another process
    holds it (wait=False). An flock on a file beside the results, which the system releases when the process
    ends however it ends; the file goes when the run is done (a waiter re-reads the results anyway)."""
    lock = sweep.results.with_name(f".{sweep.results.name}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def run_runs(sweep: Sweep, plan: SweepPlan, keys: list[str], *, progress: bool = True, isolate: bool = True,
             worker: int | None = None) -> None:
    """Run the plan's runs `keys` in order, appending one record each. isolate=True evaluates each run in
    its own process (see _evaluate_in_child). worker: the rank of a worker sharing the sweep, which labels
    its progress bar and messages and gives the bar its own line."""
    name = "sweep" if worker is None else f"worker {worker}"
    loaded: dict[str, Any] = {}

    def run(key: str) -> None:
        model_spec, config = plan.runs[key]
        try:
            if isolate:
                result = _evaluate_in_child(model_spec, config, sweep.options, sweep.dtype)
            else:
                if model_spec not in loaded:
                    loaded.clear()  # one model in memory at a time
                    loaded[model_spec] = load_model(model_spec, sweep.dtype)
                result = evaluate(model_spec, config, sweep.options, dtype=sweep.dtype, loaded=loaded[model_spec])
        except Exception as error:  # noqa: BLE001  (one bad run must not end a week-long sweep)
            result = _failure(model_spec, config, sweep, error)
            tqdm.write(f"{name}: {model_spec} {result['pruning']} failed: {result['error']}", file=sys.stderr)
        append_result(sweep.results, {**result, "dtype": sweep.dtype, "data_checksum": plan.data, "key": key})

    def run_claimed(key: str, wait: bool) -> bool:
        """Run `key` unless another process holds it (False) or ran it since the plan."""
        with claim(sweep, key, wait=wait) as held:
            if held and not recorded_since_plan(sweep, plan, key):
                run(key)
            return held

    elsewhere = []  # runs another process holds: waited for at the end
    with tqdm(total=len(keys), desc=name, disable=not progress, position=worker) as bar:
        for key in keys:
            model_spec, config = plan.runs[key]
            bar.set_postfix_str(f"{model_spec} {config.label if config else 'none'}")
            if run_claimed(key, wait=False):
                bar.update()
            else:
                elsewhere.append(key)
                tqdm.write(f"{name}: {model_spec} {config.label if config else 'none'} is being run by another "
                           "process on the same results file; this one waits for it at the end", file=sys.stderr)
        for key in elsewhere:
            run_claimed(key, wait=True)  # done by the other process, or run here if that one died unfinished
            bar.update()


def sweep_results(sweep: Sweep, plan: SweepPlan) -> list[dict[str, Any]]:
    """The latest record of each of the sweep's runs (failed ones included), in sweep order."""
    by_key = {result_key(r, plan.data): r for r in read_results(sweep.results, plan.data)}
    return [by_key[key] for key in plan.runs if key in by_key]


def run_sweep(sweep: Sweep, *, progress: bool = True, isolate: bool = True) -> list[dict[str, Any]]:
    """Run what is not done yet (failed runs are retried), in this process, and return the latest record
    of each of the sweep's runs. isolate=True evaluates each run in its own process (see _evaluate_in_child)."""
    plan = plan_sweep(sweep)
    print(plan.summary(sweep.results))
    run_runs(sweep, plan, plan.todo, progress=progress, isolate=isolate)
    return sweep_results(sweep, plan)
