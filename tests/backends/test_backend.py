import copy
import logging

import pytest
import torch
from conftest import PROMPT, greedy, tiny_model
from reference import hooked

from actprune_compiler import SparsityConfig, compile_model
from actprune_compiler.backends import dynamo

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
@pytest.mark.parametrize("n,m", [(2, 4), (8, 16)])
def test_generate_with_kv_cache_matches_hooked_eager_reference(family, n, m, regional):
    model = copy.deepcopy(tiny_model(family))
    with hooked(model, n, m):
        expected = greedy(model, PROMPT)
    assert expected != greedy(model, PROMPT)  # pruning changes the continuation: the test can fail
    compile_model(model, {"pattern": f"{n}:{m}"}, regional=regional)
    assert greedy(model, PROMPT) == expected
    report = dynamo.report(model)
    assert report["ran_outside_rewritten_graphs"] == [] and report["matching_linears"] == 14
    assert all(count == 14 for count in report["rewritten_per_graph"])  # prefill and decode graphs
    assert report["graph_breaks"] == 0
    # regional: each graph is cut into the part before the layers, the 2 layers and the part after them
    assert [r["regions"] for r in report["regions"]] == ([4] * len(report["regions"]) if regional else [])
    assert bool(report["regions"]) is regional


def test_recompilation_is_bounded_across_lengths():
    model = compile_model(copy.deepcopy(tiny_model("llama")), {"pattern": "8:16"})
    greedy(model, PROMPT, tokens=20)
    after_first = dynamo.report()["graphs_compiled"]
    # prefill (symbolic length) and decode (symbolic cache length): the first decode step shares the
    # later steps' graph because the cache is made contiguous after the prefill (inductor.contiguous_cache)
    assert after_first == 2
    for length in (4, 11, 23):
        greedy(model, torch.arange(3, 3 + length).unsqueeze(0), tokens=12)
    assert dynamo.report()["graphs_compiled"] == after_first  # new prompt lengths reuse the graphs


def test_two_configs_in_one_process_keep_their_own_graphs():
    base = tiny_model("llama")
    results = {}
    for pattern in ("2:4", "8:16"):
        model = compile_model(copy.deepcopy(base), {"pattern": pattern})
        results[pattern] = greedy(model, PROMPT, tokens=12)
    for pattern, (n, m) in (("2:4", (2, 4)), ("8:16", (8, 16))):
        reference = copy.deepcopy(base)
        with hooked(reference, n, m):
            assert results[pattern] == greedy(reference, PROMPT, tokens=12)
    assert results["2:4"] != results["8:16"]


def test_plain_torch_compile_with_the_backend_name():
    model = copy.deepcopy(tiny_model("qwen2"))
    compiled = torch.compile(model, backend="actprune", options={"pattern": "4:8"})
    ids = PROMPT.repeat(2, 1)
    with torch.no_grad(), hooked(tiny_model("qwen2"), 4, 8):
        expected = tiny_model("qwen2")(input_ids=ids, use_cache=False).logits
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids, use_cache=False).logits, expected, rtol=1e-4, atol=1e-4)


def test_weight_target_prunes_the_parameters_once_and_says_so(caplog):
    model = copy.deepcopy(tiny_model("llama"))
    with caplog.at_level(logging.WARNING, logger="actprune"):
        compile_model(model, SparsityConfig("2:4", target="weight"), inner_backend="eager")
        greedy(model, PROMPT, tokens=5)
    assert "pruned the weights of 14 linear layers in place (2:4 wt)" in caplog.text
    q = model.model.layers[0].self_attn.q_proj.weight
    assert (q.reshape(64, -1, 4) != 0).sum(-1).eq(2).all()
    assert model.lm_head.weight.count_nonzero() == model.lm_head.weight.numel()
    model.forward = model.forward.__wrapped__._torchdynamo_orig_callable  # the same weights, another pattern
    compile_model(model, {"pattern": "8:16", "target": "weight"})
    with pytest.raises(Exception, match="already pruned in place with '2:4 wt'"):
        greedy(model, PROMPT, tokens=2)


