"""A sweep file (YAML): models x configs x evaluation options. Every mistake is one sentence naming the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from actprune_compiler.eval.data import CALIB_SOURCES
from actprune_compiler.eval.harness import unknown_tasks, unknown_tasks_message  # lm_eval only if needed
from actprune_compiler.eval.perplexity import BOS_MODES
from actprune_compiler.eval.runner import EvalOptions
from actprune_compiler.models.load import DTYPES
from actprune_compiler.sparsity.config import SparsityConfig

SWEEP_KEYS = ("models", "configs", "options", "results", "dtype", "table", "note")
TABLES = ("seed", "methods")


@dataclass
class Sweep:
    models: list[str]
    configs: list[SparsityConfig | None]  # None: the dense model
    options: EvalOptions
    results: Path  # results.jsonl; table.md and plot.png are written beside it
    dtype: str = "float32"
    table: str = "seed"  # seed: the seed's columns; methods: ppl per criterion/correction and pattern
    note: str = ""  # how the committed results were run (machine load, pinning), printed under the table


def load_sweep(path: str | Path) -> Sweep:
    if not str(path).strip():
        raise FileNotFoundError("the sweep file is empty (no path); give a sweep YAML such as "
                                "actprune_compiler/sweeps/seed-table.yaml")
    path = Path(path)
    spec = _read_mapping(path)
    try:
        return _build_sweep(spec, default_results=Path(path.with_suffix("").name) / "results.jsonl")
    except ValueError as error:
        raise ValueError(f"sweep file {path}: {error}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"sweep file {path} is not valid YAML{where}: "
                         f"{getattr(error, 'problem', None) or error}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file {path} must be a mapping with keys {', '.join(SWEEP_KEYS)}, "
                         f"not {_show(spec)}")
    return spec


def _build_sweep(spec: dict[str, Any], default_results: Path) -> Sweep:
    if unknown := sorted(set(spec) - set(SWEEP_KEYS)):
        raise ValueError(f"unknown key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    if not spec.get("models") or not spec.get("configs"):
        raise ValueError('models and configs required, e.g. models: [smollm2-135m] and configs: [none, "2:4"]')
    if not isinstance(models := spec["models"], list):
        raise ValueError(f"models must be a list (models: [smollm2-135m]), not {_show(models)}")
    if bad := [m for m in models if not isinstance(m, str)]:
        raise ValueError(f"models must be names or folders, not {_show(bad[0])}")
    if not isinstance(configs := spec["configs"], list):
        raise ValueError(f'configs must be a list (configs: [none, "8:16"]), not {_show_pattern(configs)}')
    for name in ("results", "dtype", "table", "note"):
        if spec.get(name) is not None and not isinstance(spec[name], str):
            raise ValueError(f"{name} must be a string, not {_show(spec[name])}")
    if (dtype := spec.get("dtype") or "float32") not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    table = spec.get("table") or "seed"
    if table not in TABLES:
        raise ValueError(f"table {table!r} is unknown; allowed: {', '.join(TABLES)}")
    return Sweep(models, [_config_entry(i, c) for i, c in enumerate(configs, 1)], _options(spec.get("options")),
                 Path(spec.get("results") or default_results), dtype, table,
                 (spec.get("note") or "").strip())


def _show(value: Any) -> str:
    return f"the {type(value).__name__} {value!r}"


def _show_pattern(value: Any) -> str:
    """_show, and why a number where a pattern belongs: YAML 1.1 reads an unquoted 8:16 as 8*60+16 = 496."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
        return f'{_show(value)} (YAML reads an unquoted N:M in base 60, 8:16 as 496: quote patterns, "8:16")'
    return _show(value)


def _config(entry: dict[str, Any] | str | float | None) -> SparsityConfig | None:
    if entry in (None, "none", "dense") or (isinstance(entry, dict) and entry.get("pattern") in ("none", "dense")):
        return None
    pattern = entry.get("pattern") if isinstance(entry, dict) else entry
    if isinstance(pattern, int) and not isinstance(pattern, bool):  # never a pattern: an unquoted N:M, or a typo
        raise ValueError(f'the pattern must be a string such as "8:16", not {_show_pattern(pattern)}')
    if isinstance(entry, (str, float)):
        return SparsityConfig(pattern=entry)
    if isinstance(entry, dict):
        return SparsityConfig.from_dict(entry)
    raise ValueError(f"must be none, a pattern or a mapping of SparsityConfig fields, not {_show(entry)}")


def _config_entry(index: int, entry: Any) -> SparsityConfig | None:
    try:
        return _config(entry)
    except (ValueError, TypeError) as error:
        raise ValueError(f"configs entry {index} ({entry!r}): {error}") from None


def _options(value: Any) -> EvalOptions:
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValueError(f"options must be a mapping (options: {{seqlen: 2048}}), not {_show(value)}")
    types = get_type_hints(EvalOptions)
    if unknown := sorted(set(value) - set(types)):
        raise ValueError(f"unknown sweep options {unknown}; allowed: {sorted(types)}")
    for name, option in value.items():
        if not _has_type(option, types[name]):
            raise ValueError(f"option {name} must be {_type_name(types[name])}, not {_show(option)}")
    _check_values(value)
    return EvalOptions(**{**value, "tasks": tuple(value.get("tasks", ("wikitext2",)))})


AT_LEAST = {"seqlen": 2, "batch_size": 1, "max_windows": 1, "num_fewshot": 0}  # None, where allowed, is unset


def _check_values(options: dict[str, Any]) -> None:
    """The values of well-typed options, as the eval command's flags check them."""
    if "tasks" in options:
        if not options["tasks"]:
            raise ValueError("option tasks is empty; give wikitext2 or any lm-eval task or group")
        if unknown := unknown_tasks(options["tasks"]):
            raise ValueError(f"option tasks has {unknown_tasks_message(unknown)}")
    if "bos" in options and options["bos"] not in BOS_MODES:
        raise ValueError(f"option bos {options['bos']!r} is unknown; allowed: {', '.join(BOS_MODES)}")
    calib = options.get("calib_data")
    if calib is not None and calib not in CALIB_SOURCES and not Path(calib).is_file():
        raise ValueError(f"option calib_data {calib!r} is neither {', '.join(CALIB_SOURCES)} "
                         f"nor an existing text file")
    for name, minimum in AT_LEAST.items():
        if options.get(name) is not None and options[name] < minimum:
            allowed = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"option {name} {options[name]} is too small; it must be {allowed}")
    limit = options.get("limit")
    if limit is not None and not (0 < limit < 1 or (limit >= 1 and float(limit).is_integer())):
        raise ValueError(f"option limit {limit} is not allowed; it must be a fraction between 0 and 1 "
                         f"or a whole count of examples >= 1")


def _has_type(value: Any, hint: Any) -> bool:
    """isinstance for EvalOptions' annotations (unions, tuple[str, ...], dict[...]); YAML gives lists."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint is not bool:  # bool is an int subclass, but `seqlen: true` is a mistake
        return False
    return isinstance(value, (int, float) if hint is float else origin or hint)


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is tuple:
        return f"a list of {_type_name(args[0])}"
    return "null" if hint is type(None) else getattr(origin or hint, "__name__", str(hint))
