"""actprune::sparse_rows_linear, the decode kernel: x @ W^T + b reading only the rows of W^T under
the inputs a token kept. CPU: built from sparse_rows.cpp on first use, with its W^T cache, and
registered with the dispatcher from C++ (a Python kernel would cost a quarter of the GEMV's time);
CUDA: the Triton GEMV in triton_nm.py, fed from the same W^T cache.

actprune::dense_gemv, a dense linear at decode (dense_gemv.cpp): one token's dot products with the rows of W,
read from the same cache's copy in 2 MiB pages (huge_pages.cpp), as are all the forms a decode step reads.

actprune::packed_linear, the prefill GEMM on CPU in float32: oneDNN's GEMM with the weight packed
once, from the same cache. Inductor packs weights only when it freezes them; a graph whose weights
are inputs (regional compilation, warm starts from the FX graph cache) gets the same GEMM this way.

actprune::quant_rows_linear, the decode kernel over quantised rows of W^T (quant_rows.cpp): int8 or int4
rows derived from the float weight and kept in the same cache; formats and reference in kernels/quant.py.

actprune::int8_gemv, a dense linear at decode under a quantised model (int8_gemv.cpp, format int8a8): the
token quantised to int8 in blocks of 32, dot products with int8 rows of W by AVX-512 VNNI.

actprune::nm_select_cpu, the N:M mask on CPU (nm_select.cpp): actprune::nm_select's rule, compiled once
here rather than generated into every graph by Inductor.

actprune::decode_attention, attention for a few query tokens over a static KV cache (decode_attention.cpp):
each query head reads its key/value head in place, and only the cache rows its mask allows.

The build (a torch C++ extension, about a minute) is cached under ~/.cache/torch_extensions.
If it cannot be built, nothing falls back silently: the lowering says so once on stderr, with the
build error, and multiplies the masked input with the dense, unpacked GEMM (same results, dense speed).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.cpp_extension import load

from actprune_compiler.ops.select import select_groups

SOURCES = [Path(__file__).with_name(name)
           for name in ("weight_cache.cpp", "huge_pages.cpp", "sparse_rows.cpp", "dense_gemv.cpp", "quant_rows.cpp",
                        "int8_gemv.cpp", "nm_select.cpp", "decode_attention.cpp")]
HEADERS = [Path(__file__).with_name(name) for name in ("weight_cache.h", "huge_pages.h", "simd.h", "linear_args.h")]

torch.library.define("actprune::sparse_rows_linear", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define("actprune::dense_gemv", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define("actprune::packed_linear", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define("actprune::int8_gemv", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define("actprune::quant_rows_linear", "(Tensor x, Tensor weight, Tensor? bias, str fmt) -> Tensor")
torch.library.define("actprune::nm_select_cpu", "(Tensor groups, Tensor values, int n) -> Tensor")
torch.library.define("actprune::decode_attention", "(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor")


@functools.cache
def _extension():
    # The source's hash in the name: two checkouts (or versions) of actprune share the build folder,
    # and under one name each would rebuild it with its own source, under the other's feet.
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES + HEADERS)).hexdigest()[:12]
    return load(name=f"actprune_sparse_rows_{digest}", sources=[str(source) for source in SOURCES],
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


@functools.cache
def available() -> bool:
    """Whether the native kernel builds here (a C++ compiler and torch's headers are needed)."""
    try:
        _extension()
        return True
    except Exception as error:  # noqa: BLE001  (reported, not swallowed: see build_error)
        _errors.append(f"{type(error).__name__}: {error}")
        return False


_errors: list[str] = []


def build_error() -> str | None:
    return _errors[-1] if _errors else None


def sparse_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] @ weight [N, K]^T + bias, reading only the rows of W^T where x is nonzero."""
    _extension()  # registers the CPU kernel
    return torch.ops.actprune.sparse_rows_linear(x, weight, bias)


def dense_gemv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] @ weight [N, K]^T + bias in float32, as dot products with the rows of W: a dense linear at decode."""
    _extension()  # registers the CPU kernel
    return torch.ops.actprune.dense_gemv(x, weight, bias)


def int8_gemv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """quantize_input(x) @ dequantized(weight, "int8")^T + bias (sparsity/quant.py), by int8 dot products."""
    _extension()  # registers the CPU kernel
    return torch.ops.actprune.int8_gemv(x, weight, bias)


def nm_select(groups: Tensor, values: Tensor, n: int) -> Tensor:
    """actprune::nm_select's result from the native kernel: groups [..., m] of scores, values alike."""
    _extension()  # registers the CPU kernel
    return torch.ops.actprune.nm_select_cpu(groups, values, n)


def prune_native(values: Tensor, scores: Tensor, n: int, m: int) -> Tensor:
    """A Prune (sparsity/masks.py): nm_select's rank rule in the native kernel, which a compiled graph
    calls instead of carrying the m comparisons' generated code."""
    return select_groups(nm_select, values, scores, n, m)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """q [B, H, T, D] over k, v [B, Hkv, L, D] where the bool mask [B, 1 or H, T, L] allows -> [B, T, H, D]."""
    _extension()  # registers the CPU kernel
    return torch.ops.actprune.decode_attention(q, k, v, mask, scale)


def packs_weights(x: Tensor) -> bool:
    """Whether actprune::packed_linear serves this GEMM input: float32 on a CPU with oneDNN (others
    take F.linear; the caller checks that the kernel was built)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def transposed(weight: Tensor) -> Tensor:
    """weight [N, K] -> a row-major [K, N] copy, cached for as long as the weight lives unchanged."""
    return _extension().transposed(weight)


def cache_stats() -> dict[str, int]:
    hits, misses = _extension().cache_stats()
    return {"hits": hits, "misses": misses}


def clear_cache() -> None:
    """Forget every cached W^T, W, packed W and quantised rows (needed after a weight changed through `.data`);
    no build if none ran."""
    if _extension.cache_info().currsize:
        _extension().clear_cache()


@torch.library.impl("actprune::sparse_rows_linear", "CUDA")
def _sparse_rows_linear_cuda(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # imports triton, an optional dependency (Linux only in pyproject.toml): only CUDA calls need it
    from actprune_compiler.kernels.triton_nm import sparse_rows_gemv

    return sparse_rows_gemv(x, transposed(weight), bias)


@torch.library.register_fake("actprune::sparse_rows_linear")
@torch.library.register_fake("actprune::dense_gemv")
@torch.library.register_fake("actprune::packed_linear")
@torch.library.register_fake("actprune::int8_gemv")
def _linear_shape(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("actprune::decode_attention")
def _attention_shape(q, k, v, mask, scale):
    batch, heads, tokens, width = q.shape
    return q.new_empty((batch, tokens, heads, width))


@torch.library.register_fake("actprune::quant_rows_linear")
def _quant_linear_shape(x, weight, bias, fmt):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake("actprune::nm_select_cpu")
def _select_shape(groups, values, n):
    return torch.empty_like(values)
