"""actprune::quant_rows_linear against the dequantised GEMV in float64, and its quantised rows against the
plain-torch quantiser in sparsity/quant.py.

Tolerance: the kernel sums in float32, in the factored form (x * scale) * q + x * min, so its rounding
error is a few float32 ulps (2^-24) of E_j = sum_k |x_k| (|scale * q| + |min|) times about sqrt(K)
(random-sign errors; K <= 1536 here, sqrt(K) < 40). The bound used, 2^-14 * E_j (1024 ulps), has a
margin of 25 over that and is still 10 times smaller than the change one wrong code makes (|x_k *
scale| ~ E_j / K >= E_j / 1536), so a misplaced or misread code fails the test.
"""

import functools
import math

import pytest
import torch

from actprune_compiler.kernels import cpu, quant
from actprune_compiler.sparsity import quant as formats
from actprune_compiler.sparsity.masks import prune_sorted

FORMATS = list(formats.QUANT_FORMATS)
SMOLLM2_SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]  # (in_features, out_features)
ODD_SHAPES = [(37, 64), (100, 96), (33, 7), (1, 32)]
SPARSITY = ["8:16", "2:4", "dense"]


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    """Every test here needs the native kernels: fail (never skip) when they do not build."""
    if not cpu.available():
        pytest.fail(f"the native CPU kernels do not build: {cpu.build_error()}", pytrace=False)


def fits(fmt, k, n):
    try:
        formats.quant_format(fmt, n, k)
    except ValueError:
        return False
    return True


def fitting(shapes):
    """(fmt, k, n) for each format and each shape it can quantise (int4: whole groups)."""
    return [(fmt, k, n) for fmt in formats.QUANT_FORMATS for k, n in shapes if fits(fmt, k, n)]


@functools.cache
def layer(k, n):
    """A weight [n, k] and bias like a trained layer's: small values, a few outliers (kept for the module)."""
    g = torch.Generator().manual_seed(k * 7919 + n)
    w = torch.randn(n, k, generator=g) * 0.05
    w[torch.rand(n, k, generator=g) < 0.001] *= 20
    return w, torch.randn(n, generator=g) * 0.1


def sparse_input(tokens, k, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g)
    if sparsity == "dense":
        return x
    n, m = map(int, sparsity.split(":"))
    if k % m == 0:
        return prune_sorted(x, x.abs(), n, m)
    return torch.where(torch.rand(tokens, k, generator=g) < n / m, x, 0.0)  # a ragged K: about n of m kept


def reference_and_bound(x, weight, bias, fmt):
    """(float64 x @ dequantized(W)^T + b, the tolerance 2^-14 * E) for x [T, K]."""
    q = formats.quantize(weight, fmt)
    dense = formats.dequantized_rows(q).double()  # [K, N]
    if q.min is None:
        terms = dense.abs()
    else:
        terms = (formats.dequantized_rows(formats.Quantized(q.codes, q.scale, torch.zeros_like(q.min))).abs()
                 + formats.per_weight(q.min, *q.codes.shape).abs()).double()
    expected = x.double() @ dense + (bias.double() if bias is not None else 0)
    return expected, 2.0**-14 * (x.double().abs() @ terms) + 1e-30


def assert_matches(got, expected, bound):
    err = (got.double() - expected).abs()
    worst = (err / bound).max().item()
    assert worst <= 1, f"error {err.max().item():.3g} is {worst:.2f} x the bound"


@pytest.mark.parametrize("fmt,k,n", fitting(SMOLLM2_SHAPES + ODD_SHAPES))
@pytest.mark.parametrize("sparsity", SPARSITY)
@pytest.mark.parametrize("tokens", [1, 2, 3, 4])
def test_equals_the_dequantised_gemv(fmt, k, n, sparsity, tokens):
    weight, bias = layer(k, n)
    x = sparse_input(tokens, k, sparsity, seed=k + n + tokens)
    expected, bound = reference_and_bound(x, weight, bias, fmt)
    assert_matches(quant.quant_rows_linear(x, weight, bias, fmt), expected, bound)


