"""GPU paths; every test here skips without CUDA. scripts/gpu_check.sh runs them on a GPU."""

import pytest
import torch
from reference import masked_input

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-2), (torch.float16, 5e-2), (torch.bfloat16, 2e-1)])
@pytest.mark.parametrize("shape,out,n,m", [((1, 4096), 4096, 8, 16), ((2048, 4096), 11008, 2, 4),
                                           ((77, 576), 1536, 16, 32), ((3, 5, 80), 40, 8, 16)])
def test_triton_masked_gemm_matches_the_reference(dtype, tol, shape, out, n, m):
    from actprune_compiler.kernels.triton_nm import nm_matmul

    x = torch.randn(*shape, device="cuda", dtype=dtype)
    w = torch.randn(out, shape[-1], device="cuda", dtype=dtype) / shape[-1] ** 0.5
    want = torch.nn.functional.linear(masked_input(x.float().cpu(), n, m), w.float().cpu()).to(dtype)
    torch.testing.assert_close(nm_matmul(x, w, None, n, m).cpu(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cusparselt_2_4_uses_the_exact_per_row_mask(dtype):
    from actprune_compiler.kernels.gpu import nm_matmul_cusparselt

    x = torch.randn(2048, 4096, device="cuda", dtype=dtype)
    w = torch.randn(4096, 4096, device="cuda", dtype=dtype) / 64
    want = torch.nn.functional.linear(masked_input(x.float().cpu(), 2, 4), w.float().cpu())
    torch.testing.assert_close(nm_matmul_cusparselt(x, w, None).float().cpu(), want, rtol=5e-2, atol=2e-1)


def test_compiled_tiny_model_on_cuda_matches_the_cpu_reference():
    from conftest import tiny_model, token_ids
    from reference import reference_logits

    from actprune_compiler import SparsityConfig, compile_program, export_causal_lm, sparsify

    model = tiny_model("llama")
    program = sparsify(export_causal_lm(model.cuda()), SparsityConfig("8:16")).program
    ids = token_ids()
    got = compile_program(program)(ids.cuda()).cpu()
    torch.testing.assert_close(got, reference_logits(model.cpu(), ids, 8, 16), rtol=1e-3, atol=1e-3)