@pytest.mark.parametrize("config,options,match", [
    ({"pattern": "8:16"}, {"inner_backend": "tvm"}, "inner_backend 'tvm' is unknown; allowed: inductor, eager"),
    ({"pattern": "8:16", "sparsity": 0.5}, {}, r"unknown SparsityConfig fields \['sparsity'\]"),
    ({"pattern": "3:2"}, {}, "pattern '3:2' is invalid"),
    # the backend's options are compile_model's keywords: one in the config dict would have been overwritten
    ({"pattern": "8:16", "freeze": True}, {}, r"freeze is an option of compile_model, not a SparsityConfig field: "
                                              r"pass it as compile_model\(model, config, freeze=...\)"),
    ({"pattern": "8:16", "regional": True}, {"regional": False}, "regional is an option of compile_model"),
])
def test_bad_options_fail_when_compiling(config, options, match):
    model = copy.deepcopy(tiny_model("llama"))
    with pytest.raises(ValueError, match=match):
        compile_model(model, config, **options)
    assert "forward" not in vars(model)  # refused before anything was compiled


def test_the_plain_backend_options_keep_their_meaning():
    """The torch.compile options dict still takes the backend's options beside the config's fields."""
    from actprune_compiler.backends.dynamo import parse_options

    parsed = parse_options({"pattern": "8:16", "inner_backend": "eager", "regional": True})
    assert (parsed.config, parsed.inner, parsed.regional, parsed.freeze) == (SparsityConfig("8:16"), "eager", True,
                                                                             False)


CALIB_TEXT = "Calibration text for a tiny model, with some variety: 0123456789. " * 40


@pytest.mark.parametrize("options,match", [
    ({"pattern": "8:16", "criterion": "clact_static"}, "needs calibration statistics: pass tokenizer"),
    ({"pattern": "8:16", "skip_sensitive": 2}, r"needs a sensitivity ranking \(skip_sensitive=2\): pass tokenizer"),
])
def test_options_that_need_calibration_fail_at_compile_model_without_text(options, match):
    with pytest.raises(ValueError, match=match):
        compile_model(copy.deepcopy(tiny_model("llama")), options)


def test_the_plain_backend_refuses_calibrated_options_with_a_sentence():
    from actprune_compiler.backends.dynamo import parse_options

    with pytest.raises(ValueError, match="needs calibration statistics, which the backend cannot gather"):
        parse_options({"pattern": "8:16", "correction": "bias"})


def test_compile_model_calibrates_and_matches_the_exported_program():
    from conftest import char_tokenizer

    from actprune_compiler import sparsify

    options = {"pattern": "8:16", "criterion": "clact_static", "correction": "shift_static", "calib_samples": 4,
               "calib_seqlen": 64}
    model = copy.deepcopy(tiny_model("llama"))
    reference = sparsify(model, SparsityConfig(**options), tokenizer=char_tokenizer(), calib_text=CALIB_TEXT)
    compile_model(model, options, tokenizer=char_tokenizer(), calib_text=CALIB_TEXT)
    ids = PROMPT.repeat(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, reference.module()(ids),
                                   rtol=1e-4, atol=1e-4)


def test_skip_sensitive_through_compile_model_keeps_those_layers_dense():
    from conftest import char_tokenizer

    model = copy.deepcopy(tiny_model("llama"))
    compile_model(model, {"pattern": "2:4", "skip_sensitive": 3, "calib_samples": 2, "calib_seqlen": 64},
                  tokenizer=char_tokenizer(), calib_text=CALIB_TEXT)
    greedy(model, PROMPT, tokens=3)
    assert set(dynamo.report()["rewritten_per_graph"]) == {11}


@pytest.mark.parametrize("keep_dense,match", [("model.layers.0.mlp.down_proj", "keep_dense must be a list"),
                                              (["model.layers.9.mlp.down_proj"], "not linear layers of this model")])
def test_bad_keep_dense_is_refused(keep_dense, match):
    with pytest.raises(ValueError, match=match):
        compile_model(copy.deepcopy(tiny_model("llama")), SparsityConfig("8:16"), keep_dense=keep_dense)


def test_a_static_kv_cache_is_written_through_the_backend(family):
    """HF's StaticCache writes keys and values with index_copy_, whose result nobody reads: the passes'
    dead-code elimination must keep it, or every later token attends to an empty cache."""
    model = copy.deepcopy(tiny_model(family))
    with hooked(model, 8, 16), torch.no_grad():
        expected = model.generate(PROMPT, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                                  cache_implementation="static")[0, PROMPT.shape[1]:].tolist()
    model.forward = torch.compile(model.forward, backend="actprune",
                                  options={"pattern": "8:16", "freeze": False, "inner_backend": "eager"})
    with torch.no_grad():
        got = model.generate(PROMPT, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                             cache_implementation="static")[0, PROMPT.shape[1]:].tolist()
    assert got == expected
