"""Results -> the seed's markdown table and a plot of perplexity and accuracy per pattern."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from actprune_compiler.reporting.files import atomic_write
from actprune_compiler.reporting.tables import format_table

ZERO_SHOT = ("arc_easy", "boolq", "piqa", "winogrande")
SEED_COLUMNS = ("pruning", "wikitext2 ppl", "arc easy", "boolq", "piqa", "winogrande", "runtime (min)",
                "vs dense", "replaced linear layers")


def _acc(result: dict[str, Any], task: str) -> float | None:
    entry = result["metrics"].get(task)
    return entry["metrics"].get("acc") if entry else None


def mean_accuracy(result: dict[str, Any]) -> float | None:
    values = [_acc(result, t) for t in ZERO_SHOT]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def seed_row(result: dict[str, Any], dense_runtime: float | None) -> dict[str, Any]:
    ppl = result["metrics"].get("wikitext2", {}).get("ppl")
    row = {"pruning": result["pruning"], "wikitext2 ppl": f"{ppl:.3f}" if ppl else "",
           "runtime (min)": f"{result['runtime_s'] / 60:.2f}",
           "vs dense": f"{result['runtime_s'] / dense_runtime:.2f}x" if dense_runtime else "",
           "replaced linear layers": result["replaced_linears"]}
    return {**row, **accuracy_cells(result)}


def accuracy_cells(result: dict[str, Any]) -> dict[str, str]:
    """{'arc easy': '0.460', ...}: the zero-shot columns of a table row ('' where a task was not run)."""
    cells = {}
    for task in ZERO_SHOT:
        acc = _acc(result, task)
        cells[task.replace("_", " ")] = "" if acc is None else f"{acc:.3f}"
    return cells


def headline_metric(metrics: dict[str, float]) -> str:
    """'0.460 ± 0.032' for accuracy (the seed's metric); other tasks name theirs: 'exact_match 0.210 ± 0.018'."""
    name = "acc" if "acc" in metrics else next((k for k in metrics if not k.endswith("_stderr")), None)
    if name is None:
        return ""
    text = f"{metrics[name]:.3f} ± {metrics.get(name + '_stderr', float('nan')):.3f}"
    return text if name == "acc" else f"{name} {text}"


def _order(result: dict[str, Any]) -> tuple:
    config = result.get("config")
    if config is None:
        return (0, 0, 0)
    pattern = config["pattern"]
    size = int(pattern.split(":")[1]) if ":" in pattern else 1000
    return (1 if config["target"] == "activation" else 2, size, result["pruning"])


def seed_table(results: list[dict[str, Any]], model: str) -> str:
    rows = sorted((r for r in results if r["model"] == model), key=_order)
    dense = next((r for r in rows if r["config"] is None), None)
    dense_runtime = dense["runtime_s"] if dense else None
    return format_table([seed_row(r, dense_runtime) for r in rows], SEED_COLUMNS, markdown=True)


def stderr_note(results: list[dict[str, Any]]) -> str:
    errors = [r["metrics"][t]["metrics"].get("acc_stderr") for r in results for t in ZERO_SHOT
              if t in r["metrics"]]
    errors = [e for e in errors if e is not None and math.isfinite(e)]
    if not errors:
        return ""
    return (f"Accuracy standard errors (lm-eval, bootstrap) are {min(errors):.3f}-{max(errors):.3f}: "
            f"differences under about {2 * max(errors):.3f} are within noise.")


def plot(results: list[dict[str, Any]], model: str, path: Path) -> Path:
    """Perplexity (log scale) and mean zero-shot accuracy per pattern, activation vs weight pruning."""
    import matplotlib  # the optional eval extra; 0.35 s to import pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["model"] == model]
    dense = next((r for r in rows if r["config"] is None), None)
    fig, (ax_ppl, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for target, style in (("activation", "o-"), ("weight", "s--")):
        chosen = sorted((r for r in rows if r["config"] and r["config"]["target"] == target
                         and r["config"]["criterion"] == "magnitude" and r["config"]["correction"] == "none"),
                        key=_order)
        labels = [r["config"]["pattern"] for r in chosen]
        ppl = [r["metrics"].get("wikitext2", {}).get("ppl") for r in chosen]
        acc = [mean_accuracy(r) for r in chosen]
        if any(p is not None for p in ppl):
            ax_ppl.plot(labels, ppl, style, label=f"{target} pruning")
        if any(a is not None for a in acc):
            ax_acc.plot(labels, acc, style, label=f"{target} pruning")
    if dense:
        if ppl_dense := dense["metrics"].get("wikitext2", {}).get("ppl"):
            ax_ppl.axhline(ppl_dense, color="gray", linestyle=":", label="dense")
        if (acc_dense := mean_accuracy(dense)) is not None:
            ax_acc.axhline(acc_dense, color="gray", linestyle=":", label="dense")
    ax_ppl.set(yscale="log", title=f"{model}: WikiText-2 perplexity", xlabel="N:M pattern", ylabel="perplexity")
    ax_acc.set(title="mean zero-shot accuracy (arc_e, boolq, piqa, wino)", xlabel="N:M pattern", ylabel="accuracy")
    for ax in (ax_ppl, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a zero-shot-only sweep draws no perplexity
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def method_name(config: dict[str, Any] | None) -> str:
    if config is None:
        return "dense"
    if config["target"] == "weight":
        return f"weight {config['criterion']}"
    name = config["criterion"] if config["correction"] == "none" else f"{config['criterion']} + {config['correction']}"
    if config.get("recovery", "none") != "none":
        name += f" + {config['recovery']} ({config['recovery_steps']} steps)"
    if config.get("rotation", "none") != "none":
        name += f" + {config['rotation']} rotation"
    return name + (f" (skip {config['skip_sensitive']})" if config.get("skip_sensitive") else "")


RECOVERY_COLUMNS = ("pattern", "method", "wikitext2 ppl", "gap closed", "arc easy", "boolq", "piqa", "winogrande",
                    "held-out KL", "training", "extra run-time FLOPs", "extra constants")


def recovery_table(results: list[dict[str, Any]], model: str) -> str:
    """Per pattern, magnitude and each recovery method: perplexity, the share of the gap to dense it
    closes, zero-shot accuracy, and what it costs: training once, nothing per token (it is folded)."""
    rows = [r for r in results if r["model"] == model]
    dense = next((r["metrics"].get("wikitext2", {}).get("ppl") for r in rows if r["config"] is None), None)
    magnitude = {r["config"]["pattern"]: r["metrics"].get("wikitext2", {}).get("ppl") for r in rows
                 if r["config"] and method_name(r["config"]) == "magnitude"}
    out = []
    for r in sorted((r for r in rows if r["config"] and r["config"]["target"] == "activation"), key=_order):
        config, ppl = r["config"], r["metrics"].get("wikitext2", {}).get("ppl")
        base = magnitude.get(config["pattern"])
        learned = (r.get("calibration") or {}).get("recovery")
        row = {"pattern": config["pattern"], "method": method_name(config),
               "wikitext2 ppl": f"{ppl:.2f}" if ppl else "",
               "gap closed": f"{(base - ppl) / (base - dense):.0%}" if ppl and base and dense and base > dense else "",
               "extra run-time FLOPs": "0"}
        row.update(accuracy_cells(r))
        if learned:
            row["held-out KL"] = f"{learned['kl_held_out_before']:.3f} -> {learned['kl_held_out_after']:.3f}"
            row["training"] = f"{learned['seconds'] / 60:.1f} min, {learned['train_tokens']:,} tokens"
            extra = learned.get("extra_constant_values")  # absent from the first version's records
            row["extra constants"] = "not recorded" if extra is None else f"{extra:,} values"
            # folded into W and b; a layer that had no bias gains a bias add
            row["extra run-time FLOPs"] = "not recorded" if extra is None else "a bias add" if extra else "0"
        if rotation := (r.get("calibration") or {}).get("rotation"):
            row["extra run-time FLOPs"] = f"{rotation['extra_flops_fraction']:.1%} of the pruned GEMMs (x @ Q)"
            row["extra constants"] = f"{rotation['constant_values']:,} values"
        out.append(row)
    return format_table(out, RECOVERY_COLUMNS, markdown=True)


def adds_run_time_work(method: str) -> bool:
    """Whether a method (by method_name) computes more per token than the pruned GEMMs: the rotation's x @ Q."""
    return " rotation" in method


def methods_table(results: list[dict[str, Any]], model: str) -> tuple[str, dict[str, Any]]:
    """Perplexity per method (rows) and pattern (columns); the best activation method per pattern in bold.

    Also returns, per pattern, how much of the gap between plain magnitude and dense the best
    activation method closes: (ppl_magnitude - ppl_best) / (ppl_magnitude - ppl_dense), under "free" for
    methods that cost nothing per token and under "with_extra_work" when a costlier method beats them.
    """
    rows = [r for r in results if r["model"] == model and "wikitext2" in r["metrics"]]
    dense = next((r["metrics"]["wikitext2"]["ppl"] for r in rows if r["config"] is None), None)
    patterns = sorted({r["config"]["pattern"] for r in rows if r["config"]},
                      key=lambda p: int(p.split(":")[1]) if ":" in p else 1000)
    cells: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["config"]:
            cells.setdefault(method_name(r["config"]), {})[r["config"]["pattern"]] = r["metrics"]["wikitext2"]["ppl"]
    best, gaps = {}, {}
    for p in patterns:
        activation = {name: v[p] for name, v in cells.items() if p in v and not name.startswith("weight")}
        # a rotation adds dense work per token: it never stands in for the uniform result, it is reported beside it
        free = {name: v for name, v in activation.items() if not adds_run_time_work(name)}
        magnitude = cells.get("magnitude", {}).get(p)
        for key, candidates in (("free", free), ("with_extra_work", activation)):
            if not candidates:
                continue
            name = min(candidates, key=candidates.get)
            if key == "free":
                best[p] = name
            if magnitude and dense and magnitude > dense and (key == "free" or name not in free):
                gaps.setdefault(p, {})[key] = {"best": name, "ppl_best": candidates[name], "ppl_magnitude": magnitude,
                                               "gap_closed": (magnitude - candidates[name]) / (magnitude - dense)}
    ordered = sorted(cells, key=lambda n: (n.startswith("weight"), n != "magnitude", n))
    lines = ["| method | " + " | ".join(patterns) + " |", "|---|" + "---|" * len(patterns)]
    for name in ordered:
        values = [f"**{cells[name][p]:.2f}**" if best.get(p) == name else
                  (f"{cells[name][p]:.2f}" if p in cells[name] else "") for p in patterns]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    if dense:
        lines.append(f"| dense (no pruning) | {dense:.2f} |" + " |" * (len(patterns) - 1))
    return "\n".join(lines), gaps


def plot_methods(results: list[dict[str, Any]], model: str, path: Path) -> Path:
    """One panel per pattern: every method's perplexity as a sorted bar, magnitude and dense as lines."""
    import matplotlib  # the optional eval extra; 0.35 s to import pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = [r for r in results if r["model"] == model and "wikitext2" in r["metrics"]]
    dense = next((r["metrics"]["wikitext2"]["ppl"] for r in rows if r["config"] is None), None)
    by_pattern: dict[str, dict[str, float]] = {}
    for r in rows:
        if config := r["config"]:
            by_pattern.setdefault(config["pattern"], {})[method_name(config)] = r["metrics"]["wikitext2"]["ppl"]
    patterns = sorted(by_pattern, key=lambda p: int(p.split(":")[1]) if ":" in p else 1000)
    height = max(len(v) for v in by_pattern.values()) * 0.22 + 1.2
    fig, axes = plt.subplots(1, len(patterns), figsize=(3.6 * len(patterns), height), squeeze=False)
    for ax, pattern in zip(axes[0], patterns, strict=True):
        methods = sorted(by_pattern[pattern].items(), key=lambda kv: -kv[1])
        best = min(((v, name) for name, v in methods if not name.startswith("weight")
                    and not adds_run_time_work(name)), default=(0, None))[1]
        colors = ["tab:green" if name == best else "tab:gray" if name.startswith("weight") else "tab:blue"
                  for name, _ in methods]
        ax.barh([name for name, _ in methods], [v for _, v in methods], color=colors)
        if (magnitude := by_pattern[pattern].get("magnitude")) is not None:
            ax.axvline(magnitude, color="tab:red", linewidth=1, label="magnitude")
        if dense:
            ax.axvline(dense, color="black", linestyle=":", label="dense")
        ax.set(xscale="log", title=pattern, xlabel="WikiText-2 ppl (log)")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{model}: criteria and corrections (green: best; gray: weight pruning)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path
