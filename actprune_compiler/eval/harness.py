"""Zero-shot tasks through lm-eval, scoring the compiled program.

Any lm-eval task or group. The seed's tasks (and a few more) have local mirrors: offline, each is
lm-eval's own yaml (prompts, choices, targets, metrics) included as is, with only the dataset source
replaced by a local JSONL in the hub's schema. Every other task, and these without local files, is
lm-eval's built-in task, unchanged (its data comes from the hub).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import yaml

from actprune_compiler.eval.data import data_checksums, prepared_task_file, task_data

# lm-eval's yaml for each task with a local mirror, and the split it scores.
LM_EVAL_YAML = {"arc_easy": ("arc/arc_easy.yaml", "test"), "arc_challenge": ("arc/arc_challenge.yaml", "test"),
                "boolq": ("super_glue/boolq/default.yaml", "validation"), "piqa": ("piqa/piqa.yaml", "validation"),
                "winogrande": ("winogrande/default.yaml", "validation"),
                "hellaswag": ("hellaswag/hellaswag.yaml", "validation")}
LOCAL_TASKS = tuple(LM_EVAL_YAML)
LOCAL_PREFIX = "actprune_local_"
LOCAL_TAG = "actprune_local"  # the tag every actprune_local_<task> yaml carries


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks  # noqa: F401  (import before TaskManager; see lm-eval 0.4.13)

    return Path(lm_eval.tasks.__file__).parent


def local_task_yaml(task: str, data_file: Path, name: str | None = None) -> dict[str, Any]:
    """lm-eval's yaml for `task` over the local `data_file`, as the task `name` (default
    actprune_local_<task>, tagged actprune_local; a plain name such as arc_easy carries no tag)."""
    relative, split = LM_EVAL_YAML[task]
    name = name or LOCAL_PREFIX + task
    return {
        "include": str(_lm_eval_tasks_dir() / relative),
        "task": name,
        "tag": [LOCAL_TAG] if name == LOCAL_PREFIX + task else [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }


def write_local_task(task: str, files: dict[str, Path], folder: Path, name: str | None = None) -> str:
    """Write lm-eval's yaml for `task` over its local `files` into `folder` as `<name>.yaml`; return its
    lm-eval task name (`name`, default actprune_local_<task>)."""
    data_file = prepared_task_file(task, files)
    config = local_task_yaml(task, data_file, name)
    (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config))
    return config["task"]


def unknown_tasks(tasks: Collection[str]) -> list[str]:
    """The names in `tasks` that are neither wikitext2, a task with a local mirror, nor a task or group
    lm-eval knows (asking lm-eval only when a name is not one of the first two: its index takes seconds)."""
    others = [t for t in tasks if t != "wikitext2" and t not in LOCAL_TASKS]
    if not others:
        return []
    from lm_eval.tasks import TaskManager  # lm-eval: the optional eval extra; 0.5 s to import its tasks

    known = set(TaskManager().all_tasks)
    return [t for t in others if t not in known]


def unknown_tasks_message(unknown: list[str]) -> str:
    return (f"unknown task {', '.join(map(repr, unknown))}; give wikitext2 or any lm-eval task or group "
            f"(`lm_eval --tasks list` lists them; local copies: {', '.join(LOCAL_TASKS)})")


def resolve_tasks(tasks: list[str], data_dir: str | Path | None, folder: Path) -> tuple[dict[str, str], dict]:
    """lm-eval task name per requested task (local copy when the files exist), and data provenance."""
    names, provenance = {}, {}
    for task in tasks:
        files = task_data(task, data_dir)
        if files is None:
            names[task], provenance[task] = task, {"source": "lm-eval built-in task (hub dataset)"}
            continue
        names[task] = write_local_task(task, files, folder)
        provenance[task] = {"source": "local files", "files": data_checksums(files)}
    return names, provenance


def check_fewshot(tasks: Collection[str], num_fewshot: int | None, data_dir: str | Path | None = None,
                  name: Callable[[str], str] = str) -> None:
    """Refuse a num_fewshot larger than a task's pool of few-shot examples (lm-eval would fail mid-run with
    'Sample larger than population'). Builds the tasks as run_tasks does, which reads their data."""
    zero_shot = [t for t in tasks if t != "wikitext2"]
    if not num_fewshot or not zero_shot:
        return
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="actprune-tasks-") as folder:
        names, _ = resolve_tasks(zero_shot, data_dir, Path(folder))
        manager = TaskManager(include_path=folder)
        for task, lm_eval_name in names.items():
            for leaf in manager.load(lm_eval_name)["tasks"].values():  # a group's tasks, or the task itself
                config = getattr(leaf, "fewshot_cfg", None)
                if config is None:
                    continue
                documents = len(leaf.fewshot_docs())
                # lm-eval draws n + 1 examples and drops the one scored when they come from the scored split
                most = documents - (config.split == leaf.config.test_split)
                if num_fewshot > most:
                    raise ValueError(f"{name('num_fewshot')} {num_fewshot} is more than task {task} can give: its "
                                     f"few-shot examples come from {documents} documents; give "
                                     f"{name('num_fewshot')} {max(most, 0)} or less")


def make_lm(runner: Callable[[torch.Tensor], torch.Tensor], model, tokenizer, batch_size: int):
    """An lm-eval HFLM whose forward pass is `runner` (the compiled program), not the eager model."""
    from lm_eval.models.huggingface import HFLM

    class CompiledLM(HFLM):
        def _model_call(self, inps, attn_mask=None, labels=None):
            # Causal requests are right-padded, so the real tokens never see the padding.
            with torch.no_grad():
                return runner(inps)

        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            # HFLM would generate with the dense eager model: refuse rather than score the wrong model.
            raise ValueError("this task generates text, which actprune eval cannot do (it scores a program "
                             "without a KV cache); run it with actprune-lm-eval --model actprune, which "
                             "generates through the sparse model")

    return CompiledLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _metrics(task_results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in task_results.items():
        name, _, filt = key.partition(",")
        if filt == "none" and isinstance(value, (int, float)) and name != "alias":
            out[name] = float(value)
    return out


def run_tasks(lm, tasks: list[str], *, data_dir: str | Path | None = None, limit: int | float | None = None,
              num_fewshot: int | None = None, apply_chat_template: bool = False) -> dict[str, Any]:
    """{task: {metrics: {acc, acc_stderr, ...}, source, files, n}} for each requested task."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="actprune-tasks-") as folder:
        names, provenance = resolve_tasks(tasks, data_dir, Path(folder))
        manager = TaskManager(include_path=folder)
        results = evaluator.simple_evaluate(
            model=lm, tasks=list(names.values()), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template, log_samples=False, bootstrap_iters=1000)
    out = {}
    for task, name in names.items():
        out[task] = {"metrics": _metrics(results["results"][name]), **provenance[task],
                     "samples": results.get("n-samples", {}).get(name, {}).get("effective")}
    return out
