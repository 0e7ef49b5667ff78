"""`actprune-lm-eval`: lm-eval's own command line, with the model "actprune" registered.

Arguments are lm-eval's, parsed by lm-eval's parser and run by lm-eval unchanged, except for the task
names that actprune's data folder (data/, or $ACTPRUNE_DATA_DIR) has a local copy of:

- a plain name (arc_easy, arc_challenge, boolq, piqa, winogrande, hellaswag) whose files are in the data
  folder is scored from the local copy, under its plain name, offline; a line on stderr says so and where.
  `--actprune-hub-tasks` (taken out before lm-eval parses) leaves plain names to lm-eval: its own tasks,
  which read the hub. A plain name without local files always goes to lm-eval unchanged;
- `actprune_local_<task>` (the names `actprune eval` scores under) and the tag `actprune_local` always
  score the local copies, and fail when the files are not there.

Each local task is handed to lm-eval as the path of a yaml written for this run: lm-eval's own yaml for
the task (`include:`d, so prompts and metrics are lm-eval's) with only the dataset replaced. lm-eval loads
a yaml path as that file, without looking the name up among its tasks, so the local copy is used whatever
else defines the name (an `--include_path` task of the same name is refused as ambiguous), and
--include_path stays free for the user's own tasks.

    actprune-lm-eval --model actprune --model_args pretrained=smollm2-135m,pattern=8:16 \\
        --tasks arc_easy --limit 50
    torchrun --standalone --nproc_per_node 2 $(which actprune-lm-eval) ...   # data parallel

On the CPU use torchrun: `accelerate launch --cpu --num_processes 2` starts a single process (accelerate 1.x).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from actprune_compiler.commands.errors import run_command
from actprune_compiler.eval.data import find_data_dir, task_data, where_data_goes
from actprune_compiler.eval.harness import LM_EVAL_YAML, LOCAL_PREFIX, LOCAL_TAG, write_local_task
from actprune_compiler.reporting.files import check_output_file, check_output_folder

HUB_FLAG = "--actprune-hub-tasks"  # plain task names go to lm-eval's own (hub) tasks


def take_hub_flag(argv: list[str]) -> tuple[list[str], bool]:
    """argv without --actprune-hub-tasks, and whether it was there: lm-eval's parser never sees it."""
    rest = [arg for arg in argv if arg != HUB_FLAG]
    return rest, len(rest) != len(argv)


def local_names(requested: str, hub_tasks: bool = False) -> dict[str, str] | None:
    """{lm-eval task name: actprune task} that one requested name stands for when actprune's local copy
    scores it, or None when the name goes to lm-eval unchanged."""
    if requested == LOCAL_TAG:
        found = {LOCAL_PREFIX + t: t for t in LM_EVAL_YAML if task_data(t) is not None}
        if not found:
            raise SystemExit(f"actprune-lm-eval: the tag {LOCAL_TAG} scores the local task files, and there are "
                             f"none; they go in {where_data_goes()}")
        return found
    if requested.startswith(LOCAL_PREFIX):
        task = requested.removeprefix(LOCAL_PREFIX)
        if task not in LM_EVAL_YAML:
            raise SystemExit(f"actprune-lm-eval: task {requested!r} has no local mirror; allowed: "
                             f"{', '.join(LOCAL_PREFIX + t for t in LM_EVAL_YAML)} or the tag {LOCAL_TAG}")
        if task_data(task) is None:
            raise SystemExit(f"actprune-lm-eval: task {requested!r} needs the local {task} files, which are not "
                             f"there; they go in {where_data_goes()}")
        return {requested: task}
    if requested in LM_EVAL_YAML and not hub_tasks and task_data(requested) is not None:
        return {requested: requested}
    return None


def local_tasks(tasks: list[str] | None, hub_tasks: bool = False) -> dict[str, str]:
    """{lm-eval task name: actprune task} for every requested name scored from the local copy."""
    found: dict[str, str] = {}
    for requested in tasks or []:
        found.update(local_names(requested, hub_tasks) or {})
    return found


