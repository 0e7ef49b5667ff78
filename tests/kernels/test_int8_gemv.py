"""actprune::int8_gemv (format int8a8: a dense linear at decode, int8 weights times the input quantised to
int8 per block of 32) against the plain-torch reference of sparsity/quant.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from actprune_compiler.kernels import cpu
from actprune_compiler.sparsity.quant import dequantized, quantize, quantize_input


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    if not cpu.available():
        pytest.fail(f"the native CPU kernels do not build: {cpu.build_error()}", pytrace=False)


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The prefill's product in float64: the input quantised as the kernel does (in float32), the weight
    dequantised from format int8."""
    return F.linear(quantize_input(x).double(), dequantized(w, "int8").double(), None if b is None else b.double())


def bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """float32 rounding of a sum of K products: a few ulps of the sum of their magnitudes."""
    return 1e-5 * (quantize_input(x).abs().double() @ dequantized(w, "int8").abs().double().T) + 1e-6


# N not a multiple of 4 (rows left after the passes of 4) and K a multiple of 32 but not of 64 (a half chunk)
@pytest.mark.parametrize("n,k", [(1, 32), (7, 96), (130, 576), (64, 640), (151, 896), (3, 64)])
@pytest.mark.parametrize("tokens", [(1,), (3,), (2, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_gemv_equals_the_float64_reference(n, k, tokens, bias):
    g = torch.Generator().manual_seed(n * k)
    x, w = torch.randn(*tokens, k, generator=g) * 3, torch.randn(n, k, generator=g)
    x[..., :32] *= 40  # a block of outliers, as activations have: its own scale
    x[..., 32:64] = 0  # an all-zero block (when K has one): scale 0, codes 0
    b = torch.randn(n, generator=g) if bias else None
    got = cpu.int8_gemv(x, w, b)
    assert got.shape == (*tokens, n)
    assert ((got.double() - reference(x, w, b)).abs() <= bound(x, w)).all()


def test_the_input_is_quantised_not_multiplied_in_float():
    """An input that int8 cannot hold exactly in its block: the kernel's result is the quantised input's
    product, not the float input's."""
    w = torch.eye(32)
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 127.0, 0.4  # scale 1: 0.4 rounds to 0
    y = cpu.int8_gemv(x, w, None)[0]
    assert y[0].item() == pytest.approx(127.0, rel=1e-5) and y[1].item() == 0.0  # not 0.4


def test_the_cached_rows_hold_format_int8s_codes_and_scales():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(70, 96, generator=g)
    packed = cpu._extension().int8_dot_rows(w)
    q = quantize(w, "int8")
    codes = packed[: 70 * 96].view(70, 96).to(torch.int16) - 128
    scales_at = (70 * 96 + 63) // 64 * 64  # the next 64-byte boundary after the codes
    assert torch.equal(codes, q.codes.t().to(torch.int16))
    assert torch.equal(packed[scales_at: scales_at + 4 * 70].view(torch.float32), q.scale)


def test_nan_and_inf_make_their_tokens_outputs_nan_as_the_reference_does():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(9, 64, generator=g), torch.randn(9, generator=g)
    x = torch.randn(3, 64, generator=g)
    x[0, 40], x[2, 3] = math.inf, math.nan
    got, want = cpu.int8_gemv(x, w, b), reference(x, w, b)
    assert got[0].isnan().all() and got[2].isnan().all() and want[0].isnan().all() and want[2].isnan().all()
    assert ((got[1].double() - want[1]).abs() <= bound(x[1:2], w)[0]).all()


def test_a_changed_weight_is_read_again():
    w, x = torch.randn(64, 96), torch.randn(1, 96)
    first = cpu.int8_gemv(x, w, None)
    with torch.no_grad():
        w.mul_(-2)
    assert ((cpu.int8_gemv(x, w, None).double() - reference(x, w, None)).abs() <= bound(x, w)).all()
    assert not torch.allclose(first, cpu.int8_gemv(x, w, None))


def test_edge_shapes():
    w, b = torch.randn(40, 64), torch.randn(40)
    assert cpu.int8_gemv(torch.zeros(0, 64), w, b).shape == (0, 40)  # no tokens
    assert cpu.int8_gemv(torch.randn(2, 64), torch.zeros(0, 64), None).shape == (2, 0)  # no outputs
    strided_x = torch.randn(64, 2).t()  # not contiguous
    assert ((cpu.int8_gemv(strided_x, w, b).double() - reference(strided_x, w, b)).abs() <= bound(strided_x, w)).all()


def test_bad_input_fails_in_one_sentence():
    with pytest.raises(RuntimeError, match=r"int8_gemv: the input is quantised in blocks of 32 features, so "
                                           r"in_features must be a multiple of 32, but this layer \(40 -> 3\) has 40"):
        cpu.int8_gemv(torch.zeros(1, 40), torch.zeros(3, 40), None)
    with pytest.raises(RuntimeError, match=r"int8_gemv: float32 x and weight expected, got Double"):
        cpu.int8_gemv(torch.zeros(1, 32, dtype=torch.float64), torch.zeros(3, 32, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match=r"cannot quantise a weight \[3, 32\] to int8 because it holds NaN or inf"):
        cpu.int8_gemv(torch.zeros(1, 32), torch.full((3, 32), math.inf), None)


def test_quantize_input_maps_each_blocks_largest_value_to_127_and_rounds_the_rest():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 96, generator=g) * torch.tensor([1.0, 100.0, 0.01]).repeat_interleave(32)
    blocks, quantized = x.view(5, 3, 32), quantize_input(x).view(5, 3, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    codes = (quantized / scale).round()
    largest = blocks.abs().argmax(-1, keepdim=True)
    assert (codes.gather(-1, largest).abs() == 127).all() and (codes.abs() <= 127).all()
    assert ((quantized - blocks).abs() <= scale / 2 * (1 + 1e-5)).all()


def test_inputs_that_lean_one_way_keep_the_results_precision():
    """Inputs near 100 (codes near 127, all of one sign) and rows of small weights with one large one (so the
    weight scale is large against most weights): summing q + 128 times the codes and taking 128 times their
    sum off in float32 would lose about 1e-3 here; the integer lanes keep float32's rounding of the result."""
    g = torch.Generator().manual_seed(6)
    x = 100 + torch.rand(1, 256, generator=g)
    w = torch.randn(8, 256, generator=g) * 0.01
    w[:, 0] = 1.0
    got, want = cpu.int8_gemv(x, w, None).double(), reference(x, w, None)
    magnitude = quantize_input(x).abs().double() @ dequantized(w, "int8").abs().double().T
    assert ((got - want).abs() <= 3e-7 * magnitude).all()  # about 1e-4 here


def test_subnormal_and_empty_inputs_agree_with_the_reference():
    w = torch.randn(6, 64)
    x = torch.zeros(2, 64)
    x[0, :32] = torch.linspace(-2e-43, 2e-43, 32)  # a subnormal scale: x / scale passes 127, clamped
    torch.testing.assert_close(cpu.int8_gemv(x, w, None).double(), reference(x, w, None), rtol=1e-5, atol=1e-45)
    assert reference(torch.zeros(0, 64), w, None).shape == cpu.int8_gemv(torch.zeros(0, 64), w, None).shape == (0, 6)
    assert quantize_input(torch.zeros(3, 0)).shape == (3, 0)
