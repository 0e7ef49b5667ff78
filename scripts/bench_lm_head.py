"""Decode microbenchmark of the dense lm_head GEMV of each model family, one token a call.

Kernels, on the same weight and input, in interleaved rounds:
- "f32 gemv": actprune::dense_gemv, float32 dot products with W's rows (the dense model's lm_head);
- "int8 rows": actprune::quant_rows_linear in format int8, the float input times int8 rows of W^T (the
  kept-rows kernel, reading every row);
- "int8a8 gemv": actprune::int8_gemv, the input quantised to int8 per block of 32, VNNI dot products with
  int8 rows of W (format int8a8: the layers a quantised model leaves dense).
An lm_head is far larger than the L3, so every call reads its weight from memory. GB/s counts the weight's
bytes (4 per weight in float32, 1 in int8). Ratios are against "int8 rows", in the same process.

Run it alone (it reads several hundred MB per call), e.g.
    flock /tmp/actprune-heavy.lock python scripts/bench_lm_head.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from actprune_compiler.kernels import cpu

LM_HEADS = {"smollm2-135m": (49152, 576), "gemma3-270m": (262144, 640), "qwen2.5-coder-0.5b": (151936, 896)}
KERNELS = {"f32 gemv": (lambda x, w: torch.ops.actprune.dense_gemv(x, w, None), 4),
           "int8 rows": (lambda x, w: torch.ops.actprune.quant_rows_linear(x, w, None, "int8"), 1),
           "int8a8 gemv": (lambda x, w: torch.ops.actprune.int8_gemv(x, w, None), 1)}
BASELINE = "int8 rows"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench(n: int, k: int, rounds: int, g: torch.Generator) -> dict[str, float]:
    """Median ms per call of each kernel on an [n, k] weight, the kernels in turn in each round."""
    w, x = torch.randn(n, k, generator=g) * 0.02, torch.randn(1, k, generator=g)
    times: dict[str, list[float]] = {name: [] for name in KERNELS}
    with torch.no_grad():
        for call, _ in KERNELS.values():  # builds each cached form, warms up
            call(x, w)
        for _ in range(rounds):
            for name, (call, _) in KERNELS.items():
                start = time.perf_counter()
                call(x, w)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", type=Path, help="a folder for bench.json and bench.md (the table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assert cpu.available(), cpu.build_error()
    before = load_average()
    g = torch.Generator().manual_seed(0)
    results = {model: bench(n, k, args.rounds, g) for model, (n, k) in LM_HEADS.items()}
    after = load_average()
    lines = [f"lm_head GEMV, one token, {args.threads} threads, median of {args.rounds} interleaved rounds; "
             f"load average {before} before, {after} after", "",
             "| model | lm_head | kernel | ms | weight GB/s | vs int8 rows |", "|---|---|---|---|---|---|"]
    for model, (n, k) in LM_HEADS.items():
        for name, ms in results[model].items():
            gbs = n * k * KERNELS[name][1] / ms / 1e6
            lines.append(f"| {model} | {k} -> {n} | {name} | {ms:.2f} | {gbs:.1f} | "
                         f"{results[model][BASELINE] / ms:.2f}x |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
                  "rounds": args.rounds, "load_before": before, "load_after": after, "ms": results}
        (args.out / "bench.json").write_text(json.dumps(record, indent=1) + "\n")
        title = __doc__.splitlines()[0]
        (args.out / "bench.md").write_text(f"# {title}\n\n{record['date']}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
