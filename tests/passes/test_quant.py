"""--quant: every linear layer's weight as int8 or int4 rows of W^T, against an independent reference: the
eager model whose weights are replaced by their dequantised values (sparsity/quant.py's quantiser, checked
against the C++ packer in tests/kernels/test_quant_rows.py), masked by tests/reference.py's hooks.

Tolerance of the logits: the compiled program sums in float32 in its own order (and the decode kernel in the
factored form (x * scale) * q + x * min), the reference in float64; over two tiny layers that is a few
float32 ulps of the logits' magnitude (about 1), so 1e-4 absolute is 100 times that and far below what one
wrong code changes."""

import copy
import json
import re

import pytest
import torch
from conftest import PROMPT, tiny_model, token_ids
from reference import hooked
from torch._inductor.utils import run_and_get_code

from actprune_compiler import compile_model, count_ops, sparsify
from actprune_compiler.decode.loop import Decoder
from actprune_compiler.sparsity.config import SparsityConfig
from actprune_compiler.sparsity.quant import dequantized, layer_format, quantize_input

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
FORMATS = ("int8", "int4g32", "int4k32")  # the tiny models' k/v projections have 32 outputs: int4 needs groups of 64


def dequantized_model(model, quant: str):
    """A copy whose every linear layer multiplies by its dequantised weight; lm_head, left dense, in int8a8: int8
    weights, its input quantised per block of 32 (a hook). A tied embedding keeps its rows."""
    model = copy.deepcopy(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            fmt = "int8a8" if name == "lm_head" else quant
            module.weight = torch.nn.Parameter(dequantized(module.weight.detach(), fmt), requires_grad=False)
    model.lm_head.register_forward_pre_hook(lambda module, args: (quantize_input(args[0]),))
    return model


def reference_logits(model, quant: str, ids) -> torch.Tensor:
    reference = dequantized_model(model, quant).double()
    with torch.no_grad(), hooked(reference, 8, 16):
        return reference(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("quant", FORMATS)
def test_the_program_holds_quantised_weights_on_every_linear(family, quant):
    model = tiny_model(family)
    pruned = sparsify(model, SparsityConfig("8:16", quant=quant))
    ops = count_ops(pruned.program.graph)
    assert ops == {"nm_linear": 14, "linear": 0, "quant_linear": 1}  # 2 layers x 7 projections; lm_head
    assert pruned.report["totals"]["quantized"] == 15
    assert [row["quant"] for row in pruned.layers] == [quant] * 14 + ["int8a8"]  # lm_head, left dense
    nm = [n for n in pruned.program.graph.nodes if n.target is torch.ops.actprune.nm_linear.default]
    assert all(n.kwargs["quant"] == quant for n in nm)
    torch.testing.assert_close(pruned.module()(PROMPT).double(), reference_logits(model, quant, PROMPT),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("quant", FORMATS)
@pytest.mark.parametrize("tokens", [1, 7])  # a decode step (the quantised-rows kernel) and a prefill
def test_compiled_logits_match_the_dequantised_reference(family, quant, tokens):
    model = compile_model(copy.deepcopy(tiny_model(family)), SparsityConfig("8:16", quant=quant))
    ids = PROMPT[:, :tokens]
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    expected = reference_logits(tiny_model(family), quant, ids)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    # the quantisation is really there: the float weights' logits lie further away than the tolerance
    float_model = copy.deepcopy(tiny_model(family)).double()
    with torch.no_grad(), hooked(float_model, 8, 16):
        float_logits = float_model(input_ids=ids, use_cache=False).logits
    assert (float_logits - expected).abs().max() > 1e-3


def test_decode_loop_tokens_equal_greedy_of_the_dequantised_model():
    model = copy.deepcopy(tiny_model("llama"))
    model.generation_config.eos_token_id = None
    reference = dequantized_model(model, "int4g32")
    with torch.no_grad(), hooked(reference, 8, 16):
        expected = reference.generate(PROMPT, max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    got = Decoder(model, SparsityConfig("8:16", quant="int4g32"), max_length=64).generate(PROMPT, 20).tokens
    assert got == expected


@pytest.mark.parametrize("changes, fragment", [
    ({"quant": "int3"}, "quant 'int3' is unknown; allowed: none, int8, int4, int4g32, int4k32"),
    ({"quant": "int4", "target": "weight"}, "quant 'int4' quantises the rows of W^T that the activation mask skips"),
    ({"quant": "int8", "correction": "shift_mean"},
     "quant 'int8' needs the decode kernel over kept rows, which correction 'shift_mean' (a per-token shift)"),
])
def test_a_bad_quant_config_is_one_sentence(changes, fragment):
    with pytest.raises(ValueError, match="^" + re.escape(fragment)):
        SparsityConfig("8:16", **changes)


def test_a_format_whose_groups_do_not_fit_a_layer_is_refused_before_the_export():
    with pytest.raises(ValueError, match=r"quant int4 cannot hold layer model.layers.0.self_attn.k_proj: format int4 "
                                         "quantises groups of 64 outputs"):
        sparsify(tiny_model("llama"), SparsityConfig("8:16", quant="int4"))


def test_layers_left_dense_are_checked_in_their_own_format():
    # k_proj and v_proj have 32 outputs: too few for int4's groups of 64, and left dense they take int8a8
    config = SparsityConfig("8:16", modules=("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), quant="int4")
    pruned = sparsify(tiny_model("llama"), config)
    formats = {row["module"].rsplit(".", 1)[-1]: row["quant"] for row in pruned.layers}
    assert formats == {"q_proj": "int4", "k_proj": "int8a8", "v_proj": "int8a8", "o_proj": "int4", "gate_proj": "int4",
                       "up_proj": "int4", "down_proj": "int4", "lm_head": "int8a8"}


def test_a_pruned_layer_refuses_the_format_of_layers_left_dense():
    from actprune_compiler.ops.nm_linear import check_nm_linear_args

    with pytest.raises(ValueError, match="nm_linear: format int8a8 is for layers left dense; a pruned layer's allowed: "
                                         "none, int8, int4, int4g32, int4k32"):
        check_nm_linear_args(torch.zeros(1, 64), torch.zeros(32, 64), 8, 16, "magnitude", "none", "int8a8")


def test_a_dense_layer_whose_input_does_not_split_into_blocks_of_32_takes_int8():
    assert layer_format("int4k32", pruned=False, in_features=576) == "int8a8"
    assert layer_format("int4k32", pruned=False, in_features=48) == "int8"
    assert layer_format("int4k32", pruned=True, in_features=48) == "int4k32"
    assert layer_format("none", pruned=False, in_features=576) == "none"


def test_a_model_that_is_not_float32_is_refused():
    with pytest.raises(ValueError, match="quant 'int8' runs on actprune's float32 CPU kernels, and this model is "
                                         "float64 on cpu"):
        sparsify(copy.deepcopy(tiny_model("llama")).double(), SparsityConfig("8:16", quant="int8"))


def test_a_quantised_artifact_passes_its_check_and_reloads(tiny_dir, tmp_path):
    from actprune_compiler.artifact.folder import load_program
    from actprune_compiler.cli import main

    out = tmp_path / "art"
    args = ["compile", "--model", str(tiny_dir), "--pattern", "8:16", "--quant", "int4g32", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["check"]["passed"] and report["config"]["quant"] == "int4g32"
    assert report["graph_ops"]["quant_linear"] == 1 and "actprune.quant_linear" in (out / "graph.txt").read_text()
    with torch.no_grad():
        got = load_program(out).module()(PROMPT)
    torch.testing.assert_close(got.double(), reference_logits(tiny_model("llama"), "int4g32", PROMPT), rtol=0,
                               atol=1e-4)


@pytest.mark.parametrize("tokens", [1, 16])
def test_lm_head_takes_int8_dot_products_at_decode_and_its_quantised_input_at_prefill(tokens):
    """One token: lm_head calls actprune::int8_gemv, the projections the quantised-rows kernel; 16 tokens: neither,
    lm_head's input is quantised in the graph. Both equal the dequantised reference."""
    model = compile_model(copy.deepcopy(tiny_model("llama")), SparsityConfig("8:16", quant="int4k32"))
    ids = token_ids(1, tokens)
    with torch.no_grad():
        got, sources = run_and_get_code(lambda: model(input_ids=ids, use_cache=False).logits)
    code = "\n".join(sources)
    assert code.count("actprune.int8_gemv.default(") == (tokens == 1)
    assert code.count("actprune.quant_rows_linear.default(") == (14 if tokens == 1 else 0)
    torch.testing.assert_close(got.double(), reference_logits(tiny_model("llama"), "int4k32", ids), rtol=0, atol=1e-4)
