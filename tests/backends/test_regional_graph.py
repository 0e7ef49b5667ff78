"""Regional compilation through the torch.compile backend: Dynamo traces the model whole, and each kind of decoder
layer is compiled by Inductor once and shared by every layer, giving the logits of the whole graph compiled at once
(the tokens of the hooked eager reference, with the KV cache: test_backend.py)."""

import copy

import pytest
import torch
from conftest import PROMPT, char_tokenizer, greedy, tiny_model, token_ids
from reference import hooked

from actprune_compiler import compile_model
from actprune_compiler.backends import dynamo
from actprune_compiler.backends.regional_graph import compile_graph_regions

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
TEXT = "The quick brown fox jumps over the lazy dog. " * 40
CALIBRATION = {"tokenizer": char_tokenizer(), "calib_text": TEXT}


def test_compiled_kinds_do_not_grow_with_depth():
    kinds = {}
    for layers in (2, 6):
        torch._dynamo.reset()
        dynamo.LOG.reset()
        model = compile_model(copy.deepcopy(tiny_model("llama", layers)), {"pattern": "8:16"}, regional=True)
        greedy(model, PROMPT, tokens=6)
        report = dynamo.report(model)
        assert report["rewritten_per_graph"] == [7 * layers] * len(report["rewritten_per_graph"])
        kinds[layers] = [(r["kinds"], r["blocks_per_kind"]) for r in report["regions"]]
    # prefill and decode graphs: before the layers, one kind for every layer, after them
    assert kinds[2] == [(3, [1, 2, 1])] * len(kinds[2]) and kinds[6] == [(3, [1, 6, 1])] * len(kinds[6])


@pytest.mark.parametrize("options", [  # plain magnitude: test_backend.py, against the eager reference
    {"pattern": "8:16", "target": "weight"},  # the weights pruned in place: still graph inputs
    # per-layer constants added by the passes (score scales, corrected biases): each region passes its own
    {"pattern": "8:16", "criterion": "amber", "correction": "variance", "calib_samples": 2, "calib_seqlen": 32},
    {"pattern": "8:16", "skip_sensitive": 2, "calib_samples": 2, "calib_seqlen": 32},  # two layers of another kind
    {"pattern": "8:16", "rotation": "pca", "calib_samples": 2, "calib_seqlen": 32},  # x @ Q: a constant per layer
], ids=["weight", "calibrated", "skip_sensitive", "rotation"])
def test_regional_and_whole_graph_compilation_give_the_same_logits_in_float64(options):
    logits = {}
    for regional in (False, True):
        torch._dynamo.reset()
        dynamo.LOG.reset()
        model = compile_model(copy.deepcopy(tiny_model("qwen2")).double(), options, regional=regional, **CALIBRATION)
        logits[regional] = [model(token_ids(batch, seq)).logits for batch, seq in [(2, 24), (1, 9)]]
        kinds = dynamo.report(model)["regions"]
        assert bool(kinds) is regional
    for got, want in zip(logits[True], logits[False], strict=True):
        assert got.dtype == torch.float64
        # 1e-6, not 1e-12: the rotary tables are computed in float32 even in a float64 model, and the two modes
        # fuse that computation differently; one flipped mask element moves the logits by 1e-3 or more.
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    if options.get("skip_sensitive"):  # a layer with a dense linear differs from the others: a kind of its own
        assert any(r["kinds"] > 3 for r in kinds)


def test_excluded_layers_stay_dense():
    model = copy.deepcopy(tiny_model("llama"))
    with hooked(model, 8, 16, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")):
        expected = greedy(model, PROMPT)
    compile_model(model, {"pattern": "8:16", "exclude": ["down_proj"]}, regional=True)
    assert greedy(model, PROMPT) == expected
    assert all(sorted(g.dense) == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
               for g in dynamo.LOG.graphs)


def test_batch_sizes_and_lengths_reuse_the_compiled_graphs():
    model = copy.deepcopy(tiny_model("qwen2"))
    batch = PROMPT.repeat(2, 1)
    with hooked(model, 8, 16):
        expected = [greedy(model, PROMPT, tokens=4), greedy(model, batch, tokens=4)]
    compile_model(model, {"pattern": "8:16"}, regional=True)
    assert [greedy(model, PROMPT, tokens=4), greedy(model, batch, tokens=4)] == expected
    graphs = dynamo.report(model)["graphs_compiled"]
    greedy(model, PROMPT[:, :5], tokens=6)  # another prompt length: symbolic sizes, nothing recompiles
    assert dynamo.report(model)["graphs_compiled"] == graphs


def test_freezing_is_refused_before_any_work():
    model = copy.deepcopy(tiny_model("llama"))
    with pytest.raises(ValueError, match="their weights stay graph inputs and cannot be frozen"):
        compile_model(model, {"pattern": "8:16"}, freeze=True, regional=True)
    assert "forward" not in vars(model)


def test_a_graph_reading_float_attributes_at_run_time_is_refused():
    """Unspecialised floats (a norm's eps) are read with .item() in the graph, which a region's code cannot do:
    compile_model specialises them; a plain torch.compile without that gets a one-sentence error."""
    seen = []

    def backend(gm, example_inputs):
        with pytest.raises(ValueError, match="needs float attributes specialised"):
            compile_graph_regions(gm, lambda g, inputs: g.forward)
        seen.append(gm)
        return gm.forward

    model = copy.deepcopy(tiny_model("llama"))
    with torch._dynamo.config.patch(specialize_float=False), torch.no_grad():
        torch.compile(model.forward, backend=backend, dynamic=True)(token_ids(1, 8))
    assert seen
