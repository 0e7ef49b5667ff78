"""Which criteria the fused GPU GEMM computes: only those that declare fused_gpu (a score of |x| times a static
per-feature scale, what the Triton prologue computes). Runs on the CPU: the lowering decides on fake CUDA
tensors, and nothing is computed."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from actprune_compiler.kernels import gpu
from actprune_compiler.lowering import inductor as lowering
from actprune_compiler.sparsity.criteria import CRITERIA, Criterion

FUSED = "triton masked GEMM (or cuSPARSELt)"


def lowered_kernel(criterion: str) -> str:
    """The kernel nm_linear's lowering chooses for a prefill on CUDA in float16 at 8:16."""
    with FakeTensorMode():
        x = torch.empty(2, 8, 64, device="cuda", dtype=torch.float16)
        weight = torch.empty(32, 64, device="cuda", dtype=torch.float16)
        lowering.nm_linear_decomposed(x, weight, None, 8, 16, criterion, "none")
    return gpu.LOWERED[f"cuda float16 8:16 {criterion}+none prefill"]


@pytest.mark.parametrize("declares", [True, False])
def test_only_a_criterion_that_declares_fused_gpu_takes_the_fused_gemm(monkeypatch, declares):
    monkeypatch.setattr(gpu, "LOWERED", {})  # what this test lowers stays out of other tests' results
    name = "scaled_magnitude_test" if declares else "squared_test"
    score = (lambda z, scale: z.abs()) if declares else (lambda z, scale: z.square())  # the latter is no |z| * s
    monkeypatch.setitem(CRITERIA, name, Criterion(name, "a criterion made by this test", score, fused_gpu=declares))
    assert gpu.gpu_path_supports(16, name, "none", torch.float16) is declares
    kernel = lowered_kernel(name)
    assert kernel == (FUSED if declares else "rank loop mask + dense GEMM"), kernel


@pytest.mark.parametrize("name", list(CRITERIA))
def test_each_criterion_declares_fused_gpu_exactly_when_its_score_is_a_scaled_magnitude(name):
    generator = torch.Generator().manual_seed(0)
    z, scale = torch.randn(6, 32, generator=generator), torch.rand(32, generator=generator) + 0.5
    scaled_magnitude = torch.allclose(CRITERIA[name].score(z, scale), z.abs() * scale)
    assert CRITERIA[name].fused_gpu is scaled_magnitude


def test_a_batch_dependent_criterion_cannot_declare_fused_gpu():
    with pytest.raises(ValueError, match="'per_call' is batch-dependent, so its score is not"):
        Criterion("per_call", "test", lambda z, scale: z.abs(), batch_dependent=True, fused_gpu=True)