@pytest.mark.parametrize("fmt", FORMATS)
def test_any_token_count_and_leading_shape_and_no_bias(fmt):
    weight, _ = layer(576, 192)
    x = sparse_input(2 * 7, 576, "8:16", seed=5)
    expected, bound = reference_and_bound(x, weight, None, fmt)
    got = quant.quant_rows_linear(x.reshape(2, 7, 576), weight, None, fmt)
    assert got.shape == (2, 7, 192)
    assert_matches(got.reshape(14, 192), expected, bound)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dense_lm_head_shape(fmt):
    """The largest matrix, read densely: smollm2's lm_head is 576 -> 49152; 576 -> 8192 has the same
    code path (outputs split across threads, several accumulator blocks each)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(8192, 576, generator=g) * 0.05
    x = torch.randn(1, 576, generator=g)
    expected, bound = reference_and_bound(x, weight, None, fmt)
    assert_matches(quant.quant_rows_linear(x, weight, None, fmt), expected, bound)


def poison_rows(packed, fmt, n, k, rows):
    """Overwrites rows of the cache's packed bytes in place: int8 codes 127; int4 codes 15 and, where the
    scales and minimums belong to the row alone, NaN (float16 0x7E00)."""
    f = formats.QUANT_FORMATS[fmt]
    if f.group is None:
        packed[: k * n].view(k, n)[rows] = 127
        return
    if f.along_inputs:  # a block's scales serve its other rows too: only the row's codes are its own
        blocks = packed.view(k // f.group, f.group * n // 2 + 4 * n)
        for row in rows.tolist():
            block, i = divmod(row, f.group)
            blocks[block, i * n // 2: (i + 1) * n // 2] = 0xFF
        return
    groups = n // f.group
    layout = packed.view(k, n // 2 + 4 * groups)
    layout[rows, : n // 2] = 0xFF
    layout[rows, n // 2:] = torch.tensor([0x00, 0x7E], dtype=torch.uint8).repeat(2 * groups)  # little-endian NaN


@pytest.mark.parametrize("fmt,k,n,tokens", [(fmt, k, n, t) for fmt in FORMATS for k, n, t in
                                            [(576, 576, 1), (576, 1536, 3), (1536, 576, 2), (576, 8192, 1), (37, 64, 2)]
                                            if fits(fmt, k, n)])
def test_only_the_kept_rows_are_read(fmt, k, n, tokens):
    """Rows whose input is zero for every token are poisoned in the cached quantised copy after it was
    built: the output is bit-for-bit the same. Poisoning one kept row does change it (the poison is seen)."""
    g = torch.Generator().manual_seed(k + n)
    weight = torch.randn(n, k, generator=g) * 0.05
    x = sparse_input(tokens, k, "8:16", seed=k)
    before = quant.quant_rows_linear(x, weight, None, fmt)
    dropped = torch.nonzero((x == 0).all(dim=0)).flatten()
    assert len(dropped) > 0
    poison_rows(quant.packed_rows(weight, fmt), fmt, n, k, dropped)
    after = quant.quant_rows_linear(x, weight, None, fmt)
    assert torch.isfinite(after).all()
    assert torch.equal(after, before)
    kept = torch.nonzero(x[0] != 0).flatten()[:1]
    poison_rows(quant.packed_rows(weight, fmt), fmt, n, k, kept)
    assert not torch.equal(quant.quant_rows_linear(x, weight, None, fmt), before)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_inputs_reach_the_output_as_in_a_dense_gemm(fmt, value):
    """NaN or +-inf at one input: each output is what the dense product with the dequantised weight gives
    (NaN, or +-inf with the sign of the weight, NaN where the weight is 0), the other token unaffected."""
    weight, bias = layer(576, 192)
    x = sparse_input(2, 576, "8:16", seed=3)
    x[0, 17] = value
    got = quant.quant_rows_linear(x, weight, bias, fmt)
    expected, bound = reference_and_bound(x, weight, bias, fmt)
    assert not torch.isfinite(got[0]).any()
    assert torch.equal(torch.isnan(got[0]), torch.isnan(expected[0]))
    assert torch.equal(got[0][torch.isinf(got[0])], expected[0][torch.isinf(got[0])].float())
    assert_matches(got[1:], expected[1:], bound[1:])


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_cache_is_hit_and_invalidated_by_an_in_place_update(fmt):
    weight = torch.randn(192, 576) * 0.05
    x = sparse_input(1, 576, "8:16", seed=1)
    cpu.clear_cache()
    for _ in range(3):
        quant.quant_rows_linear(x, weight, None, fmt)
    assert cpu.cache_stats() == {"hits": 2, "misses": 1}
    with torch.no_grad():
        weight.copy_(torch.randn(192, 576) * 0.05)  # moves the version counter: quantised again, not stale
    expected, bound = reference_and_bound(x, weight, None, fmt)
    assert_matches(quant.quant_rows_linear(x, weight, None, fmt), expected, bound)
    assert cpu.cache_stats() == {"hits": 2, "misses": 2}
    quant.quant_rows_linear(x, weight, None, "int8" if fmt != "int8" else "int4")  # another format: its own entry
    assert cpu.cache_stats()["misses"] == 3
    cpu.clear_cache()
    assert cpu.cache_stats() == {"hits": 0, "misses": 0}


def special_weight(n, k):
    """Random values with the awkward cases: a zero output channel, an all-zero input row, constant groups
    (of 32 and of 64 outputs), ties at the rounding boundary, tiny ranges."""
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3] = 0.0  # output channel 3
    w[:, 5] = 0.0  # input row 5
    w[:64, 6] = 0.25  # a constant group
    w[n // 2, 32:64] = 0.5  # a constant group along the inputs (int4k32), where k >= 64
    w[:, 7] = torch.arange(n) % 16 * 0.125 - 1.0  # codes land exactly on integers
    w[:, 8] = 1.0 + torch.randn(n, generator=g) * 1e-6  # a range far below the minimum's float16 spacing
    return w


@pytest.mark.parametrize("fmt,k,n", fitting([(576, 576), (576, 192), (1536, 576), (37, 64), (40, 96), (33, 7),
                                             (64, 64)]))
def test_the_packer_and_the_reference_quantiser_agree_code_for_code(fmt, k, n):
    weight = special_weight(n, k)
    got = quant.unpack(quant.packed_rows(weight, fmt), fmt, n, k)
    want = formats.quantize(weight, fmt)
    assert torch.equal(got.codes.to(torch.int16), want.codes.to(torch.int16))
    assert torch.equal(got.scale, want.scale)
    assert (got.min is None and want.min is None) or torch.equal(got.min, want.min)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_kernel_multiplies_by_the_dequantised_weight_of_special_values(fmt):
    weight = special_weight(576, 576)
    x = sparse_input(2, 576, "2:4", seed=9)
    x[:, 5:9] = 1.0  # the special rows are read
    expected, bound = reference_and_bound(x, weight, None, fmt)
    assert_matches(quant.quant_rows_linear(x, weight, None, fmt), expected, bound)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k,n", [(576, 576), (576, 1536), (1536, 576)])
def test_quantisation_is_idempotent(fmt, k, n):
    """The prefill multiplies by dequantized(W) folded into the model, and the decode cache quantises
    that folded weight again: the same codes and scales come back, so both use the same values."""
    weight = layer(k, n)[0]
    folded = formats.dequantized(weight, fmt)
    first, again = formats.quantize(weight, fmt), formats.quantize(folded, fmt)
    assert torch.equal(again.codes, first.codes)
    assert torch.equal(again.scale, first.scale)
    assert (first.min is None) or torch.equal(again.min, first.min)
    assert torch.equal(formats.dequantized(folded, fmt), folded)
    packed = quant.unpack(quant.packed_rows(folded, fmt), fmt, n, k)  # the decode cache's view of it
    assert torch.equal(packed.codes.to(torch.int16), first.codes.to(torch.int16))


def test_the_format_names_are_the_kernels():
    assert cpu._extension().quant_format_names() == list(formats.QUANT_FORMATS)


def test_bits_per_weight():
    assert formats.bits_per_weight("int4", 576, 576) == 4.5
    assert formats.bits_per_weight("int4g32", 576, 576) == 5.0
    assert formats.bits_per_weight("int8", 576, 576) == 8 + 32 / 576
    assert formats.bits_per_weight("int4k32", 576, 576) == 5.0
    assert formats.bits_read_per_weight("int4g32", 576, 576, 0.5) == 2.5  # half the rows, each with its scales
    assert formats.bits_read_per_weight("int4k32", 576, 576, 0.5) == 3.0  # half the codes, every block's scales
    assert formats.bits_read_per_weight("int8", 576, 576, 0.5) == 4 + 32 / 576  # half the codes, every scale


def test_bad_input_fails_loudly():
    weight = torch.zeros(100, 64)
    x = torch.zeros(1, 64)
    with pytest.raises(RuntimeError, match="unknown format 'int3'; allowed: int8, int4, int4g32, int4k32"):
        quant.quant_rows_linear(x, weight, None, "int3")
    with pytest.raises(RuntimeError, match="float32 x and weight expected, got Double"):
        quant.quant_rows_linear(x.double(), weight, None, "int8")
    with pytest.raises(RuntimeError, match=r"out_features must be a multiple of 64, but this layer \(64 -> 100\)"):
        quant.quant_rows_linear(x, weight, None, "int4")
    with pytest.raises(RuntimeError, match="multiple of 32"):
        quant.quant_rows_linear(x, weight, None, "int4g32")
    with pytest.raises(RuntimeError, match=r"in_features must be a multiple of 32, but this layer \(100 -> 64\)"):
        quant.quant_rows_linear(torch.zeros(1, 100), torch.zeros(64, 100), None, "int4k32")
    with pytest.raises(RuntimeError, match=r"x \[..., K\] and weight \[N, K\] expected"):
        quant.quant_rows_linear(torch.zeros(1, 63), weight, None, "int8")
    with pytest.raises(RuntimeError, match="a float32 bias of 100 values expected"):
        quant.quant_rows_linear(x, weight, torch.zeros(99), "int8")
    bad = torch.zeros(64, 64)
    bad[1, 2] = math.nan
    with pytest.raises(RuntimeError, match="cannot quantise a weight .* NaN, inf"):
        quant.quant_rows_linear(x, bad, None, "int4")
    with pytest.raises(ValueError, match="unknown quantisation format 'int3'; allowed: int8, int4, int4g32, int4k32"):
        formats.dequantized(weight, "int3")
    with pytest.raises(ValueError, match="must be a multiple of 64, but the layer has 100"):
        formats.dequantized(weight, "int4")
    with pytest.raises(ValueError, match="in_features must be a multiple of 32, but the layer has 100"):
        formats.dequantized(torch.zeros(64, 100), "int4k32")


def test_int4k32_holds_the_weights_of_a_q4_1_file_exactly():
    """A weight made of GGUF Q4_1 blocks (32 inputs of one output: float16 d and m, w = d * q + m, the
    block's minimum at code 0 and its maximum at 15, as llama.cpp's min-max fit puts them) comes back
    unchanged from int4k32, and the kernel multiplies by it; groups along the outputs change it."""
    g = torch.Generator().manual_seed(41)
    n, k = 96, 128
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g).float()
    q[..., 3], q[..., 17] = 0, 15
    d = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(n, k // 32, 1, generator=g) * 0.1).half().float()
    weight = (d * q + m).reshape(n, k)
    assert torch.equal(formats.dequantized(weight, "int4k32"), weight)
    assert not torch.equal(formats.dequantized(weight, "int4g32"), weight)
    x = sparse_input(2, k, "8:16", seed=4)
    expected, bound = reference_and_bound(x, weight, None, "int4k32")
    torch.testing.assert_close(expected, x.double() @ weight.double().t(), rtol=0, atol=0)
    assert_matches(quant.quant_rows_linear(x, weight, None, "int4k32"), expected, bound)


def test_int4k32_never_reads_a_block_without_a_kept_row():
    """Inputs 32..63 are zero for every token: that block's codes, scales and minimums are poisoned (codes 15,
    NaN scales) after the cache was built, and the output stays bit-for-bit the same."""
    g = torch.Generator().manual_seed(7)
    k, n = 128, 96
    weight = torch.randn(n, k, generator=g) * 0.05
    x = sparse_input(2, k, "8:16", seed=11)
    x[:, 32:64] = 0.0
    before = quant.quant_rows_linear(x, weight, None, "int4k32")
    packed = quant.packed_rows(weight, "int4k32")
    block = packed.view(k // 32, 32 * n // 2 + 4 * n)[1]
    block[: 32 * n // 2] = 0xFF
    block[32 * n // 2:] = torch.tensor([0x00, 0x7E], dtype=torch.uint8).repeat(2 * n)  # little-endian NaN
    assert torch.equal(quant.quant_rows_linear(x, weight, None, "int4k32"), before)
    x[0, 40] = 1.0  # a kept row in that block: the poison is seen
    assert torch.isnan(quant.quant_rows_linear(x, weight, None, "int4k32")[0]).any()


def test_no_input_features_give_the_bias_or_zeros():
    b = torch.randn(5)
    assert torch.equal(quant.quant_rows_linear(torch.zeros(2, 0), torch.zeros(5, 0), b, "int8"), b.expand(2, 5))
    assert torch.equal(quant.quant_rows_linear(torch.zeros(2, 0), torch.zeros(5, 0), None, "int8"), torch.zeros(2, 5))
