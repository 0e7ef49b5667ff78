"""actprune compile's check compares a few compiled layers with the reference in float64, and fails
when the lowering is wrong."""

import pytest
import torch
from conftest import tiny_program

from actprune_compiler import SparsityConfig, sparsify
from actprune_compiler.artifact.check import check_program
from actprune_compiler.lowering import inductor as lowering


@pytest.fixture(autouse=True)
def fresh():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_check_passes_on_a_correct_lowering():
    result = check_program(sparsify(tiny_program("llama"), SparsityConfig("8:16")))
    assert result["passed"] and result["max_relative_diff"] < 1e-12
    assert result["layers"] == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                                "model.layers.1.mlp.down_proj"]
    assert result["line"].startswith("check: 3 of 14 rewritten layers")


def test_the_check_fails_when_the_lowering_keeps_the_wrong_features(monkeypatch):
    right = lowering.nm_linear_decomposed

    def keeps_one_too_few(x, weight, bias, n, m, *args, **kwargs):
        return right(x, weight, bias, n - 1, m, *args, **kwargs)

    monkeypatch.setattr(lowering, "nm_linear_decomposed", keeps_one_too_few)
    # Inductor's caches would hand back the correct code compiled earlier: their key hashes the lowering's
    # source files, which a patch in memory does not change
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        result = check_program(sparsify(tiny_program("llama"), SparsityConfig("8:16")))
    assert not result["passed"] and result["max_relative_diff"] > 1e-3
    assert "DIFFER FROM the reference" in result["line"]


def test_weight_targets_count_the_kept_weights_per_group():
    result = check_program(sparsify(tiny_program("qwen2"), SparsityConfig("2:4", target="weight")))
    assert result["passed"] and result["layers"] == 14
