import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_program, token_ids
from torch._inductor.utils import run_and_get_code

from actprune_compiler import SparsityConfig, compile_program, sparsify
from actprune_compiler.kernels import cpu
from actprune_compiler.lowering import inductor as lowering
from actprune_compiler.ops.select import nm_select
from actprune_compiler.sparsity.masks import grouped, prune_sorted


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


@pytest.mark.parametrize("m", [4, 8, 16, 32, 64, 6])
@pytest.mark.parametrize("values_dtype,scores_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                       (torch.float64, torch.float64)], ids=["fp32", "bf16", "fp64"])
def test_native_mask_keeps_what_nm_select_keeps(m, values_dtype, scores_dtype):
    """Exactly N kept per group, and the same N as actprune::nm_select: ties to the lower index, NaN kept."""
    g = torch.Generator().manual_seed(m)
    x = torch.randn(3, 5, 4 * m, generator=g).to(values_dtype)
    x[0, 0, :m] = 1.0  # a group of ties
    x[0, 1, : m // 2] = -2.0  # ties across signs
    x[1, 1, 2] = math.nan  # its score is +inf
    groups = grouped(x.abs().to(scores_dtype), m)
    values = x.unflatten(-1, groups.shape[-2:])
    for n in sorted({1, m // 2, m - 1}):
        got = cpu.nm_select(groups, values, n)
        torch.testing.assert_close(got, nm_select(groups, values, n), rtol=0, atol=0, equal_nan=True)
        assert ((got != 0).sum(-1) == n).all()


def test_native_mask_refuses_integer_scores():
    with pytest.raises(RuntimeError, match="nm_select_cpu: float32 or float64 scores expected"):
        cpu.nm_select(torch.zeros(2, 4, dtype=torch.int32), torch.zeros(2, 4), 2)


@pytest.mark.parametrize("native", [True, False], ids=["native", "inductor-loop"])
def test_compiled_mask_is_the_native_kernel_on_cpu_and_both_masks_match_the_reference(native, monkeypatch):
    """On CPU the graphs call the native mask; Inductor's own loop (the GPU path's lowering, and the CPU's
    when the native kernels cannot be built) stays correct."""
    if not native:
        monkeypatch.setattr(lowering, "native_mask", lambda x: False)
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    prefill = token_ids(2, 16)
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):  # the patch is not in the cache key
        got, sources = run_and_get_code(compile_program(result.program, freeze=False), prefill)
        torch.testing.assert_close(got, result.module()(prefill), rtol=1e-4, atol=1e-4)
    code = "\n".join(sources)
    # 7 rewritten linears a layer read 4 inputs (q/k/v one, gate/up one): 4 masks a layer, 2 layers
    assert code.count("actprune.nm_select_cpu.default(") == (8 if native else 0)


def test_repeated_work_is_merged_but_random_and_mutating_ops_are_not():
    def f(x):
        noise_a, noise_b = torch.rand_like(x), torch.rand_like(x)
        y = x.clone()
        return x.abs() + x.abs() + noise_a + noise_b, y.add_(1), y.add_(1)

    graph = torch.fx.experimental.proxy_tensor.make_fx(f)(torch.zeros(3)).graph
    count = lambda op: sum(n.target is op for n in graph.nodes)  # noqa: E731
    before = {op: count(op) for op in (torch.ops.aten.abs.default, torch.ops.aten.rand_like.default,
                                       torch.ops.aten.add_.Tensor)}
    assert lowering.merge_repeated_work(graph) == 1
    assert count(torch.ops.aten.abs.default) == before[torch.ops.aten.abs.default] - 1 == 1
    assert count(torch.ops.aten.rand_like.default) == before[torch.ops.aten.rand_like.default] == 2
    assert count(torch.ops.aten.add_.Tensor) == before[torch.ops.aten.add_.Tensor] == 2
