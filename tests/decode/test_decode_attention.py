import pytest
import torch
import torch.nn.functional as F

from actprune_compiler.kernels import cpu


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    if not cpu.available():
        pytest.fail(f"the native CPU kernels do not build: {cpu.build_error()}", pytrace=False)


def sdpa_reference(q, k, v, mask, scale):
    """float64 SDPA with the key/value heads repeated for each query head -> [B, T, H, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, 1) for t in (k, v))
    out = F.scaled_dot_product_attention(q.double(), k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,tokens", [(9, 3, 1), (4, 4, 1), (8, 1, 3)])
def test_decode_attention_equals_sdpa_over_the_allowed_positions(dtype, tolerance, heads, kv_heads, tokens):
    g = torch.Generator().manual_seed(heads * 10 + tokens)
    q = torch.randn(1, heads, tokens, 64, generator=g).to(dtype)
    k, v = (torch.randn(1, kv_heads, 96, 64, generator=g).to(dtype) for _ in range(2))
    position = torch.arange(40, 40 + tokens).view(1, 1, tokens, 1)
    slot = torch.arange(96).view(1, 1, 1, 96)
    mask = (slot <= position) & (slot > position - 16)  # causal, within a sliding window of 16
    got = cpu.decode_attention(q, k, v, mask, 0.125)
    assert got.dtype == dtype and got.shape == (1, tokens, heads, 64)
    torch.testing.assert_close(got.double(), sdpa_reference(q, k, v, mask, 0.125), rtol=tolerance, atol=tolerance)


def test_decode_attention_never_reads_masked_positions():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 1, 32, generator=g)
    k, v = (torch.randn(1, 2, 50, 32, generator=g) for _ in range(2))
    mask = torch.zeros(1, 1, 1, 50, dtype=torch.bool)
    mask[..., :20] = True
    expected = cpu.decode_attention(q, k, v, mask, 0.2)
    k[:, :, 20:], v[:, :, 20:] = float("nan"), float("nan")  # positions not yet written, or outside the window
    torch.testing.assert_close(cpu.decode_attention(q, k, v, mask, 0.2), expected, rtol=0, atol=0)


def test_decode_attention_propagates_nan_from_an_allowed_position():
    q, k, v = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    v[0, 1, 3, 5] = float("nan")
    got = cpu.decode_attention(q, k, v, torch.ones(1, 1, 1, 8, dtype=torch.bool), 0.25)
    assert got[0, 0, 1].isnan().any() and not got[0, 0, 0].isnan().any()


def test_decode_attention_refuses_shapes_that_do_not_fit():
    q, k = torch.randn(1, 3, 1, 16), torch.randn(1, 2, 8, 16)
    with pytest.raises(RuntimeError, match="shapes do not fit"):
        cpu.decode_attention(q, k, k, torch.ones(1, 1, 1, 8, dtype=torch.bool), 0.25)
    with pytest.raises(RuntimeError, match="bool mask"):
        cpu.decode_attention(torch.randn(1, 2, 1, 16), k, k, torch.ones(1, 1, 1, 8), 0.25)
