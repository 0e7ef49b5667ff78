"""Regenerate the zero-shot block of results/families/README.md from the zero-shot sweeps' results.

    python scripts/families_zeroshot_table.py   (from the repository root)
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "results" / "families"
TASKS = ("arc_easy", "boolq", "piqa", "winogrande")
MODELS = {"smollm2-135m": "no chat template", "gemma3-270m": "no chat template (base model)",
          "qwen2.5-coder-0.5b": "chat template on"}
lines = ["<!-- zero-shot: made from */zeroshot/results.jsonl -->", "",
         "**Zero-shot accuracy** (lm-eval `acc`, 0-shot, batch 8, through the compiled program; the mean is "
         "of the four tasks):", ""]
for model, chat in MODELS.items():
    path = ROOT / model / "zeroshot" / "results.jsonl"
    rows = [json.loads(line) for line in path.open() if line.strip()] if path.exists() else []
    rows = [r for r in rows if "metrics" in r]
    if not rows:
        lines += [f"**{model}**: not run (see Sizes).", ""]
        continue
    limit = rows[0]["options"]["limit"]
    errs = [r["metrics"][t]["metrics"]["acc_stderr"] for r in rows for t in TASKS]
    lines += [f"**{model}** ({chat}; first {limit} examples per task; standard errors "
              f"{min(errs):.3f}-{max(errs):.3f}):", "",
              "| pruning | arc easy | boolq | piqa | winogrande | mean |", "|---|---|---|---|---|---|"]
    for r in rows:
        accs = [r["metrics"][t]["metrics"]["acc"] for t in TASKS]
        lines.append(f"| {r['pruning']} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {sum(accs) / 4:.3f} |")
    lines.append("")
lines.append("<!-- end zero-shot -->")
block = "\n".join(lines)
readme = ROOT / "README.md"
text = readme.read_text()
start, end = "<!-- zero-shot: made from */zeroshot/results.jsonl -->", "<!-- end zero-shot -->"
if start in text:
    text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
else:
    text = text.replace("- **Sizes.**", block + "\n\n- **Sizes.**", 1)
readme.write_text(text)
print(block)
