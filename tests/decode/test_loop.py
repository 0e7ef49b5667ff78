import copy

import pytest
import torch
from conftest import PROMPT, tiny_model
from reference import hooked

from actprune_compiler.backends.dynamo import actprune_backend
from actprune_compiler.decode.loop import Decoder
from actprune_compiler.sparsity.config import SparsityConfig

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
TOKENS = 20  # past the tiny Gemma's sliding window of 8


def config(pattern: str | None) -> SparsityConfig | None:
    return SparsityConfig(pattern) if pattern else None


def without_eos(model):
    """A copy whose end-of-sequence token is an ordinary one: Hugging Face generates a fixed number of tokens
    without suppressing it, as the loop does when it is given no eos_token_id."""
    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = None
    return model


def greedy(model, prompt=PROMPT, tokens=TOKENS) -> list[int]:
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def expected_tokens(model, pattern: str | None) -> list[int]:
    """Hugging Face's greedy generation (dynamic cache) of the eager model, masked by the independent reference."""
    if pattern is None:
        return greedy(model)
    n, m = (int(v) for v in pattern.split(":"))
    with hooked(model, n, m):
        return greedy(model)


@pytest.mark.parametrize("pattern", [None, "2:4", "8:16"])
def test_greedy_tokens_equal_hugging_face_greedy_float64(family, pattern):
    model = without_eos(tiny_model(family)).double()
    expected = expected_tokens(model, pattern)
    decoder = Decoder(model, config(pattern), max_length=64)
    assert decoder.generate(PROMPT, TOKENS).tokens == expected


def test_greedy_tokens_equal_hugging_face_greedy_float32():
    model = without_eos(tiny_model("llama"))
    expected = expected_tokens(model, "8:16")
    assert expected != expected_tokens(model, None)  # pruning changes the continuation: the test can fail
    assert Decoder(model, config("8:16"), max_length=64).generate(PROMPT, TOKENS).tokens == expected


def test_the_step_compiles_once_for_every_prompt_and_call():
    model = without_eos(tiny_model("qwen2")).double()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return actprune_backend(gm, example_inputs, {"pattern": "8:16", "inner_backend": "eager"})

    decoder = Decoder(model, backend=counting, max_length=64)
    first = decoder.generate(PROMPT, TOKENS)
    step = decoder.step
    for length in (1, 5, 30):
        prompt = torch.arange(3, 3 + length).unsqueeze(0)
        got = decoder.generate(prompt, 12).tokens
        with hooked(model, 8, 16):
            assert got == greedy(model, prompt, 12)
    assert decoder.step is step and first.compile_s > 0
    assert decoder.generate(PROMPT, TOKENS).compile_s == 0 and len(graphs) == 1


def test_a_replaced_parameter_makes_the_step_trace_again():
    model = without_eos(tiny_model("llama")).double()
    decoder = Decoder(model, max_length=64)
    decoder.generate(PROMPT, 4)
    layer = model.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 3)  # a new object: the old graph would read the old one
    assert decoder.generate(PROMPT, TOKENS).tokens == greedy(model)


def test_eos_stops_the_generation():
    model = without_eos(tiny_model("llama")).double()
    tokens = greedy(model)
    eos = tokens[5]
    got = Decoder(model, max_length=64).generate(PROMPT, TOKENS, eos_token_id=eos).tokens
    assert got == tokens[: tokens.index(eos) + 1]


@pytest.mark.parametrize("prompt,new,message", [
    (torch.zeros(2, 3, dtype=torch.long), 4, "one non-empty prompt"),
    (torch.zeros(1, 0, dtype=torch.long), 4, "one non-empty prompt"),
    (torch.zeros(1, 60, dtype=torch.long), 10, "need 70 positions"),
    (torch.zeros(1, 3, dtype=torch.long), 0, "at least 1"),
])
def test_bad_generation_requests_are_refused_in_a_sentence(prompt, new, message):
    decoder = Decoder(copy.deepcopy(tiny_model("llama")), max_length=64)
    with pytest.raises(ValueError, match=message):
        decoder.generate(prompt, new)
    assert decoder.step is None  # refused before anything was compiled


def test_a_cache_longer_than_the_model_is_refused():
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        Decoder(tiny_model("llama"), max_length=257)


def test_the_front_door_keeps_one_decoder_per_model_and_config():
    from actprune_compiler import generate

    model = without_eos(tiny_model("gemma3")).double()
    first = generate(model, PROMPT, TOKENS, config("8:16"))
    again = generate(model, PROMPT[:, :3], 5, config("8:16"))
    assert first.compile_s > 0 and again.compile_s == 0  # the same compiled step, another prompt
    assert first.tokens == expected_tokens(model, "8:16")
    assert generate(model, PROMPT, TOKENS).tokens == expected_tokens(model, None)  # dense: a decoder of its own


def test_calibrated_and_learned_values_reach_the_step_by_their_module_paths(monkeypatch):
    """The step traces the model as an argument, so its layers keep their own paths: the statistics of a
    calibrated criterion and a recovery method's learned values are found for every layer, and the tokens are
    those of compile_model's graphs, which the backend has rewritten since before the decode loop."""
    from conftest import char_tokenizer

    from actprune_compiler import compile_model
    from actprune_compiler.backends import dynamo

    monkeypatch.setenv("ACTPRUNE_NO_RECOVERY_CACHE", "1")  # train here, not into the user's store
    text = "Calibration text for a tiny model, with some variety: 0123456789. " * 40
    config = SparsityConfig("8:16", criterion="clact_static", recovery="offset", recovery_steps=2,
                            calib_samples=2, calib_seqlen=64)
    model = without_eos(tiny_model("llama")).double()
    options = {"tokenizer": char_tokenizer(), "calib_text": text}
    reference = compile_model(copy.deepcopy(model), config, **options)
    expected = greedy(reference)
    dynamo.LOG.reset()
    assert Decoder(model, config, max_length=64, **options).generate(PROMPT, TOKENS).tokens == expected
    assert dynamo.report(model)["ran_outside_rewritten_graphs"] == []


def test_more_decoders_than_dynamo_recompiles_a_function(monkeypatch):
    """Each step is a code object of its own: the tenth decoder in a process still compiles its step."""
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    model = without_eos(tiny_model("llama")).double()
    expected = expected_tokens(model, "8:16")
    for _ in range(torch._dynamo.config.recompile_limit + 2):
        decoder = Decoder(model, config("8:16"), max_length=64, inner_backend="eager")
        assert decoder.generate(PROMPT, TOKENS).tokens == expected


def test_the_step_with_its_calls_in_cpp_gives_the_same_tokens():
    model = without_eos(tiny_model("llama"))
    expected = expected_tokens(model, "8:16")
    decoder = Decoder(model, config("8:16"), max_length=64, cpp_wrapper=True)
    assert decoder.generate(PROMPT, TOKENS).tokens == expected
