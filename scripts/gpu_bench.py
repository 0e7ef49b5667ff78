"""GPU benchmark for scripts/gpu_check.sh: Llama-7B FFN GEMMs, dense cuBLAS vs actprune's paths.

For each shape and pattern: dense torch.nn.functional.linear (cuBLAS), the Triton GEMM with the
N:M mask in its prologue, and for 2:4 the exact per-row mask + cuSPARSELt. Times are medians of
triton.testing.do_bench; every sparse result is first checked against the masked reference.
Writes gpu_bench.json and gpu_bench.png to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import triton.testing

from actprune_compiler.kernels.gpu import cusparselt_eligible, nm_matmul_cusparselt
from actprune_compiler.kernels.triton_nm import nm_matmul
from actprune_compiler.sparsity.masks import prune_sorted

SHAPES = [(2048, 4096, 11008), (4096, 4096, 11008), (8192, 4096, 11008), (4096, 11008, 4096), (1, 4096, 11008)]
PATTERNS = [(2, 4), (8, 16)]


def check(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, n: int, m: int) -> float:
    want = torch.nn.functional.linear(prune_sorted(x.float(), x.float().abs(), n, m), w.float())
    return float((got.float() - want).abs().max() / want.abs().max())


def measure(x: torch.Tensor, w: torch.Tensor, n: int, m: int, dense_ms: float) -> dict:
    row = {"tokens": x.shape[0], "k": x.shape[1], "n": w.shape[0], "pattern": f"{n}:{m}", "dense_ms": dense_ms}
    triton_path = functools.partial(nm_matmul, x, w, None, n, m)
    row["triton_rel_err"] = check(triton_path(), x, w, n, m)
    row["triton_ms"] = triton.testing.do_bench(triton_path)
    if cusparselt_eligible(x, w, n, m):
        sparse = functools.partial(nm_matmul_cusparselt, x, w, None)
        try:
            row["cusparselt_rel_err"] = check(sparse(), x, w, n, m)
            row["cusparselt_ms"] = triton.testing.do_bench(sparse)
        except RuntimeError as error:  # reported, never hidden
            row["cusparselt_error"] = str(error).splitlines()[0]
    row["speedup_vs_dense"] = dense_ms / min(row.get("cusparselt_ms", float("inf")), row["triton_ms"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    for tokens, k, n_out in SHAPES:
        x = torch.randn(tokens, k, device="cuda", dtype=dtype)
        w = torch.randn(n_out, k, device="cuda", dtype=dtype) / k ** 0.5
        dense_ms = triton.testing.do_bench(functools.partial(torch.nn.functional.linear, x, w))
        for n, m in PATTERNS:
            rows.append(measure(x, w, n, m, dense_ms))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    result = {"gpu": torch.cuda.get_device_name(), "dtype": args.dtype, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "triton": triton.__version__, "rows": rows}
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [f"{r['tokens']}x{r['k']}->{r['n']}\n{r['pattern']}" for r in rows]
    ax.bar(labels, [r["speedup_vs_dense"] for r in rows])
    ax.axhline(1.0, color="gray", linestyle=":")
    ax.set(title=f"{result['gpu']}: best actprune path vs dense cuBLAS ({args.dtype})", ylabel="speed-up")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(out / "gpu_bench.png", dpi=120)


if __name__ == "__main__":
    main()
