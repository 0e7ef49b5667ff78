import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import numpy_keep_mask

from actprune_compiler.ops.select import keep_mask_by_rank
from actprune_compiler.sparsity.masks import keep_mask_sorted

MASKS = [keep_mask_sorted, keep_mask_by_rank]
NM = [(2, 4), (4, 8), (8, 16), (16, 32), (1, 3), (5, 7)]


@st.composite
def scores_and_pattern(draw):
    n, m = draw(st.sampled_from(NM))
    rows, groups = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    # Few distinct values, so ties are common; include zeros and negatives.
    values = draw(st.lists(st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), min_size=rows * groups * m,
                           max_size=rows * groups * m))
    return torch.tensor(values).reshape(rows, groups * m), n, m


@pytest.mark.parametrize("keep_mask", MASKS)
@given(scores_and_pattern())
@settings(max_examples=150, deadline=None)
def test_exactly_n_per_group_and_equal_to_numpy(keep_mask, case):
    scores, n, m = case
    keep = keep_mask(scores, n, m)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    assert (keep.reshape(-1, m).sum(-1) == n).all()
    np.testing.assert_array_equal(keep.numpy(), numpy_keep_mask(scores.numpy(), n, m))


@pytest.mark.parametrize("keep_mask", MASKS)
def test_ties_go_to_the_lower_index(keep_mask):
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 5.0, 2.0, 2.0, 2.0]])
    assert keep_mask(scores, 2, 4).tolist() == [[True, True, False, False, True, True, False, False]]


@pytest.mark.parametrize("keep_mask", MASKS)
def test_nan_counts_as_largest_and_inf_is_kept(keep_mask):
    scores = torch.tensor([[0.1, math.nan, 0.3, 0.2, 0.0, math.inf, 7.0, 1.0]])
    assert keep_mask(scores, 2, 4).tolist() == [[False, True, True, False, False, True, True, False]]


@pytest.mark.parametrize("keep_mask", MASKS)
def test_more_nans_than_n_keeps_the_first_ones(keep_mask):
    scores = torch.tensor([[math.nan, 1.0, math.nan, math.nan]])
    assert keep_mask(scores, 2, 4).tolist() == [[True, False, True, False]]


@pytest.mark.parametrize("keep_mask", MASKS)
def test_batched_leading_dims_and_random_values(keep_mask):
    scores = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0)).abs()
    keep = keep_mask(scores, 8, 16)
    np.testing.assert_array_equal(keep.numpy(), numpy_keep_mask(scores.numpy(), 8, 16))


@pytest.mark.parametrize("keep_mask", MASKS)
def test_feature_count_not_a_multiple_of_m_is_rejected(keep_mask):
    with pytest.raises(ValueError, match=r"last dimension \(10\) is not a multiple of the group size M=4"):
        keep_mask(torch.zeros(2, 10), 2, 4)


@pytest.mark.parametrize("n,m", [(2, 4), (8, 16), (16, 32)])
def test_the_training_mask_keeps_what_the_reference_keeps_without_ties(n, m):
    """prune_topk (recovery's training mask) equals the reference on tie-free scores, and passes
    gradient to the kept values only."""
    from actprune_compiler.sparsity.masks import prune_sorted, prune_topk

    x = torch.randn(3, 7, 4 * m, dtype=torch.float64, generator=torch.Generator().manual_seed(n), requires_grad=True)
    got = prune_topk(x, x.abs(), n, m)
    assert torch.equal(got, prune_sorted(x, x.abs(), n, m))
    got.sum().backward()
    assert torch.equal(x.grad, (got != 0).to(x.dtype))