def _refuse_include_path_clash(include_path: str, local: dict[str, str]) -> None:
    """A task of --include_path named like a local copy: which one to score would be a guess."""
    from lm_eval.tasks import TaskManager

    defined = set(TaskManager(include_path=include_path, include_defaults=False).all_tasks)
    clash = sorted(defined & set(local))
    if not clash:
        return
    plain = [name for name in clash if not name.startswith(LOCAL_PREFIX)]
    way_out = (f"pass {HUB_FLAG} to score {include_path}'s {', '.join(plain)} (plain names then go to lm-eval "
               f"unchanged), or rename it there" if plain else f"rename it in {include_path}")
    raise SystemExit(f"actprune-lm-eval: --include_path {include_path} defines {', '.join(clash)}, which this "
                     f"command scores from actprune's local copy; {way_out}")


def _say(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once under torchrun, not once per process
        print(f"actprune-lm-eval: {line}", file=sys.stderr, flush=True)


def add_local_tasks(args: argparse.Namespace, folder: Path, hub_tasks: bool = False) -> dict[str, str]:
    """Replace each requested name that the local copy scores by the path of its yaml, written into `folder`;
    return {lm-eval task name: actprune task} for them. The other names are left as they are."""
    tasks = getattr(args, "tasks", None)
    if not tasks:
        return {}
    plan = [(requested, local_names(requested, hub_tasks)) for requested in tasks]
    local = {name: task for _, names in plan for name, task in (names or {}).items()}
    if local and getattr(args, "include_path", None):
        _refuse_include_path_clash(args.include_path, local)
    rewritten: list[str] = []
    written: set[str] = set()
    for requested, names in plan:
        if names is None:
            rewritten.append(requested)
            if requested in LM_EVAL_YAML and not hub_tasks:
                _say(f"{requested}: no local copy in {find_data_dir() or 'any data folder'}; lm-eval's own task "
                     "reads it from the hub")
            continue
        for name, task in names.items():
            if name in written:
                continue
            files = task_data(task)
            write_local_task(task, files, folder, name)
            written.add(name)
            rewritten.append(str(folder / f"{name}.yaml"))
            hint = f" ({HUB_FLAG}: lm-eval's hub task instead)" if name == task else ""
            _say(f"{name}: scoring the local copy {', '.join(str(p) for p in files.values())}{hint}")
    args.tasks = rewritten
    return local


def check_output_path(args: argparse.Namespace) -> None:
    """lm-eval writes --output_path (a .json file, or a folder it writes into) after the whole evaluation:
    a place that cannot take it fails now instead."""
    path = getattr(args, "output_path", None)
    if path is None:
        return
    if str(path).endswith(".json"):
        check_output_file(path, "--output_path")
    else:
        check_output_folder(path, force=True, flag="--output_path", replaced=False)


def debugging(args: argparse.Namespace | None) -> bool:
    """lm-eval's debug level (--verbosity DEBUG or LMEVAL_LOG_LEVEL=DEBUG) shows tracebacks, as --debug does."""
    level = getattr(args, "verbosity", None) or os.environ.get("LMEVAL_LOG_LEVEL", "")
    return str(level).upper() == "DEBUG"


def main() -> int:
    """lm_eval.__main__.cli_evaluate, with "actprune" registered and the local tasks swapped in, under
    actprune's error policy: a failure is one line (`actprune-lm-eval: error: ...`), exit 2 for bad input
    and 1 otherwise, Ctrl-C 130, SIGTERM 143 (commands/errors.py)."""
    parsed: list[argparse.Namespace] = []

    def body() -> int:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging

        # registers --model actprune; imports lm-eval (the optional eval extra) at the top, as the two lines above do
        import actprune_compiler.eval.lm_eval_model  # noqa: F401

        sys.argv, hub_tasks = take_hub_flag(sys.argv)
        setup_logging()
        parser = HarnessCLI()
        parsed.append(parser.parse_args())
        args = parsed[0]
        with tempfile.TemporaryDirectory(prefix="actprune-lm-eval-tasks-") as folder:
            if getattr(args, "command", None) == "run":
                check_output_path(args)
                add_local_tasks(args, Path(folder), hub_tasks)
            parser.execute(args)
        return 0

    return run_command("actprune-lm-eval", body, debug=lambda: debugging(parsed[0] if parsed else None))


if __name__ == "__main__":
    sys.exit(main())
