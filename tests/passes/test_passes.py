import copy

import pytest
import torch
from conftest import tiny_model, tiny_program, token_ids
from reference import reference_logits

from actprune_compiler import SparsityConfig, count_ops, sparsify
from actprune_compiler.sparsity.weights import prune_weight

PATTERNS = [(2, 4), (4, 8), (8, 16), (16, 32)]


@pytest.mark.parametrize("n,m", PATTERNS)
def test_activation_rewrite_matches_hooked_eager_reference(family, n, m):
    model, ids = tiny_model(family), token_ids()
    result = sparsify(tiny_program(family), SparsityConfig(f"{n}:{m}"))
    assert result.replaced == 7 * model.config.num_hidden_layers
    assert count_ops(result.program.graph) == {"nm_linear": 14, "linear": 1}  # lm_head stays dense
    with torch.no_grad():
        got = result.module()(ids)
    torch.testing.assert_close(got, reference_logits(model, ids, n, m), rtol=0, atol=1e-5)


def test_seed_compat_drops_the_bias_of_pruned_layers_as_the_seed_does():
    """Qwen2's q/k/v have biases: the seed's module swap computes x·Wᵀ without them."""
    model, ids = tiny_model("qwen2"), token_ids()
    seed = copy.deepcopy(model)
    for name, module in seed.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None and "lm_head" not in name:
            module.bias = None
    result = sparsify(tiny_program("qwen2"), SparsityConfig("8:16", drop_bias=True))
    nm_linear = torch.ops.actprune.nm_linear.default
    biases = [node.args[2] for node in result.program.graph.nodes if node.target == nm_linear]
    assert len(biases) == 14 and biases.count(None) == 14
    with torch.no_grad():
        got = result.module()(ids)
    torch.testing.assert_close(got, reference_logits(seed, ids, 8, 16), rtol=0, atol=1e-5)
    kept = sparsify(tiny_program("qwen2"), SparsityConfig("8:16")).module()(ids)
    assert (kept - got).abs().max() > 1e-2  # the default keeps the bias: a different model
    assert SparsityConfig("8:16", drop_bias=True).label == "8:16 seed-compat (no bias)"
    with pytest.raises(ValueError, match="use drop_bias with target 'activation' only"):
        SparsityConfig("8:16", target="weight", drop_bias=True)


def test_the_reference_is_not_the_dense_model(family):
    model, ids = tiny_model(family), token_ids()
    with torch.no_grad():
        dense = model(input_ids=ids, use_cache=False).logits
    assert (dense - reference_logits(model, ids, 2, 4)).abs().max() > 1e-2


def test_unstructured_ratio_is_top_half_of_each_row(family):
    model, ids = tiny_model(family), token_ids()
    result = sparsify(tiny_program(family), SparsityConfig("50%"))
    assert {r["decision"] for r in result.layers if r["decision"] != "dense: not matched by modules"} == {
        "activation 32:64", "activation 64:128"}
    with torch.no_grad():
        got = result.module()(ids)
    torch.testing.assert_close(got, reference_logits(model, ids, 0.5, None), rtol=0, atol=1e-5)


def test_nodes_carry_pattern_criterion_and_module_path():
    result = sparsify(tiny_program("llama"), SparsityConfig("8:16"))
    nodes = [n for n in result.program.graph.nodes if n.target is torch.ops.actprune.nm_linear.default]
    assert [n.args[3:5] for n in nodes] == [(8, 16)] * 14
    assert nodes[0].kwargs["criterion"] == "magnitude"
    assert nodes[0].meta["actprune"]["module"] == "model.layers.0.self_attn.q_proj"
    assert all("val" in n.meta for n in nodes)
    assert not [n for n in result.program.graph.nodes if n.target is torch.ops.aten.linear.default
                and "layers" in n.meta["nn_module_stack"].__repr__()]


def test_the_input_program_is_left_untouched():
    program = tiny_program("llama")
    before = count_ops(program.graph)
    sparsify(program, SparsityConfig("2:4"))
    sparsify(program, SparsityConfig("2:4", target="weight"))
    assert count_ops(program.graph) == before == {"nm_linear": 0, "linear": 15}


def test_module_filter_exclude_and_lm_head_by_name():
    program = tiny_program("llama")
    mlp_only = sparsify(program, SparsityConfig("2:4", modules=("model.layers.*.mlp.*",), exclude=("*.1.*",)))
    assert mlp_only.replaced == 3
    assert {r["module"] for r in mlp_only.layers if r["decision"] == "dense: excluded"} == {
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}
    with_head = sparsify(program, SparsityConfig("2:4", modules=("q_proj", "lm_head")))
    assert with_head.replaced == 3 and count_ops(with_head.program.graph) == {"nm_linear": 3, "linear": 12}


