"""`actprune-lm-eval`: lm-eval's own command line, with the model "actprune" registered.

Arguments are lm-eval's, parsed by lm-eval's parser and run by lm-eval unchanged, with one addition:
task names `actprune_local_<task>` (e.g. actprune_local_arc_easy, the names `actprune eval` scores under)
are lm-eval's yaml for <task> over the local copy in actprune's data folder (data/, or $ACTPRUNE_DATA_DIR),
so they run offline. Plain task names (arc_easy, ...) stay lm-eval's own hub tasks.

    actprune-lm-eval --model actprune --model_args pretrained=smollm2-135m,pattern=8:16 \\
        --tasks actprune_local_arc_easy --limit 50
    torchrun --standalone --nproc_per_node 2 $(which actprune-lm-eval) ...   # data parallel

On the CPU use torchrun: `accelerate launch --cpu --num_processes 2` starts a single process (accelerate 1.x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from actprune_compiler.eval.data import task_data, where_data_goes
from actprune_compiler.eval.harness import LM_EVAL_YAML, LOCAL_PREFIX, write_local_task

LOCAL_TAG = "actprune_local"  # the tag the local yamls carry: every local task whose data is here


def requested_local_tasks(tasks: list[str] | None) -> list[str]:
    """The actprune tasks (arc_easy, ...) behind the actprune_local_* names (and the actprune_local tag)."""
    wanted = []
    for name in tasks or []:
        if name == LOCAL_TAG:
            wanted += [t for t in LM_EVAL_YAML if task_data(t) is not None]
        elif name.startswith(LOCAL_PREFIX):
            task = name.removeprefix(LOCAL_PREFIX)
            if task not in LM_EVAL_YAML:
                raise SystemExit(f"actprune-lm-eval: task {name!r} has no local mirror; allowed: "
                                 f"{', '.join(LOCAL_PREFIX + t for t in LM_EVAL_YAML)} or the tag {LOCAL_TAG}")
            if task_data(task) is None:
                raise SystemExit(f"actprune-lm-eval: task {name!r} needs the local {task} files, which are not "
                                 f"there; they go in {where_data_goes()}")
            wanted.append(task)
    return list(dict.fromkeys(wanted))


def add_local_tasks(args: argparse.Namespace, folder: Path) -> None:
    """Write the yamls of the requested local tasks into `folder` and make it lm-eval's include path."""
    local = requested_local_tasks(getattr(args, "tasks", None))
    if not local:
        return
    if args.include_path:
        # lm-eval's command line takes a single include path, and it is needed for the local tasks.
        raise SystemExit(f"actprune-lm-eval: --include_path {args.include_path} cannot be combined with the local "
                         f"tasks {', '.join(LOCAL_PREFIX + t for t in local)}; score them in separate runs")
    for task in local:
        write_local_task(task, task_data(task), folder)
    args.include_path = str(folder)


def main() -> None:
    """lm_eval.__main__.cli_evaluate, with "actprune" registered and the local tasks' include path added."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import actprune_compiler.eval.lm_eval_model  # noqa: F401  (registers --model actprune)

    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="actprune-lm-eval-tasks-") as folder:
        if getattr(args, "command", None) == "run":
            add_local_tasks(args, Path(folder))
        parser.execute(args)


if __name__ == "__main__":
    sys.exit(main())
