"""actprune::sparse_rows_linear: the decode kernel. CPU: built from sparse_rows.cpp on first use;
CUDA: the Triton GEMV in triton_nm.py.

The build (a torch C++ extension, about a minute) is cached under ~/.cache/torch_extensions.
If it cannot be built, nothing falls back silently: the lowering says so once on stderr, with the
build error, and decodes with the dense GEMM on the masked input (same results, dense speed).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

from actprune_compiler.kernels.transposed import transposed

SOURCE = Path(__file__).with_name("sparse_rows.cpp")


@functools.cache
def _extension():
    from torch.utils.cpp_extension import load

    return load(name="actprune_sparse_rows", sources=[str(SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                extra_ldflags=["-fopenmp"], verbose=False)


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


@torch.library.custom_op("actprune::sparse_rows_linear", mutates_args=())
def sparse_rows_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] @ weight [N, K]^T + bias, reading only the rows of W^T where x is nonzero."""
    flat = x.reshape(-1, x.shape[-1])
    return _extension().sparse_rows_linear(flat, transposed(weight), bias).reshape(*x.shape[:-1], weight.shape[0])


@sparse_rows_linear.register_kernel("cuda")
def _sparse_rows_linear_cuda(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    from actprune_compiler.kernels.triton_nm import sparse_rows_gemv

    return sparse_rows_gemv(x, transposed(weight), bias)


@sparse_rows_linear.register_fake
def _sparse_rows_linear_shape(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
