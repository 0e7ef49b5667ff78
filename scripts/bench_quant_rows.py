"""Decode microbenchmark of actprune::quant_rows_linear on smollm2-135m's shapes, one token a call.

Kernels: torch's dense F.linear (float32), actprune::packed_linear (oneDNN on the packed weight: what a dense
linear of a compiled prefill calls), actprune::dense_gemv (dot products with W's rows: what a dense linear of a
compiled decode step calls; it reads every weight whatever the input), actprune::sparse_rows_linear (float32
kept rows) and actprune::quant_rows_linear in each quantised format. Inputs: 8:16-sparse for the 210 projections
(30 layers x q, k, v, o, gate, up, down) and dense for lm_head (576 -> 49152); each shape is also
timed with a dense input. Under a quantised format lm_head takes actprune::int8_gemv (format int8a8), as a
compiled decode step calls it.

Two settings per shape:
- model order: the 30 distinct weights of that shape, called in the model's order among all 211
  calls of a token, so each call's weights come from memory (a token reads more than the L3 holds),
  as in a real decode step; median per call over tokens;
- hot: one weight called again and again (it stays in cache): the kernel's compute speed.
Times are of single calls from Python minus the cost of a call of the op on a 64 x 64 matrix measured
the same way from TorchScript (the per-call overhead, reported); the whole-token sum is timed from
a TorchScript loop (about 0.5 us a call, close to a compiled graph's C++ call), not summed.

GB/s counts the bytes a call needs: the kept rows' codes (int8: N bytes, int4: N/2) with their int4
scales and minimums (int4k32: every block's), plus the int8 scales; float32: kept rows x N x 4;
F.linear: the whole weight.

Run it under the shared lock, e.g.
    flock /tmp/actprune-heavy.lock python scripts/bench_quant_rows.py --threads 2
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from actprune_compiler.kernels import cpu
from actprune_compiler.sparsity.masks import prune_sorted
from actprune_compiler.sparsity.quant import DENSE_FORMAT, QUANT_FORMATS, bits_read_per_weight

PROJECTIONS = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576), "gate": (576, 1536),
               "up": (576, 1536), "down": (1536, 576)}  # (in_features, out_features)
LAYERS = 30
LM_HEAD = (576, 49152)
KERNELS = ["F.linear", "packed", "dense gemv", "f32 rows", *QUANT_FORMATS]

# Calls timed from C++ (through the dispatcher, as a compiled graph's C++ would call them), one clock
# reading around each: Python's per-call cost (a few us, more than some of these kernels take) stays out.
TIMER = r"""
#include <torch/extension.h>
#include <chrono>

