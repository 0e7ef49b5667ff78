"""Regional compilation through the torch.compile backend: the modules inside the decoder layers are compiled
once per kind and shared by every layer, with the KV cache, giving the tokens of the hooked eager reference."""

import copy

import pytest
import torch
from conftest import PROMPT, char_tokenizer, greedy, tiny_model
from reference import hooked

from actprune_compiler import SparsityConfig, compile_model
from actprune_compiler.backends import dynamo
from actprune_compiler.backends.regional_modules import unit_of, units

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


@pytest.mark.parametrize("n,m", [(2, 4), (8, 16)])
def test_regional_generate_matches_hooked_eager_reference(family, n, m):
    model = copy.deepcopy(tiny_model(family))
    with hooked(model, n, m):
        expected = greedy(model, PROMPT)
    assert expected != greedy(model, PROMPT)  # pruning changes the continuation: the test can fail
    compile_model(model, {"pattern": f"{n}:{m}"}, regional=True)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never an eager layer in disguise
        assert greedy(model, PROMPT) == expected
    report = dynamo.report(model)
    assert report["ran_outside_rewritten_graphs"] == [] and report["matching_linears"] == 14
    assert report["regional_units"] == 2 * 5  # per layer: the MLP and the four attention projections


def test_compiled_graphs_do_not_grow_with_depth():
    graphs = {}
    for layers in (2, 6):
        torch._dynamo.reset()
        dynamo.LOG.reset()
        model = compile_model(copy.deepcopy(tiny_model("llama", layers)), {"pattern": "8:16"}, regional=True)
        greedy(model, PROMPT, tokens=6)
        graphs[layers] = dynamo.report()["rewritten_per_graph"]
    # prefill and decode graphs of the MLP (3 linears) and of the two projection shapes (64->64, 64->32)
    assert sorted(graphs[2]) == sorted(graphs[6]) == [1, 1, 1, 1, 3, 3]


def test_an_unpruned_linear_splits_its_module_into_linears():
    model = tiny_model("llama")
    pruned = {name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
              and "lm_head" not in name and not name.endswith("mlp.down_proj")}
    found = units(model, pruned)
    for layer in ("model.layers.0", "model.layers.1"):
        assert {f"{layer}.{p}" for p in PROJECTIONS + ("mlp.gate_proj", "mlp.up_proj")} <= set(found)
        assert f"{layer}.mlp" not in found and f"{layer}.mlp.down_proj" not in found
    assert not any(path.endswith(("self_attn", "layers.0", "layers.1")) for path in found)  # they take the cache


def test_excluded_layers_stay_dense_and_eager():
    model = copy.deepcopy(tiny_model("llama"))
    with hooked(model, 8, 16, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")):
        expected = greedy(model, PROMPT)
    compile_model(model, {"pattern": "8:16", "exclude": ["down_proj"]}, regional=True)
    assert greedy(model, PROMPT) == expected
    assert not any(path.endswith(("mlp", "down_proj")) for path in model.actprune_units)


def test_skip_sensitive_keeps_the_ranked_layers_dense_and_eager():
    model = copy.deepcopy(tiny_model("llama"))
    compile_model(model, {"pattern": "8:16", "skip_sensitive": 2, "calib_samples": 2, "calib_seqlen": 32},
                  tokenizer=char_tokenizer(), calib_text="The quick brown fox jumps over the lazy dog. " * 40,
                  regional=True)
    greedy(model, PROMPT, tokens=4)
    projections = [name for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
                   and "lm_head" not in name]
    outside = [name for name in projections if unit_of(name, model.actprune_units) is None]
    assert len(outside) == 2  # the two most sensitive linears: in no unit, so they run dense
    assert sorted(dynamo.report(model)["ran_outside_rewritten_graphs"]) == sorted(outside)


def test_a_unit_that_runs_eagerly_is_reported():
    model = compile_model(copy.deepcopy(tiny_model("llama")), {"pattern": "8:16"}, regional=True)
    greedy(model, PROMPT, tokens=4)
    assert dynamo.report(model)["ran_outside_rewritten_graphs"] == []
    del model.model.layers[1].self_attn.q_proj.forward  # back to the eager nn.Linear.forward
    model.actprune_units.remove("model.layers.1.self_attn.q_proj")
    assert dynamo.report(model)["ran_outside_rewritten_graphs"] == ["model.layers.1.self_attn.q_proj"]


def test_three_projection_kinds_at_two_batch_sizes_stay_compiled():
    """Qwen2's q (bias), k/v (bias, narrower) and o (no bias) share nn.Linear.forward: with batches of 1 and 2,
    prefill and decode, that is 12 graphs of one code object, past Dynamo's default limit of 8."""
    model = copy.deepcopy(tiny_model("qwen2"))
    batch = PROMPT.repeat(2, 1)
    with hooked(model, 8, 16):
        expected = [greedy(model, PROMPT, tokens=4), greedy(model, batch, tokens=4)]
    compile_model(model, {"pattern": "8:16"}, regional=True)
    assert [greedy(model, PROMPT, tokens=4), greedy(model, batch, tokens=4)] == expected
    assert dynamo.report(model)["graphs_compiled"] > 8


@pytest.mark.parametrize("options, freeze, match", [
    ({"pattern": "8:16", "target": "weight"}, False, "weight target"),
    ({"pattern": "8:16", "criterion": "clact_static"}, False, "calibration statistics"),
    ({"pattern": "8:16", "correction": "bias"}, False, "calibration statistics"),
    ({"pattern": "8:16", "criterion": "wina"}, False, "each layer's own weights"),
    ({"pattern": "8:16", "criterion": "amber"}, False, "each layer's own weights"),
    ({"pattern": "8:16"}, True, "freezing"),
])
def test_per_layer_values_are_refused_before_any_work(options, freeze, match):
    model = copy.deepcopy(tiny_model("llama"))
    with pytest.raises(ValueError, match=f"regional compilation shares one compiled graph.*{match}"):
        compile_model(model, options, freeze=freeze, regional=True)
    assert not hasattr(model, "actprune_units") and "forward" not in vars(model.model.layers[0].mlp)


def test_recovery_is_refused_regionally():
    with pytest.raises(ValueError, match="recovery 'offset' learns values for each layer"):
        compile_model(copy.deepcopy(tiny_model("llama")), {"pattern": "8:16", "recovery": "offset"}, regional=True)


def test_nothing_to_prune_is_an_error():
    config = SparsityConfig("8:16", modules=("no_such_proj",))
    with pytest.raises(ValueError, match="no linear layer of this model is pruned by"):
        compile_model(copy.deepcopy(tiny_model("llama")), config.to_dict(), regional=True)
