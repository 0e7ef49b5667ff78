import math

import pytest
import torch
from reference import masked_input

import actprune_compiler  # noqa: F401
from actprune_compiler.lowering.inductor import nm_linear_decomposed

nm_linear = torch.ops.actprune.nm_linear.default
SHAPES = [(1, 64, 16), (7, 64, 48), (3, 5, 128, 8)]


def _inputs(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    *lead, k, out = shape
    return (torch.randn(*lead, k, generator=g).to(dtype), torch.randn(out, k, generator=g).to(dtype),
            torch.randn(out, generator=g).to(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,m", [(2, 4), (8, 16), (16, 32), (32, 64)])
def test_reference_kernel_equals_masked_linear(shape, n, m):
    x, w, b = _inputs(shape)
    expected = torch.nn.functional.linear(masked_input(x, n, m), w, b)
    torch.testing.assert_close(nm_linear(x, w, b, n, m), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,m", [(2, 4), (8, 16), (16, 32)])
def test_fusable_decomposition_equals_reference_kernel(shape, n, m):
    x, w, b = _inputs(shape, seed=1)
    torch.testing.assert_close(nm_linear_decomposed(x, w, b, n, m), nm_linear(x, w, b, n, m), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_reference_loosely(dtype):
    x, w, b = _inputs((4, 64, 32), seed=2, dtype=dtype)
    expected = torch.nn.functional.linear(masked_input(x.float(), 8, 16), w.float(), b.float())
    got = nm_linear(x, w, b, 8, 16)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-1)


def test_no_bias_and_unstructured_whole_row():
    x, w, _ = _inputs((3, 64, 8), seed=3)
    expected = torch.nn.functional.linear(masked_input(x, 32, 64), w)
    torch.testing.assert_close(nm_linear(x, w, None, 32, 64), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(nm_linear_decomposed(x, w, None, 32, 64), expected, rtol=0, atol=1e-5)


def test_nonfinite_inputs_propagate_like_dense():
    w = torch.ones(1, 4)
    assert math.isnan(nm_linear(torch.tensor([[math.nan, 0.0, 0.0, 1.0]]), w, None, 2, 4).item())
    assert nm_linear(torch.tensor([[math.inf, 0.0, 0.0, 1.0]]), w, None, 2, 4).item() == math.inf
    # Pruned elements are zeros, never inf * 0 = NaN: with 3 infs in a 2:4 group, the third is dropped.
    y = nm_linear(torch.tensor([[math.inf, math.inf, -math.inf, 1.0]]), w, None, 2, 4)
    assert y.item() == math.inf


def test_fake_kernel_gives_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = nm_linear(torch.empty(2, 9, 64), torch.empty(40, 64), None, 8, 16)
    assert y.shape == (2, 9, 40)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(2, 60), torch.zeros(4, 60), None, 2, 8), r"pattern 2:8 does not fit 60 input features"),
    ((torch.zeros(2, 64), torch.zeros(4, 32), None, 2, 4), r"input has 64 features but the weight expects 32"),
    ((torch.zeros(2, 64), torch.zeros(4, 64), None, 4, 4), r"pattern 4:4 does not fit"),
])
def test_bad_arguments_fail_loudly(args, match):
    with pytest.raises(ValueError, match=match):
        nm_linear(*args)
    with pytest.raises(ValueError, match="criterion 'best' is unknown"):
        nm_linear(torch.zeros(2, 64), torch.zeros(4, 64), None, 2, 4, criterion="best")
