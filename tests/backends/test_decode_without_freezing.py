"""The decode kernel's W^T comes from a cache keyed by the weight, not from Inductor's freezing, so
the plain torch.compile(model.forward, backend="actprune") call decodes with it too."""

import copy

import pytest
import torch
from conftest import PROMPT, greedy, tiny_model, tiny_program, token_ids
from reference import hooked
from torch._inductor.utils import run_and_get_code

from actprune_compiler import SparsityConfig, compile_program, sparsify
from actprune_compiler.backends.inductor import inductor_with_nm_lowering
from actprune_compiler.kernels import cpu

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_exported_program_without_freezing_decodes_with_the_kernel():
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    decode = token_ids(1, 1)
    with torch.no_grad():
        compiled = compile_program(result.program, freeze=False)
        got, sources = run_and_get_code(compiled, decode)
        assert "sparse_rows_linear" in "\n".join(sources)
        torch.testing.assert_close(got, result.module()(decode), rtol=1e-5, atol=1e-5)
        compiled(decode)
    # W^T of the 14 rewritten layers and W's rows of the dense lm_head (route_dense_linears): each made once on
    # the first call, reused on the second.
    assert "packed_linear" not in "\n".join(sources)
    assert cpu.cache_stats() == {"misses": 15, "hits": 15}


def test_plain_torch_compile_call_generates_with_the_kernel_and_matches_the_reference():
    model = copy.deepcopy(tiny_model("llama"))
    with hooked(model, 8, 16):
        expected = greedy(model, PROMPT, tokens=12)
    # frozen: the weight cache holds the decode W^T of the 14 rewritten layers and W of lm_head only (unfrozen
    # prefill GEMMs would pack weights there too)
    model.forward = torch.compile(model.forward, backend="actprune", options={"pattern": "8:16", "freeze": True})
    assert greedy(model, PROMPT, tokens=12) == expected
    misses = cpu.cache_stats()["misses"]
    assert misses == 15 and cpu.cache_stats()["hits"] > 15 * 5  # every decode step reuses W^T
    assert greedy(model, PROMPT, tokens=12) == expected and cpu.cache_stats()["misses"] == misses


def test_an_in_place_weight_update_refreshes_the_cached_transpose():
    weight = torch.randn(8, 16)
    first = cpu.transposed(weight)
    assert cpu.transposed(weight) is first
    with torch.no_grad():
        weight.mul_(2)
    torch.testing.assert_close(cpu.transposed(weight), (weight.t()).contiguous())
    assert cpu.cache_stats() == {"misses": 2, "hits": 1}


@pytest.mark.parametrize("change", ["replace", "in place"])
def test_freeze_true_folds_the_weights_and_refuses_to_run_stale(change):
    model = copy.deepcopy(tiny_model("llama"))
    model.forward = torch.compile(model.forward, backend="actprune", options={"pattern": "8:16", "freeze": True})
    greedy(model, PROMPT, tokens=3)
    layer = model.model.layers[0].mlp.down_proj
    if change == "replace":  # same shape: Dynamo's guards alone would reuse the frozen graph
        layer.weight = torch.nn.Parameter(torch.randn(64, 128))
    else:
        with torch.no_grad():
            layer.weight.mul_(2)
    with pytest.raises(Exception, match="froze this graph's weights when it compiled"):
        greedy(model, PROMPT, tokens=3)


def test_the_plain_call_keeps_the_weights_as_inputs_by_default():
    model = copy.deepcopy(tiny_model("llama"))
    model.forward = torch.compile(model.forward, backend="actprune", options={"pattern": "8:16"})
    greedy(model, PROMPT, tokens=3)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2)
    reference = copy.deepcopy(model)
    reference.forward = type(reference).forward.__get__(reference)
    with hooked(reference, 8, 16):
        expected = greedy(reference, PROMPT, tokens=5)
    assert greedy(model, PROMPT, tokens=5) == expected  # the changed weight is used: nothing was frozen


def test_the_dense_linears_read_w_rows_at_decode_and_the_packed_weight_at_prefill():
    """A dense model's 15 linears (2 layers x 7 and lm_head): one token each through actprune's dense GEMV,
    16 tokens through the packed GEMM; both equal the eager model."""
    model = copy.deepcopy(tiny_model("llama"))
    compiled = torch.compile(model, backend=inductor_with_nm_lowering)
    with torch.no_grad():
        for ids, used, unused in ((token_ids(1, 1), "dense_gemv", "packed_linear"),
                                  (token_ids(1, 16), "packed_linear", "dense_gemv")):
            got, sources = run_and_get_code(compiled, ids)
            code = "\n".join(sources)
            assert code.count(f"actprune.{used}.default(") == 15 and unused not in code
            torch.testing.assert_close(got.logits, model(ids).logits, rtol=1e-5, atol=1e-5)
