"""The Triton masked GEMM on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1)."""

import os
import subprocess
import sys
import textwrap

import pytest

CASES = [((5, 64), 24, 2, 4), ((3, 7, 80), 40, 8, 16), ((33, 128), 17, 16, 32), ((2, 192), 9, 4, 8),
         ((1, 64), 64, 32, 64), ((70, 576), 96, 8, 16)]


def run_interpreted(body: str) -> subprocess.CompletedProcess:
    """Triton reads TRITON_INTERPRET at import: run in a fresh interpreter with it set."""
    code = "import torch\nfrom actprune_compiler.kernels.triton_nm import nm_matmul\n" + textwrap.dedent(body)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def test_masked_gemm_equals_the_reference_for_every_case():
    result = run_interpreted(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        from reference import masked_input
        for i, (shape, out, n, m) in enumerate({CASES!r}):
            g = torch.Generator().manual_seed(i)
            x, w = torch.randn(*shape, generator=g), torch.randn(out, shape[-1], generator=g)
            b = torch.randn(out, generator=g)
            for bias in (b, None):
                want = torch.nn.functional.linear(masked_input(x, n, m), w, bias)
                got = nm_matmul(x, w, bias, n, m)
                assert got.shape == want.shape, (shape, got.shape)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_score_scale_ties_and_nan_follow_the_contract():
    result = run_interpreted("""
        import math
        w = torch.eye(64)
        y = nm_matmul(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 5.0, 2.0] * 8]), w, None, 2, 4)
        assert y[0, :8].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 5.0, 2.0], y[0, :8]  # ties: lower index
        # A NaN is kept (it ranks first) and, as in any dense matmul, reaches every output.
        y = nm_matmul(torch.tensor([[math.nan, 1.0, 2.0, 3.0] * 16]), w, None, 2, 4)
        assert all(math.isnan(v) for v in y[0].tolist())
        scale = torch.tensor([1.0, 1.0, 10.0, 10.0] * 16)
        y = nm_matmul(torch.ones(1, 64), w, None, 2, 4, score_scale=scale)
        assert y[0, :4].tolist() == [0.0, 0.0, 1.0, 1.0], y[0, :4]
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("args,match", [("torch.zeros(2, 60), torch.zeros(4, 60), None, 2, 8", "M dividing 60"),
                                        ("torch.zeros(2, 96), torch.zeros(4, 96), None, 4, 12", "power of two")])
def test_unsupported_shapes_are_refused_with_a_reason(args, match):
    result = run_interpreted(f"nm_matmul({args})")
    assert result.returncode != 0 and match in result.stderr


def test_sparse_rows_gemv_equals_dense_matmul_and_skips_zero_rows():
    result = run_interpreted("""
        from actprune_compiler.kernels.triton_nm import sparse_rows_gemv
        from actprune_compiler.sparsity.masks import prune_sorted
        for i, (tokens, k, n) in enumerate([(1, 64, 40), (3, 96, 130), (2, 576, 257)]):
            g = torch.Generator().manual_seed(i)
            x = prune_sorted(torch.randn(tokens, k, generator=g), torch.rand(tokens, k, generator=g), 8, 16)
            wt, b = torch.randn(k, n, generator=g), torch.randn(n, generator=g)
            torch.testing.assert_close(sparse_rows_gemv(x, wt, b), x @ wt + b, rtol=1e-4, atol=1e-4)
        # Rows under a zero input are masked out of the load, not multiplied by 0 (0 * NaN = NaN).
        x = torch.zeros(1, 64); x[0, 3] = 2.0
        wt = torch.full((64, 8), float("nan")); wt[3] = 1.0
        assert sparse_rows_gemv(x, wt, None).tolist() == [[2.0] * 8]
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
