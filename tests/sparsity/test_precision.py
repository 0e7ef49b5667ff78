"""Scores are ranked in float32 by every implementation, so in bf16/fp16 the reference sort, the
rank count, and Inductor's fused loop keep exactly the same features (ties included)."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import numpy_keep_mask

from actprune_compiler.backends.inductor import compile_program
from actprune_compiler.ops.select import prune_by_rank
from actprune_compiler.sparsity.masks import prune_sorted

TOKENS, K, N, M = 8, 64, 4, 16


class IdentityNM(torch.nn.Module):
    """nm_linear with W = I: the output is the pruned input itself, exactly, in any dtype."""

    def __init__(self, dtype: torch.dtype, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", torch.eye(K, dtype=dtype))
        self.register_buffer("scale", scale)

    def forward(self, x):
        return torch.ops.actprune.nm_linear(x, self.weight, None, N, M, criterion="wina", score_scale=self.scale)


@functools.cache
def compiled(dtype: torch.dtype):
    module = IdentityNM(dtype, torch.ones(K))
    return module, compile_program(module, dynamic=False, freeze=False)  # the scale stays an input


def expected(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    scores = np.abs(x.float().numpy()) * scale.numpy()  # float32, as the contract says
    keep = numpy_keep_mask(scores, N, M)
    return torch.where(torch.from_numpy(keep), x, torch.zeros((), dtype=x.dtype))


# Few distinct values, so ties within a group are common and the tie rule is exercised.
values = st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 3.0, -3.0, 1e-3]), min_size=TOKENS * K,
                  max_size=TOKENS * K)
scales = st.lists(st.sampled_from([1.0, 0.5, 2.0, 1.0 / 3, 3.0]), min_size=K, max_size=K)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@settings(max_examples=25, deadline=None)
@given(values=values, scale_values=scales)
def test_sort_rank_and_inductor_keep_the_same_features(dtype, values, scale_values):
    x = torch.tensor(values, dtype=torch.float32).to(dtype).view(TOKENS, K)
    scale = torch.tensor(scale_values, dtype=torch.float32)
    want = expected(x, scale)
    scores = x.float().abs() * scale
    assert torch.equal(prune_sorted(x, scores, N, M), want)
    assert torch.equal(prune_by_rank(x, scores, N, M), want)
    module, fast = compiled(dtype)
    module.scale.copy_(scale)
    with torch.no_grad():
        assert torch.equal(fast(x), want)
        assert torch.equal(module(x), want)  # the op's reference kernel