def test_layer_whose_features_do_not_divide_by_m_is_rejected_by_name():
    from transformers import LlamaConfig, LlamaForCausalLM

    from actprune_compiler import export_causal_lm

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=80, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with pytest.raises(ValueError, match=r"layer model.layers.0.mlp.down_proj has 80 input features, not a "
                                         r"multiple of M=32 .* exclude='model.layers.0.mlp.down_proj'"):
        sparsify(export_causal_lm(model), SparsityConfig("16:32"))


def test_a_module_filter_that_matches_nothing_is_an_error_naming_the_layers():
    with pytest.raises(ValueError, match=r"modules q-proj match none of the 15 linear layers; their names are "
                                         r"down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        sparsify(tiny_program("llama"), SparsityConfig("8:16", modules=("q-proj",)))


@pytest.mark.parametrize("ratio,message", [("99.99%", "keeps 0 of the 64 input features of layer "
                                                      "model.layers.0.self_attn.q_proj, which is nothing"),
                                           ("0.01%", "keeps 64 of the 64 input features of layer "
                                                     "model.layers.0.self_attn.q_proj, which is no sparsity")])
def test_unstructured_ratios_that_keep_all_or_nothing_are_rejected(ratio, message):
    with pytest.raises(ValueError, match=f"pattern {ratio} {message}"):
        sparsify(tiny_program("llama"), SparsityConfig(ratio))


def test_excluding_every_matched_layer_is_an_error_not_a_dense_program():
    with pytest.raises(ValueError, match="exclude model.layers.\\* .* leave none of the 14 layers that modules match"):
        sparsify(tiny_program("llama"), SparsityConfig("8:16", exclude=("model.layers.*",)))


def test_layers_chosen_as_sensitive_stay_dense_with_their_reason():
    keep = frozenset({"model.layers.0.mlp.down_proj"})
    from actprune_compiler.export import WRAPPER_PREFIX
    from actprune_compiler.passes import run_passes
    from actprune_compiler.passes.graph_host import ExportedProgramHost

    program = copy.deepcopy(tiny_program("llama"))
    rows = run_passes(ExportedProgramHost(program, WRAPPER_PREFIX), SparsityConfig("8:16"), keep_dense=keep)
    row = next(r for r in rows if r["module"] in keep)
    assert row["decision"] == "dense: sensitive" and row["decided"] == {"action": "dense", "reason": "sensitive"}
    assert count_ops(program.graph) == {"nm_linear": 13, "linear": 2}


@pytest.mark.parametrize("n,m", PATTERNS)
def test_weight_fold_keeps_exactly_n_per_group_and_leaves_plain_linears(family, n, m):
    model, ids = tiny_model(family), token_ids()
    result = sparsify(tiny_program(family), SparsityConfig(f"{n}:{m}", target="weight"))
    assert count_ops(result.program.graph) == {"nm_linear": 0, "linear": 15}
    assert result.replaced == 14
    pruned_model = copy.deepcopy(model)
    for name, module in pruned_model.named_modules():
        if name.rsplit(".", 1)[-1].endswith("_proj"):
            weight = result.program.state_dict[f"lm.{name}.weight"]
            kept = (weight.reshape(weight.shape[0], -1, m) != 0).sum(-1)
            assert (kept == n).all(), name
            # Independent check: the kept weights are the n largest |W| of each group.
            group = module.weight.detach().abs().reshape(weight.shape[0], -1, m)
            threshold = group.sort(-1, descending=True).values[..., n - 1 : n]
            assert ((weight.reshape_as(group).abs() >= threshold) | (weight.reshape_as(group) == 0)).all()
            module.weight.data = weight.clone()
    assert result.program.state_dict["lm.lm_head.weight"].count_nonzero() == model.lm_head.weight.count_nonzero()
    with torch.no_grad():
        torch.testing.assert_close(result.module()(ids), pruned_model(input_ids=ids, use_cache=False).logits,
                                   rtol=0, atol=1e-5)


def test_tied_lm_head_weight_pruned_alone_leaves_the_embedding_dense():
    model = tiny_model("gemma3")  # Gemma ties lm_head to the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = sparsify(tiny_program("gemma3"), SparsityConfig("2:4", target="weight", modules=("lm_head",)))
    embedding = result.program.state_dict["lm.model.embed_tokens.weight"]
    assert torch.equal(embedding, model.model.embed_tokens.weight)
    pruned = [v for k, v in result.program.constants.items() if k.startswith("actprune.")]
    assert len(pruned) == 1
    assert (pruned[0][1:].reshape(127, -1, 4) != 0).sum(-1).eq(2).all()  # row 0 is the all-zero padding token


def test_prune_weight_helper_counts():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    assert (prune_weight(w, 4, 8, "magnitude", None).reshape(8, 4, 8) != 0).sum(-1).eq(4).all()
