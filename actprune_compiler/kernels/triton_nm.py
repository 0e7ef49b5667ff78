"""Triton: y = mask(x) @ W^T + b with the N:M mask applied in the GEMM's prologue.

Each program loads an activation tile [BLOCK_M, BLOCK_K], ranks every element within its group
of M by comparisons (ties go to the lower index, NaN counts as +inf), zeroes the losers in
registers, and feeds the tile to tl.dot: the mask costs no extra pass over memory. Runs on CUDA;
tests run it on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


def _configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(64, 64, 64, 4, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4),
                                     (64, 128, 64, 4, 4), (128, 256, 64, 8, 3)]]


@triton.jit
def _masked_tile(a, scale, N_KEEP: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Zero all but the N_KEEP largest |a| * scale of each GROUP consecutive columns of the tile."""
    score = tl.abs(a.to(tl.float32)) * scale[None, :]
    score = tl.where(score != score, float("inf"), score)  # NaN ranks first, like the reference
    groups = tl.reshape(score, (BLOCK_M, BLOCK_K // GROUP, GROUP))
    mine = tl.expand_dims(groups, 3)  # [m, g, j, 1]
    other = tl.expand_dims(groups, 2)  # [m, g, 1, k]
    j = tl.arange(0, GROUP)[:, None]
    k = tl.arange(0, GROUP)[None, :]
    beats = (other > mine) | ((other == mine) & (k < j))
    rank = tl.sum(beats.to(tl.int32), axis=3)
    keep = tl.reshape(rank < N_KEEP, (BLOCK_M, BLOCK_K))
    return tl.where(keep, a, tl.zeros_like(a))


@triton.jit
def nm_matmul_kernel(
    x_ptr, w_ptr, bias_ptr, scale_ptr, y_ptr,  # x [M, K], w [N, K], bias [N], scale [K], y [M, N]
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    N_KEEP: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        # K is a multiple of GROUP and BLOCK_K of GROUP: a group is either all in range or all out.
        a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
        scale = tl.load(scale_ptr + ks, mask=ks < K, other=1.0) if HAS_SCALE else tl.full((BLOCK_K,), 1.0,
                                                                                              tl.float32)
        a = _masked_tile(a, scale, N_KEEP, GROUP, BLOCK_M, BLOCK_K)
        b = tl.load(w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=(cols[None, :] < N) & (ks[:, None] < K), other=0.0)
        acc += tl.dot(a, b, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0)[None, :].to(tl.float32)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


# On a GPU the tile sizes are autotuned per (M, N, K); the interpreter (CPU tests) cannot time
# configurations, so it runs one fixed, small configuration.
nm_matmul_autotuned = triton.autotune(configs=_configs(), key=["M", "N", "K"])(nm_matmul_kernel)
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}


def dot_precision(dtype: torch.dtype) -> str:
    """float32 GEMMs use TF32 only when torch is told to (torch.backends.cuda.matmul.allow_tf32), as
    torch's own matmul does; otherwise full IEEE float32."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def nm_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, n: int, m: int,
              score_scale: Tensor | None = None) -> Tensor:
    """x [..., K] masked N:M by |x| (* score_scale), @ weight [N, K]^T (+ bias) -> [..., N]."""
    k = x.shape[-1]
    if weight.shape[1] != k or k % m or m & (m - 1) or m > 64:
        raise ValueError(f"nm_matmul: needs weight [N, {k}], M dividing {k}, and M a power of two <= 64 "
                         f"(got weight {list(weight.shape)}, M={m})")
    x2 = x.reshape(-1, k)
    rows, out_features = x2.shape[0], weight.shape[0]
    y = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)
    interpreted = x.device.type == "cpu"  # only possible under TRITON_INTERPRET=1
    meta = INTERPRETER_CONFIG if interpreted else {}
    kernel = nm_matmul_kernel if interpreted else nm_matmul_autotuned
    grid = lambda cfg: (triton.cdiv(rows, cfg["BLOCK_M"]), triton.cdiv(out_features, cfg["BLOCK_N"]))  # noqa: E731
    kernel[grid](
        x2, weight, bias if bias is not None else x2, score_scale if score_scale is not None else x2, y,
        rows, out_features, k,
        x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        N_KEEP=n, GROUP=m, HAS_BIAS=bias is not None, HAS_SCALE=score_scale is not None,
        INPUT_PRECISION=dot_precision(x.dtype), **meta)
    return y.reshape(*x.shape[:-1], out_features)


@triton.jit
def sparse_rows_gemv_kernel(
    x_ptr, wt_ptr, bias_ptr, y_ptr,  # x [T, K] (mostly zeros), wt [K, N], bias [N], y [T, N]
    N, K,
    stride_xt, stride_wk, stride_yt,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One token, BLOCK_N outputs: rows of W^T whose input is zero are never loaded (masked loads
    fetch nothing), so a token keeping N of M features reads N/M of the weight bytes."""
    token, pid_n = tl.program_id(0), tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + token * stride_xt + ks, mask=ks < K, other=0.0).to(tl.float32)
        used = (x != 0.0) & (ks < K)
        w = tl.load(wt_ptr + ks[:, None] * stride_wk + cols[None, :], mask=used[:, None] & (cols[None, :] < N),
                    other=0.0)
        acc += tl.sum(x[:, None] * w.to(tl.float32), axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + token * stride_yt + cols, acc.to(y_ptr.dtype.element_ty), mask=cols < N)


def sparse_rows_gemv(x: Tensor, weight_t: Tensor, bias: Tensor | None, block_n: int = 128,
                     block_k: int = 32) -> Tensor:
    """x [..., K] @ weight_t [K, N] + bias, loading only the rows of weight_t where x is nonzero."""
    k, out_features = weight_t.shape
    if x.shape[-1] != k or weight_t.stride(1) != 1:
        raise ValueError(f"sparse_rows_gemv: x [..., {k}] and a row-major weight_t [{k}, N] expected")
    x2 = x.reshape(-1, k).contiguous()
    y = torch.empty((x2.shape[0], out_features), dtype=x.dtype, device=x.device)
    grid = (x2.shape[0], triton.cdiv(out_features, block_n))
    sparse_rows_gemv_kernel[grid](x2, weight_t, bias if bias is not None else x2, y, out_features, k,
                                  x2.stride(0), weight_t.stride(0), y.stride(0), HAS_BIAS=bias is not None,
                                  BLOCK_N=block_n, BLOCK_K=block_k)
    return y.reshape(*x.shape[:-1], out_features)
