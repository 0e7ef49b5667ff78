"""actprune::nm_matmul on CUDA: the Triton masked GEMM, or for 2:4 in fp16/bf16 the exact per-row
mask compressed for cuSPARSELt's sparse tensor cores, whichever is faster for the shape.

The choice is made by timing both once per (tokens bucket, N, K, dtype) and remembering it.
SparseSemiStructuredTensor.prune_dense_static_sort is *not* used: it prunes 4x4 tiles by signed
value, not each row's top 2 of 4 by magnitude; the mask here is actprune's own.
Not run in this repository's CI (no GPU there): scripts/gpu_check.sh exercises it on a GPU.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from actprune_compiler.ops.select import prune_by_rank
from actprune_compiler.sparsity.corrections import CORRECTIONS
from actprune_compiler.sparsity.criteria import CRITERIA

_CHOICE: dict[tuple, str] = {}


def cusparselt_eligible(x2: Tensor, weight: Tensor, n: int, m: int) -> bool:
    # cuSPARSELt wants 2:4, half precision, and sizes that are multiples of its tiles.
    return ((n, m) == (2, 4) and x2.dtype in (torch.float16, torch.bfloat16) and x2.shape[0] % 32 == 0
            and x2.shape[1] % 64 == 0 and weight.shape[0] % 32 == 0 and hasattr(torch, "_cslt_compress"))


def nm_matmul_cusparselt(x2: Tensor, weight: Tensor, bias: Tensor | None, n: int = 2, m: int = 4) -> Tensor:
    """Exact per-row top-2-of-4 by |x|, compressed, times W^T on the sparse tensor cores."""
    masked = prune_by_rank(x2, x2.abs().float(), n, m)  # float32 scores, as every implementation ranks
    compressed = torch._cslt_compress(masked)
    return torch._cslt_sparse_mm(compressed, weight.t(), bias=bias)


def _time(fn, repeats: int = 10) -> float:
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


@functools.cache
def _triton():
    # imports triton, an optional dependency (Linux only in pyproject.toml): only CUDA calls need it
    from actprune_compiler.kernels.triton_nm import nm_matmul

    return nm_matmul


@torch.library.custom_op("actprune::nm_matmul", mutates_args=(), device_types="cuda")
def nm_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, n: int, m: int,
              score_scale: Tensor | None = None) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    triton_path = functools.partial(_triton(), x2, weight, bias, n, m, score_scale)
    if score_scale is None and cusparselt_eligible(x2, weight, n, m):
        key = (1 << (x2.shape[0] - 1).bit_length(), weight.shape[0], x2.shape[1], x2.dtype)
        if key not in _CHOICE:
            sparse = functools.partial(nm_matmul_cusparselt, x2, weight, bias)
            _CHOICE[key] = "cusparselt" if _time(sparse) < _time(triton_path) else "triton"
        if _CHOICE[key] == "cusparselt":
            return nm_matmul_cusparselt(x2, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    return triton_path().reshape(*x.shape[:-1], weight.shape[0])


# What the lowering chose for each kind of nm_linear it compiled (device, dtype, pattern, method, shape kind).
LOWERED: dict[str, str] = {}


def record_lowering(x: Tensor, n: int, m: int, criterion: str, correction: str, kernel: str, decode: bool) -> None:
    """decode: whether x has a decode step's shape (lowering/inductor.py decides)."""
    shape = "decode" if decode else "prefill"
    key = f"{x.device.type} {str(x.dtype).removeprefix('torch.')} {n}:{m} {criterion}+{correction} {shape}"
    LOWERED[key] = kernel


def kernel_choices() -> dict[str, dict[str, str]]:
    """For results files: the kernel the lowering chose per kind of layer, and, for 2:4 on CUDA, which of
    cuSPARSELt and the Triton GEMM measured faster per (tokens bucket, out, in, dtype) shape."""
    measured = {f"{t}x{k}->{n} {str(d).removeprefix('torch.')}": c for (t, n, k, d), c in _CHOICE.items()}
    return {"lowered": dict(LOWERED), "cusparselt_vs_triton": measured}


@nm_matmul.register_fake
def _nm_matmul_shape(x, weight, bias, n, m, score_scale=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def gpu_path_supports(m: int, criterion: str, correction: str, dtype: torch.dtype) -> bool:
    """The fused GPU GEMM handles criteria that declare fused_gpu (|x| times a static per-feature scale), no
    run-time correction, and the dtypes tl.dot takes (float64 goes through the decomposed ops)."""
    fix = CORRECTIONS[correction]
    return (m <= 64 and m & (m - 1) == 0 and CRITERIA[criterion].fused_gpu
            and dtype in (torch.float16, torch.bfloat16, torch.float32)
            and fix.token_shift is None and not fix.variance and fix.static_shift is None)
