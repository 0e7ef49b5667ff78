"""actprune::dense_gemv (a dense linear at decode: dot products with W's rows) and the memory in 2 MiB pages
that holds the weight forms a decode step reads."""

import math
from pathlib import Path

import pytest
import torch

from actprune_compiler.kernels import cpu


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    if not cpu.available():
        pytest.fail(f"the native CPU kernels do not build: {cpu.build_error()}", pytrace=False)


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return (y if b is None else y + b.double()).float()


# N not a multiple of 4 (rows left after the passes of 4) and K not a multiple of 16 (lanes left over)
@pytest.mark.parametrize("n,k", [(1536, 576), (7, 20), (130, 33), (1, 3), (49152 // 64, 576)])
@pytest.mark.parametrize("tokens", [(1,), (3,), (2, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gemv_equals_the_float64_reference(n, k, tokens, bias):
    g = torch.Generator().manual_seed(n * k)
    x, w = torch.randn(*tokens, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    got = cpu.dense_gemv(x, w, b)
    assert got.shape == (*tokens, n)
    torch.testing.assert_close(got, reference(x, w, b), rtol=1e-5, atol=1e-4)


def test_nan_and_inf_reach_the_outputs_they_touch():
    w = torch.ones(5, 40)
    w[3, 0] = 0.0  # 0 * inf is nan, as in a dense GEMM
    x = torch.zeros(1, 40)
    x[0, 0] = math.inf
    assert cpu.dense_gemv(x, w, None).tolist() == [[math.inf, math.inf, math.inf, pytest.approx(math.nan, nan_ok=True),
                                                    math.inf]]
    x[0, 0] = math.nan
    assert cpu.dense_gemv(x, w, None).isnan().all()


def test_edge_shapes_and_layouts():
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(40, 24, generator=g), torch.randn(2, 24, generator=g)
    b = torch.randn(40, generator=g)
    assert torch.equal(cpu.dense_gemv(torch.zeros(1, 0), torch.zeros(6, 0), b[:6]), b[:6].expand(1, 6))  # K == 0
    assert cpu.dense_gemv(torch.zeros(0, 24), w, b).shape == (0, 40)  # no tokens
    assert cpu.dense_gemv(x, torch.zeros(0, 24), None).shape == (2, 0)  # no outputs
    transposed_w, strided_x = w.t().contiguous().t(), torch.randn(24, 2, generator=g).t()  # not contiguous
    torch.testing.assert_close(cpu.dense_gemv(strided_x, transposed_w, b), reference(strided_x, w, b),
                               rtol=1e-5, atol=1e-4)


def test_a_changed_weight_is_read_again():
    w, x = torch.randn(64, 48), torch.randn(1, 48)
    torch.testing.assert_close(cpu.dense_gemv(x, w, None), reference(x, w, None), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        w.mul_(-2)
    torch.testing.assert_close(cpu.dense_gemv(x, w, None), reference(x, w, None), rtol=1e-5, atol=1e-4)


def test_bad_input_fails_in_one_sentence():
    with pytest.raises(RuntimeError, match=r"dense_gemv: float32 x and weight expected, got Double"):
        cpu.dense_gemv(torch.zeros(1, 8, dtype=torch.float64), torch.zeros(3, 8, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match=r"x \[..., K\] and weight \[N, K\] expected"):
        cpu.dense_gemv(torch.zeros(1, 8), torch.zeros(3, 7), None)
    with pytest.raises(RuntimeError, match=r"a float32 bias of 3 values expected"):
        cpu.dense_gemv(torch.zeros(1, 8), torch.zeros(3, 8), torch.zeros(4))


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping that holds address (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(end, 16) for end in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


THP = Path("/sys/kernel/mm/transparent_hugepage")


@pytest.mark.skipif(not THP.exists(), reason="no transparent huge pages here (2 MiB pages are asked of Linux)")
@pytest.mark.parametrize("fmt", ["transposed", "rows", "int8", "int4k32", "int8 dot rows"])
def test_decode_forms_lie_in_memory_advised_for_huge_pages(fmt):
    w = torch.randn(192, 576)
    forms = {"transposed": cpu.transposed, "rows": cpu._extension().dense_rows,
             "int8 dot rows": cpu._extension().int8_dot_rows}
    form = forms[fmt](w) if fmt in forms else cpu._extension().quantized_rows(w, fmt)
    assert "hg" in vm_flags(form.data_ptr())  # madvise(MADV_HUGEPAGE), whether or not the OS granted them
    assert "hg" not in vm_flags(w.data_ptr())  # torch's own allocation, for contrast


def test_forms_outlive_the_chunks_emptied_around_them():
    """Forms of 1 MiB fill three shared chunks of 64 MiB. Every form of the first chunk dies (it is unmapped),
    two of the second survive, and the last form of the third, the chunk being filled, dies after the others
    (its pages go back, and new forms fill it from its start); a form of 20 MiB takes a chunk of its own. The
    survivors and the new forms keep their values throughout."""
    g = torch.Generator().manual_seed(0)
    cpu.clear_cache()
    weights = [torch.randn(256, 1024, generator=g) for _ in range(150)]
    forms = [cpu.transposed(w) for w in weights]
    keep = [70, 100, 149]  # in the second chunk, and in the third (the one being filled)
    survivors = [(weights[i], forms[i]) for i in keep]
    del weights, forms
    cpu.clear_cache()  # the cache's own references go too: only the survivors' forms are alive
    survivors.pop()  # the third chunk is now empty: its pages go back and it starts again
    large = torch.randn(5 << 20, 1, generator=g)  # 20 MiB: a chunk of its own
    more = [torch.randn(1024, 256, generator=g) for _ in range(80)] + [large]
    more_forms = [cpu.transposed(w) for w in more]
    for w, form in survivors + list(zip(more, more_forms, strict=True)):
        assert torch.equal(form, w.t())
