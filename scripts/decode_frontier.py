"""results/decode-frontier/README.md from the `actprune compare` runs under results/decode-frontier/<model>/.

For each model: the compare table (perplexity, decode tokens/s, weights read per token and the bandwidth that
speed stands for), the goals' ratios (8:16 int4 against llama.cpp on the model's own GGUF file, actprune dense
float32 against llama.cpp F32, the quantised configs' perplexity against the same config in float32), and the
machine's read bandwidth, measured here, as the weight-bytes limit: tokens/s <= bandwidth / bytes per token.

    python scripts/decode_frontier.py            # after the compare runs; loads each model for its shapes
"""

from __future__ import annotations

import json
import mmap
import time
from pathlib import Path

import torch

from actprune_compiler.benchmark import compare
from actprune_compiler.benchmark.llamacpp import WEIGHTS
from actprune_compiler.benchmark.machine import machine_line
from actprune_compiler.models.load import load_model
from actprune_compiler.reporting.files import atomic_write, write_json
from actprune_compiler.reporting.tables import format_table
from actprune_compiler.sparsity.config import SparsityConfig

ROOT = Path(__file__).resolve().parents[1] / "results" / "decode-frontier"


def read_bandwidth_gbs(megabytes: int = 1024, repeats: int = 7) -> float:
    """The best of `repeats` sums over a tensor far larger than the caches, in memory advised for 2 MiB pages as
    actprune's decode weights are: what a decode step's weight reads can reach on this machine with torch's
    threads."""
    memory = mmap.mmap(-1, megabytes * 2**20)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux; elsewhere ordinary pages
        memory.madvise(mmap.MADV_HUGEPAGE)
    data = torch.frombuffer(memory, dtype=torch.float32)
    data.fill_(1.0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best / 1e9


def variants_of(result: dict) -> list[compare.Variant]:
    configs = {SparsityConfig.from_dict(c).label: SparsityConfig.from_dict(c) for c in result["configs"]}
    out = []
    for name in result["variants"]:
        if name.startswith("llama.cpp "):
            shown = name.removeprefix("llama.cpp ")
            out.append(compare.Variant(name, llamacpp=shown if shown in WEIGHTS else "file"))
        elif name == "dense":
            out.append(compare.Variant(name))
        else:
            out.append(compare.Variant(name, configs[name]))
    return out


def with_bytes(result: dict) -> dict:
    """The weights each variant reads per token, computed again (the model loads for its shapes only when a
    record lacks actprune's figures)."""
    variants, known = variants_of(result), result.get("weights_read_mb", {})
    model = None
    if any(v.llamacpp is None and v.name not in known for v in variants):
        model, _ = load_model(result["model"], "float32", "cpu")
    result["weights_read_mb"] = {
        v.name: compare.weights_read_per_token(model, v, result["model"]) / 1e6
        if v.llamacpp is not None or model is not None else known[v.name] for v in variants}
    return result


def goals(result: dict, bandwidth: float) -> list[str]:
    decode, ppl = result["speed"]["decode"], result["quality"]
    rate = {name: d["tokens_per_s"] for name, d in decode.items()}
    own = [n for n in rate if n.startswith("llama.cpp") and n.removeprefix("llama.cpp ") not in WEIGHTS]
    lines = []
    for name in rate:
        if own and name.endswith(("int4", "int4g32", "int4k32")) and name.startswith("8:16"):
            lines.append(f"- {name} decodes at {rate[name] / rate[own[0]]:.2f}x {own[0]} (goal: 1.3x)")
    if "llama.cpp F32" in rate:
        lines.append(f"- actprune dense float32 decodes at {rate['dense'] / rate['llama.cpp F32']:.2f}x llama.cpp F32 "
                     "on the same weights (goal: 1x)")
    for name in ppl:
        base = name.rsplit(" ", 1)[0]
        if name != base and base in ppl and name.rsplit(" ", 1)[1].startswith("int"):
            lines.append(f"- {name}: perplexity {ppl[name]['ppl']:.2f} against {ppl[base]['ppl']:.2f} in float32 "
                         f"({ppl[name]['ppl'] / ppl[base]['ppl'] - 1:+.1%})")
    for name, mb in result["weights_read_mb"].items():
        limit = bandwidth * 1e3 / mb
        lines.append(f"- {name}: {rate[name]:.0f} tokens/s of a {limit:.0f} tokens/s weight-bytes limit "
                     f"({rate[name] / limit:.0%})")
    return lines


def main() -> None:
    bandwidth = read_bandwidth_gbs()
    text = ["# Decode frontier: actprune against llama.cpp, per model", "",
            "Each model is one `actprune compare` run (its command is in its compare.md): WikiText-2 perplexity on "
            "the first 2048-token window, the same for every variant; greedy decode of 32 tokens after a 10-token "
            "prompt, batch 1, 2 threads, medians of 3 runs with the variants in turn; llama.cpp through "
            "llama-cpp-python 0.3.36 built with GGML_NATIVE, on the model's own GGUF file and on its weights "
            "converted to F16 and F32. actprune's float weights are the GGUF file's, dequantised.", "",
            f"The weight-bytes limit: this machine reads {bandwidth:.1f} GB/s with 2 threads (a sum over 1 GiB in "
            "2 MiB pages, best of 7), so a variant that reads B bytes of weights per token decodes at most at "
            f"{bandwidth:.1f} GB/s / B.", ""]
    for path in sorted(ROOT.glob("*/compare.json")):
        result = with_bytes(json.loads(path.read_text()))
        write_json(path, result)
        rows = compare.table_rows(result)
        picture = f"![{result['model']}]({path.parent.name}/compare.png)"
        text += [f"## {result['model']} ({result['date']})", "", picture, "",
                 format_table(rows, list(rows[0]), markdown=True), "",
                 machine_line(result["speed"]["machine"]), "", *goals(result, bandwidth), ""]
    atomic_write(ROOT / "README.md", lambda tmp: Path(tmp).write_text("\n".join(text)))
    print("\n".join(text))


if __name__ == "__main__":
    main()
