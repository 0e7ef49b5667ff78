"""Regenerate the tables of results/families/README.md from the families' sweeps.

    python scripts/families_table.py   (from the repository root)

Each table holds the runs of the sweep file as it is now (its sizes, its configs), read through the
sweep's own run keys, so records of earlier sizes kept in the same results file never mix in.
"""

import re
from pathlib import Path

from actprune_compiler.eval.sweep import is_failed, plan_sweep, sweep_results
from actprune_compiler.eval.sweep_file import load_sweep

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "actprune_compiler" / "sweeps"
README = ROOT / "results" / "families" / "README.md"
TASKS = ("arc_easy", "boolq", "piqa", "winogrande")
MODELS = {"smollm2-135m": "no chat template", "gemma3-270m": "no chat template (base model)",
          "qwen2.5-coder-0.5b": "chat template on"}
BLOCKS = {"perplexity": ("<!-- perplexity: made by scripts/families_table.py -->", "<!-- end perplexity -->"),
          "zero-shot": ("<!-- zero-shot: made by scripts/families_table.py -->", "<!-- end zero-shot -->")}


def runs(sweep_name: str) -> tuple[object, list[dict]]:
    sweep = load_sweep(SWEEPS / sweep_name)
    return sweep, [r for r in sweep_results(sweep, plan_sweep(sweep)) if not is_failed(r)]


def minutes(result: dict, dense: dict | None) -> str:
    ratio = f" ({result['runtime_s'] / dense['runtime_s']:.2f}x)" if dense else ""
    return f"{result['runtime_s'] / 60:.1f}{ratio}"


STEPS = re.compile(r"\((\d+)\)")  # "8:16 finetune(40)": a recovery method's training steps


def row_label(pruning: str) -> str:
    """The method without its step count, so each family's fine-tuning (its own steps) shares one row."""
    return STEPS.sub("", pruning)


def steps(pruning: str) -> str:
    found = STEPS.search(pruning)
    return f"; {found.group(1)} steps" if found else ""


def perplexity_block() -> list[str]:
    per_model, sizes, order = {}, [], []
    for model in MODELS:
        sweep, results = runs(f"families-{model}.yaml")
        per_model[model] = {row_label(r["pruning"]): r for r in results}
        order += [row_label(r["pruning"]) for r in results if row_label(r["pruning"]) not in order]
        tokens = results[0]["metrics"]["wikitext2"]["predicted_tokens"] if results else 0
        sizes.append(f"{model}: {sweep.options.max_windows} windows ({tokens:,} predicted tokens)" if results
                     else f"{model}: not run")
    lines = ["**WikiText-2 perplexity**, test split, the first windows of 2048 tokens (" + "; ".join(sizes) + "), "
             "through the Inductor-compiled program, float32, CPU. In brackets: replaced linear layers (and the "
             "fine-tuning's steps).", "",
             "| pruning | " + " | ".join(MODELS) + " |", "|---|" + "---|" * len(MODELS)]
    for label in order:
        cells = []
        for model in MODELS:
            r = per_model[model].get(label)
            cells.append("n/a" if r is None else
                         f"{r['metrics']['wikitext2']['ppl']:,.2f} ({r['replaced_linears']}{steps(r['pruning'])})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def zero_shot_block() -> list[str]:
    lines = ["**Zero-shot accuracy** (lm-eval `acc`, 0-shot, batch 8, through the compiled program; the mean is of "
             "the four tasks; runtime: scoring minutes and the ratio to dense):", ""]
    for model, chat in MODELS.items():
        sweep, results = runs(f"families-zeroshot-{model}.yaml")
        if not results:
            lines += [f"**{model}**: not run at the sweep's size (first {sweep.options.limit} examples per task).", ""]
            continue
        dense = next((r for r in results if r["config"] is None), None)
        errors = [r["metrics"][t]["metrics"]["acc_stderr"] for r in results for t in TASKS]
        lines += [f"**{model}** ({chat}; first {sweep.options.limit} examples per task; standard errors "
                  f"{min(errors):.3f}-{max(errors):.3f}):", "",
                  "| pruning | arc easy | boolq | piqa | winogrande | mean | runtime (min) |",
                  "|---|---|---|---|---|---|---|"]
        for r in results:
            accs = [r["metrics"][t]["metrics"]["acc"] for t in TASKS]
            lines.append(f"| {r['pruning']} | " + " | ".join(f"{a:.3f}" for a in accs)
                         + f" | {sum(accs) / 4:.3f} | {minutes(r, dense)} |")
        lines.append("")
    return lines


def replace_block(text: str, name: str, lines: list[str]) -> str:
    start, end = BLOCKS[name]
    block = "\n".join([start, "", *lines, "", end])
    if start not in text:
        raise SystemExit(f"{README} has no {start} marker")
    return text[: text.index(start)] + block + text[text.index(end) + len(end):]


if __name__ == "__main__":
    text = README.read_text()
    text = replace_block(text, "perplexity", perplexity_block())
    text = replace_block(text, "zero-shot", zero_shot_block())
    README.write_text(text)
    print(text)
