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
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from reference import masked_input
        for i, (shape, out, n, m) in enumerate({CASES!r}):
            g = torch.Generator().manual_seed(i)
            x, w, b = torch.randn(*shape, generator=g), torch.randn(out, shape[-1], generator=g), torch.randn(out, generator=g)
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