// kinds[i] 0: F.linear, 1: actprune::sparse_rows_linear, 2: actprune::quant_rows_linear in fmt,
// 3: actprune::packed_linear (oneDNN on the packed weight), 4: actprune::dense_gemv, 5: actprune::int8_gemv
std::vector<int64_t> time_calls(const std::vector<int64_t>& kinds, const std::string& fmt,
                                const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& weights) {
  static const auto rows = c10::Dispatcher::singleton().findSchemaOrThrow("actprune::sparse_rows_linear", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  static const auto quant = c10::Dispatcher::singleton().findSchemaOrThrow("actprune::quant_rows_linear", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view)>();
  static const auto packed = c10::Dispatcher::singleton().findSchemaOrThrow("actprune::packed_linear", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  static const auto dense = c10::Dispatcher::singleton().findSchemaOrThrow("actprune::dense_gemv", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  static const auto int8 = c10::Dispatcher::singleton().findSchemaOrThrow("actprune::int8_gemv", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>();
  std::vector<int64_t> ns(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const int64_t kind = kinds[i];
    const auto start = std::chrono::steady_clock::now();
    at::Tensor y = kind == 0   ? at::linear(xs[i], weights[i])
                   : kind == 1 ? rows.call(xs[i], weights[i], std::nullopt)
                   : kind == 3 ? packed.call(xs[i], weights[i], std::nullopt)
                   : kind == 4 ? dense.call(xs[i], weights[i], std::nullopt)
                   : kind == 5 ? int8.call(xs[i], weights[i], std::nullopt)
                               : quant.call(xs[i], weights[i], std::nullopt, fmt);
    ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  }
  return ns;
}
"""


@functools.cache
def timer():
    from torch.utils.cpp_extension import load_inline

    cpu._extension()  # the ops the timer calls
    return load_inline("actprune_bench_timer", cpp_sources=TIMER, functions=["time_calls"], extra_cflags=["-O2"])


def time_calls(kernel: str, xs: list[torch.Tensor], weights: list[torch.Tensor]) -> list[float]:
    """us of each call of kernel on (xs[i], weights[i]), in order; lm_head (the weight of LM_HEAD's shape)
    under a quantised format in int8a8."""
    kind = {"F.linear": 0, "f32 rows": 1, "packed": 3, "dense gemv": 4}.get(kernel, 2)
    kinds = [5 if kind == 2 and tuple(w.shape) == LM_HEAD[::-1] else kind for w in weights]
    return [ns / 1e3 for ns in timer().time_calls(kinds, kernel if kind == 2 else "", xs, weights)]


def bytes_needed(kernel: str, kept: int, k: int, n: int) -> float:
    if kernel in ("F.linear", "packed", "dense gemv"):
        return 4.0 * n * k
    if kernel == "f32 rows":
        return 4.0 * kept * n
    fmt = DENSE_FORMAT if (k, n) == LM_HEAD else kernel
    return bits_read_per_weight(fmt, n, k, kept / k) * n * k / 8


def token_inputs(calls: list[tuple[str, torch.Tensor]], g: torch.Generator) -> list[torch.Tensor]:
    """One token's inputs: 8:16 for the projections, dense for lm_head."""
    xs = []
    for name, w in calls:
        x = torch.randn(1, w.shape[1], generator=g)
        xs.append(x if name == "lm_head" else prune_sorted(x, x.abs(), 8, 16))
    return xs


def python_call(kernel: str, repeats: int = 2000) -> float:
    """us of a call from Python on a 64 x 64 matrix (8:16 input): the per-call cost a Python caller adds."""
    w, x = torch.randn(64, 64), prune_sorted(torch.randn(1, 64), torch.rand(1, 64), 8, 16)
    ops = {"F.linear": lambda: F.linear(x, w), "f32 rows": lambda: torch.ops.actprune.sparse_rows_linear(x, w, None),
           "packed": lambda: torch.ops.actprune.packed_linear(x, w, None),
           "dense gemv": lambda: torch.ops.actprune.dense_gemv(x, w, None)}
    op = ops.get(kernel, lambda: torch.ops.actprune.quant_rows_linear(x, w, None, kernel))
    op()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        op()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tokens", type=int, default=20, help="tokens timed in model order")
    parser.add_argument("--hot", type=int, default=300, help="calls timed per shape with one hot weight")
    parser.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    assert cpu.available(), cpu.build_error()
    timer()
    g = torch.Generator().manual_seed(0)
    calls = [(name, torch.randn(n, k, generator=g) * 0.05)
             for _ in range(LAYERS) for name, (k, n) in PROJECTIONS.items()]
    calls.append(("lm_head", torch.randn(LM_HEAD[1], LM_HEAD[0], generator=g) * 0.05))
    names = [*PROJECTIONS, "lm_head"]
    weights = [w for _, w in calls]
    shape = {name: (w.shape[1], w.shape[0]) for name, w in calls}
    tokens = [token_inputs(calls, g) for _ in range(args.tokens)]
    dense = [[torch.randn(1, w.shape[1], generator=g) for w in weights] for _ in range(max(3, args.tokens // 4))]
    print(f"threads {args.threads}, load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (before)")

    results = {}
    for kernel in args.kernels:
        with torch.no_grad():
            for xs in tokens[:2]:  # builds the caches, warms up
                time_calls(kernel, xs, weights)
            per_token, order = [], {name: [] for name in names}
            for xs in tokens:
                times = time_calls(kernel, xs, weights)
                per_token.append(sum(times) / 1e3)
                for (name, _), us in zip(calls, times, strict=True):
                    order[name].append(us)
            dense_order = {name: [] for name in names}
            for xs in dense:
                for (name, _), us in zip(calls, time_calls(kernel, xs, weights), strict=True):
                    dense_order[name].append(us)
            hot = {}
            for name in names:
                i = next(i for i, (n, _) in enumerate(calls) if n == name)  # the first layer's weight of that shape
                hot[name] = statistics.median(time_calls(kernel, [tokens[0][i]] * args.hot, [weights[i]] * args.hot))
        results[kernel] = dict(python_call=python_call(kernel), token=statistics.median(per_token),
                               token_min=min(per_token), order={n: statistics.median(t) for n, t in order.items()},
                               dense={n: statistics.median(t) for n, t in dense_order.items()}, hot=hot)

    kept = {name: (k if name == "lm_head" else k // 2) for name, (k, n) in shape.items()}
    print(f"\nper call, us (GB/s of the bytes needed); projections 8:16, lm_head dense; threads {args.threads}")
    print("| shape | kernel | model order | dense input, model order | hot |")
    print("|---|---|---|---|---|")
    for name in names:
        k, n = shape[name]
        for kernel, r in results.items():
            cells = []
            for setting, rows in (("order", kept[name]), ("dense", k), ("hot", kept[name])):
                us = r[setting][name]
                cells.append(f"{us:.1f} ({bytes_needed(kernel, rows, k, n) / us / 1e3:.1f})")
            print(f"| {name} {k}->{n} | {kernel} | {' | '.join(cells)} |")
    print(f"\nper token: 30 layers x 7 projections at 8:16 + dense lm_head, threads {args.threads}; dense token: the"
          " medians of the dense-input calls, summed")
    print("| kernel | token, ms (median) | min | projections | lm_head | dense token, ms "
          "| a call from Python on 64x64, us |")
    print("|---|---|---|---|---|---|---|")
    for kernel, r in results.items():
        projections = sum(r["order"][name] for name in PROJECTIONS) * LAYERS / 1e3
        dense_token = (sum(r["dense"][name] for name in PROJECTIONS) * LAYERS + r["dense"]["lm_head"]) / 1e3
        print(f"| {kernel} | {r['token']:.3f} | {r['token_min']:.3f} | {projections:.3f} | "
              f"{r['order']['lm_head'] / 1e3:.3f} | {dense_token:.3f} | {r['python_call']:.2f} |")
    print(f"\nload average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (after)")


if __name__ == "__main__":
    main()
