"""actprune sweep SWEEP.yaml: models x configs, resumable, rendered as the seed's table and a plot."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from actprune_compiler.commands.common import positive_int
from actprune_compiler.eval.render import (
    adds_run_time_work,
    methods_table,
    plot,
    plot_methods,
    recovery_table,
    seed_table,
    stderr_note,
)
from actprune_compiler.eval.sweep import is_failed, plan_sweep, run_sweep, sweep_results
from actprune_compiler.eval.sweep_file import load_sweep
from actprune_compiler.eval.workers import launch_sweep, run_sweep_worker, worker_info, worker_limit
from actprune_compiler.reporting.files import atomic_write, check_output_file, file_name_part


def worker_count(text: str) -> int:
    """An argparse type: a positive number of workers that this machine's cores and memory hold."""
    count = positive_int(text)
    limit, why = worker_limit()
    if count > limit:
        raise argparse.ArgumentTypeError(f"{count} is more than this machine holds: {why}; give {limit} or fewer")
    return count


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a sweep file (resumable) and render its table and plot")
    p.add_argument("sweep", help="sweep YAML (see actprune_compiler/sweeps/)")
    p.add_argument("--render-only", action="store_true", help="only redraw table.md and plot.png")
    p.add_argument("--workers", type=worker_count, default=1, metavar="K",
                   help="run the sweep's runs on K worker processes (torchrun's elastic agent), each on its own "
                        "GPU or its own cores; `torchrun --nproc_per_node K -m actprune_compiler.cli sweep FILE` "
                        "does the same")
    return p


def describe(sweep, results: list[dict[str, Any]], source: str) -> str:
    o = sweep.options
    zero_shot = [t for t in o.tasks if t != "wikitext2"]
    limits = []
    if "wikitext2" in o.tasks:
        limits.append(f"WikiText-2 test: first {o.max_windows or 'all'} windows of {o.seqlen} tokens")
    if zero_shot:
        limits.append(f"zero-shot: {o.limit or 'all'} examples per task ({', '.join(zero_shot)}), "
                      f"{o.num_fewshot or 0}-shot; batch size {o.batch_size}")
    limits = "; ".join(limits)
    scored = ("Scored through the Inductor-compiled program. Runtime is its scoring wall time (compilation "
              "excluded, reported per run in results.jsonl); 'vs dense' divides by the dense run of this sweep."
              if o.compile else
              "Scored through the uncompiled exported program (reference kernels; the same masks as the "
              f"compiled program up to float32 rounding), which spares compiling each of the {len(results)} "
              "configurations.")
    total = sum(r["total_s"] for r in results) / 60
    return (f"Sweep `{source}`, rerun with `actprune sweep {source}`.\n\n{limits}. {scored} "
            f"Calibration (where a method needs it): WikiText-2 validation, 16 x 512 tokens. "
            f"Sum of run wall times: {total:.0f} min.\n" + (f"\n{sweep.note}\n" if sweep.note else ""))


def gap_note(pattern: str, gap: dict[str, Any], what: str) -> str:
    return (f"- {pattern}: {what} **{gap['best']}** ppl {gap['ppl_best']:.2f} vs magnitude {gap['ppl_magnitude']:.2f}: "
            f"closes {gap['gap_closed']:.0%} of the gap to dense "
            f"({'meets' if gap['gap_closed'] >= 0.5 else 'short of'} the goal of half)"
            + (" at the run-time cost in the table below" if adds_run_time_work(gap["best"]) else ""))


def _model_section(sweep, results: list[dict[str, Any]], model: str, folder: Path) -> tuple[list[str], Path]:
    mine = [r for r in results if r["model"] == model]
    if sweep.table == "methods":
        table, gaps = methods_table(results, model)
        notes = [gap_note(p, g["free"], "best activation method") for p, g in gaps.items() if "free" in g]
        notes += [gap_note(p, g["with_extra_work"], "best with extra run-time work") for p, g in gaps.items()
                  if "with_extra_work" in g]
        image = plot_methods(results, model, folder / f"methods-{file_name_part(model)}.png")
        if any((r["config"] or {}).get(k, "none") != "none" for r in mine for k in ("recovery", "rotation")):
            notes += ["", "Recovery methods (learned once on calibration text, folded into weights and biases) and "
                      "rotations (x @ Q at run time), with what each costs:", "",
                      recovery_table(results, model), "", stderr_note(mine)]
        return [f"\n## {model}\n", table, "", *notes], image
    image = plot(results, model, folder / f"plot-{file_name_part(model)}.png")
    return [f"\n## {model}\n", seed_table(results, model), "", stderr_note(mine)], image


def render(sweep, source: str) -> list[Path]:
    # The sweep's own runs: its results file may also hold runs of an earlier version of it (other sizes,
    # other configs), which must not appear as rows of this table. A failed run has no metrics.
    results = [r for r in sweep_results(sweep, plan_sweep(sweep)) if not is_failed(r)]
    folder = sweep.results.parent
    parts = [f"# actprune results ({time.strftime('%Y-%m-%d')})\n", describe(sweep, results, source)]
    written = []
    for model in sweep.models:
        if any(r["model"] == model for r in results):
            lines, image = _model_section(sweep, results, model, folder)
            parts += [*lines, f"\n![{model}]({image.name})\n"]
            written.append(image)
    table = folder / "table.md"
    atomic_write(table, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    return [table, *written]


def run(args: argparse.Namespace) -> int:
    """0 when every run of the sweep finished; 1 when some failed (recorded; the next invocation retries
    them); Ctrl-C re-raises after the note (the CLI exits 130), finished runs being saved already.
    Under torchrun (WORLD_SIZE > 1) this process is one worker: it runs its share, and rank 0 renders and
    returns the status (torchrun exits 1 when a worker does)."""
    worker = worker_info()
    if worker and args.workers > 1:
        raise ValueError(f"--workers {args.workers} cannot be combined with torchrun, which started "
                         f"{worker.world_size} workers already; drop --workers under torchrun")
    sweep = load_sweep(args.sweep)
    # results.jsonl, table.md and the plots go in one folder: one that cannot take them fails now, not
    # after the first run
    check_output_file(sweep.results, f"sweep file {args.sweep}: results", inputs=(args.sweep,))
    results = []
    if not args.render_only:
        try:
            if worker:
                results = run_sweep_worker(sweep, worker)
            elif args.workers > 1:
                results = launch_sweep(args.sweep, args.workers)
            else:
                results = run_sweep(sweep)
        except KeyboardInterrupt:
            if worker and worker.rank != 0:  # rank 0 says it for all
                raise
            print(f"\ninterrupted: finished runs are saved in {sweep.results}; run the same command again to "
                  "resume, or add --render-only to draw the table of what is done")
            raise
    if worker and worker.rank != 0:
        # rank 0 renders and reports, and its status is the command's. A non-zero status here would make
        # torchrun's agent stop rank 0, perhaps in the middle of writing the table.
        return 0
    failed = [r for r in results if is_failed(r)]
    for path in render(sweep, args.sweep):
        print(f"wrote {path}")
    print(Path(sweep.results.parent / "table.md").read_text())
    return _report_failures(failed, sweep.results)


def _report_failures(failed: list[dict[str, Any]], results: Path) -> int:
    for record in failed:
        print(f"failed: {record['model']} {record['pruning']}: {record['error']}", file=sys.stderr)
    if failed:
        print(f"actprune: {len(failed)} run(s) failed (recorded with their tracebacks in {results}); "
              "run the same command again to retry them", file=sys.stderr)
    return 1 if failed else 0
