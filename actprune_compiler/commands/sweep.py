"""actprune sweep SWEEP.yaml: models x configs, resumable, rendered as the seed's table and a plot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a sweep file (resumable) and render its table and plot")
    p.add_argument("sweep", help="sweep YAML (see actprune_compiler/sweeps/)")
    p.add_argument("--render-only", action="store_true", help="only redraw table.md and plot.png")
    return p


def describe(sweep, results: list[dict[str, Any]], source: str) -> str:
    o = sweep.options
    limits = (f"WikiText-2 test: first {o.max_windows or 'all'} windows of {o.seqlen} tokens; zero-shot: "
              f"{o.limit or 'all'} examples per task ({', '.join(t for t in o.tasks if t != 'wikitext2')}), "
              f"{o.num_fewshot or 0}-shot; batch size {o.batch_size}")
    total = sum(r["total_s"] for r in results) / 60
    return (f"Sweep `{source}`, rerun with `actprune sweep {source}`.\n\n{limits}. "
            f"Runtime is the scoring wall time of the compiled program (Inductor compilation excluded, "
            f"reported per run in results.jsonl); 'vs dense' divides by the dense run of the same sweep. "
            f"Sum of run wall times: {total:.0f} min.\n")


def render(sweep, source: str) -> list[Path]:
    from actprune_compiler.artifact import atomic_write
    from actprune_compiler.eval.render import plot, seed_table, stderr_note
    from actprune_compiler.eval.sweep import read_results

    results = read_results(sweep.results)
    folder = sweep.results.parent
    parts = [f"# actprune results ({time.strftime('%Y-%m-%d')})\n", describe(sweep, results, source)]
    written = []
    for model in sweep.models:
        if not any(r["model"] == model for r in results):
            continue
        parts += [f"\n## {model}\n", seed_table(results, model), "", stderr_note(
            [r for r in results if r["model"] == model])]
        written.append(plot(results, model, folder / f"plot-{model}.png"))
        parts.append(f"\n![{model}](plot-{model}.png)\n")
    table = folder / "table.md"
    atomic_write(table, lambda tmp: Path(tmp).write_text("\n".join(parts)))
    return [table, *written]


def run(args: argparse.Namespace) -> int:
    from actprune_compiler.eval.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep)
    if not args.render_only:
        try:
            run_sweep(sweep)
        except KeyboardInterrupt:
            print("\ninterrupted: finished runs are saved; run the same command again to resume")
    for path in render(sweep, args.sweep):
        print(f"wrote {path}")
    print(Path(sweep.results.parent / "table.md").read_text())
    return 0
