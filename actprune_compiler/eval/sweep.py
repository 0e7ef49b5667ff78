"""Sweeps: models x configs, one JSON line per finished run, resumable, rendered as the seed's table."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from actprune_compiler.eval.runner import EvalOptions, evaluate
from actprune_compiler.sparsity.config import SparsityConfig


@dataclass
class Sweep:
    models: list[str]
    configs: list[SparsityConfig | None]  # None: the dense model
    options: EvalOptions
    results: Path  # results.jsonl; table.md and plot.png are written beside it
    dtype: str = "float32"
    table: str = "seed"  # seed: the seed's columns; methods: ppl per criterion/correction and pattern
    note: str = ""  # how the committed results were run (machine load, pinning), printed under the table


def _config(entry: dict[str, Any] | str | None) -> SparsityConfig | None:
    if entry in (None, "none", "dense") or (isinstance(entry, dict) and entry.get("pattern") in ("none", "dense")):
        return None
    if isinstance(entry, str):
        return SparsityConfig(pattern=entry)
    return SparsityConfig.from_dict(entry)


def load_sweep(path: str | Path) -> Sweep:
    spec = yaml.safe_load(Path(path).read_text())
    known = {"models", "configs", "options", "results", "dtype", "table", "note"}
    if not isinstance(spec, dict) or set(spec) - known or not spec.get("models") or not spec.get("configs"):
        raise ValueError(f"sweep file {path} must be a mapping with keys {sorted(known)} "
                         "(models and configs required)")
    option_names = {f.name for f in fields(EvalOptions)}
    options = spec.get("options", {})
    if unknown := set(options) - option_names:
        raise ValueError(f"unknown sweep options {sorted(unknown)}; allowed: {sorted(option_names)}")
    options = EvalOptions(**{**options, "tasks": tuple(options.get("tasks", ("wikitext2",)))})
    results = Path(spec.get("results", Path(path).with_suffix("").name + "/results.jsonl"))
    table = spec.get("table", "seed")
    if table not in ("seed", "methods"):
        raise ValueError(f"sweep table {table!r} is unknown; allowed: seed, methods")
    return Sweep(list(spec["models"]), [_config(c) for c in spec["configs"]], options, results,
                 spec.get("dtype", "float32"), table, spec.get("note", "").strip())


def run_key(model: str, config: SparsityConfig | None, options: EvalOptions) -> str:
    return json.dumps({"model": model, "config": config.to_dict() if config else None,
                       "options": options.key()}, sort_keys=True)


def result_key(result: dict[str, Any]) -> str | None:
    """The run key of a stored result, recomputed from its config and options: a record written
    before a field existed holds that field's default, so it still counts as done."""
    try:
        config = SparsityConfig.from_dict(result["config"]) if result.get("config") else None
        known = {f.name for f in fields(EvalOptions)}
        options = EvalOptions(**{k: v for k, v in result["options"].items() if k in known})
        return run_key(result["model"], config, options)
    except (KeyError, TypeError, ValueError):
        return result.get("key")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Finished runs, the latest one per key; a torn last line (a crash mid-write) is ignored and
    will be redone."""
    if not path.exists():
        return []
    latest: dict[Any, dict[str, Any]] = {}
    for index, line in enumerate(path.read_text().splitlines()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = result_key(row) or index
        latest.pop(key, None)  # a rerun replaces the older record and takes its place in file order
        latest[key] = row
    return list(latest.values())


def append_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _evaluate_in_child(model_spec: str, config: SparsityConfig | None, options: EvalOptions,
                       dtype: str) -> dict[str, Any]:
    """evaluate() in a fresh process. Compiled programs stay alive inside Dynamo and Inductor
    (with freezing, each holds a copy of the weights): one long process running a 9-run sweep of
    smollm2-135m grew to 16 GB and was killed for memory. A child per run returns it all."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(evaluate, model_spec, config, options, dtype=dtype).result()


def run_sweep(sweep: Sweep, *, progress: bool = True, isolate: bool = True) -> list[dict[str, Any]]:
    """Run what is not done yet; isolate=True evaluates each run in its own process (see above)."""
    from actprune_compiler.models import load_model

    done = {result_key(r) for r in read_results(sweep.results)}
    todo = [(m, c) for m in sweep.models for c in sweep.configs if run_key(m, c, sweep.options) not in done]
    print(f"sweep: {len(done)} run(s) already in {sweep.results}, {len(todo)} to do")
    loaded: dict[str, Any] = {}
    with tqdm(todo, desc="sweep", disable=not progress) as bar:
        for model_spec, config in bar:
            bar.set_postfix_str(f"{model_spec} {config.label if config else 'none'}")
            if isolate:
                result = _evaluate_in_child(model_spec, config, sweep.options, sweep.dtype)
            else:
                if model_spec not in loaded:
                    loaded = {model_spec: load_model(model_spec, sweep.dtype)}  # one model in memory at a time
                result = evaluate(model_spec, config, sweep.options, dtype=sweep.dtype, loaded=loaded[model_spec])
            result["key"] = run_key(model_spec, config, sweep.options)
            append_result(sweep.results, result)
    return read_results(sweep.results)
