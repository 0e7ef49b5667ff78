import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_program, token_ids
from torch._inductor.utils import run_and_get_code

from actprune_compiler import SparsityConfig, compile_program, sparsify
from actprune_compiler.kernels import cpu
from actprune_compiler.sparsity.masks import prune_sorted


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    """Every test here needs the native decode kernel: fail (never skip) when it does not build, so CI sees it."""
    if not cpu.available():
        pytest.fail(f"the native CPU decode kernel does not build: {cpu.build_error()}", pytrace=False)


@pytest.mark.parametrize("tokens", [1, 3, 8])
@pytest.mark.parametrize("k,n", [(64, 40), (48, 7), (576, 1536)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_rows_linear_equals_dense_matmul_fp32(tokens, k, n, bias):
    g = torch.Generator().manual_seed(tokens * k + n)
    x = prune_sorted(torch.randn(tokens, k, generator=g), torch.randn(tokens, k, generator=g).abs(), 2, 4)
    wt, b = torch.randn(k, n, generator=g), torch.randn(n, generator=g) if bias else None
    expected = x @ wt + (b if bias else 0)
    torch.testing.assert_close(cpu.sparse_rows_linear(x, wt.t(), b), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_rows_linear_half_precision(dtype):
    g = torch.Generator().manual_seed(1)
    x = prune_sorted(torch.randn(2, 3, 64, generator=g), torch.rand(2, 3, 64, generator=g), 8, 16).to(dtype)
    wt, b = torch.randn(64, 32, generator=g).to(dtype), torch.randn(32, generator=g).to(dtype)
    got = cpu.sparse_rows_linear(x, wt.t(), b)
    assert got.dtype == dtype and got.shape == (2, 3, 32)
    torch.testing.assert_close(got.float(), x.float() @ wt.float() + b.float(), rtol=2e-2, atol=1e-1)


def test_nan_and_inf_inputs_reach_the_output():
    wt = torch.ones(4, 2)
    assert math.isnan(cpu.sparse_rows_linear(torch.tensor([[math.nan, 0, 0, 1.0]]), wt.t(), None)[0, 0])
    assert cpu.sparse_rows_linear(torch.tensor([[math.inf, 0, 0, 0.0]]), wt.t(), None)[0, 1] == math.inf


def test_bad_shapes_fail_loudly():
    with pytest.raises(RuntimeError, match=r"x \[..., K\] and weight \[N, K\] expected"):
        cpu.sparse_rows_linear(torch.zeros(2, 8), torch.zeros(3, 7), None)


def test_decode_shapes_lower_to_the_kernel_and_match_the_reference():
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    with torch.no_grad():
        decode, prefill = token_ids(1, 1), token_ids(2, 16)
        _, sources = run_and_get_code(compile_program(result.program), decode)
        assert "sparse_rows_linear" in "\n".join(sources)
        torch.testing.assert_close(compile_program(result.program)(decode), result.module()(decode),
                                   rtol=1e-4, atol=1e-4)
        _, sources = run_and_get_code(compile_program(result.program), prefill)
        assert "sparse_rows_linear" not in "\n".join(sources)  # many tokens: the GEMM path


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear_and_packs_each_weight_once(bias):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 37, 576, generator=g), torch.randn(1536, 576, generator=g)
    b = torch.randn(1536, generator=g) if bias else None
    cpu.clear_cache()
    for _ in range(3):
        torch.testing.assert_close(torch.ops.actprune.packed_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    assert cpu.cache_stats() == {"hits": 2, "misses": 1}
    with torch.no_grad():
        w.mul_(-1)  # an in-place update moves the version counter: packed again, not stale
    torch.testing.assert_close(torch.ops.actprune.packed_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    assert cpu.cache_stats()["misses"] == 2


def test_packed_linear_refuses_other_dtypes():
    with pytest.raises(RuntimeError, match="packed_linear: float32 only"):
        torch.ops.actprune.packed_linear(torch.zeros(2, 8, dtype=torch.float64), torch.zeros(3, 8, dtype=torch.float64),
                                         None)


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_prefill_takes_the_packed_gemm_with_weights_as_inputs(regional):
    """Neither regional compilation nor an unfrozen whole graph lets Inductor pack weights: the packed
    GEMM comes from actprune's weight cache, and equals the uncompiled program's GEMM."""
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    compiled = compile_program(result.program, freeze=False, regional=regional)
    prefill = token_ids(2, 16)
    with torch.no_grad():
        got, sources = run_and_get_code(compiled, prefill)
        torch.testing.assert_close(got, result.module()(prefill), rtol=1e-4, atol=1e-4)
    code = "\n".join(sources)
    # 7 rewritten linears a layer, 2 layers (regional: one kind's code), and the dense lm_head: all packed
    assert code.count("actprune.packed_linear.default(") == (7 if regional else 14) + 1
    assert "extern_kernels.mm(" not in code and "addmm" not in code

