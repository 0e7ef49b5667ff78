import pytest
import torch
from conftest import tiny_program, token_ids
from torch._inductor.utils import run_and_get_code

from actprune_compiler import SparsityConfig, compile_program, sparsify


@pytest.mark.parametrize("pattern", ["2:4", "8:16"])
def test_inductor_compiled_program_matches_uncompiled(family, pattern):
    result = sparsify(tiny_program(family), SparsityConfig(pattern))
    compiled = compile_program(result.program)
    for batch, seq in [(2, 24), (1, 7), (3, 40)]:  # dynamic shapes: one artifact, any batch and length
        ids = token_ids(batch, seq, seed=batch)
        with torch.no_grad():
            expected = result.module()(ids)
        torch.testing.assert_close(compiled(ids), expected, rtol=1e-4, atol=1e-4)


def test_inductor_expands_nm_linear_instead_of_calling_the_reference_kernel():
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    compiled = compile_program(result.program, freeze=True)
    with torch.no_grad():
        _, sources = run_and_get_code(compiled, token_ids())
    code = "\n".join(sources)
    assert "torch.ops.actprune.nm_linear.default(" not in code  # no opaque fallback to the sort + scatter kernel
    assert "sort" not in code and "scatter" not in code
    gemms = ("extern_kernels.mm", "extern_kernels.addmm", "mkldnn._linear_pointwise")  # frozen: prepacked
    assert any(g in code for g in gemms)  # the GEMMs remain library calls
