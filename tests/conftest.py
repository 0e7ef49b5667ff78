import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import actprune_compiler  # noqa: F401

# Hypothesis tests here check properties, not speed: a loaded 2-core CI machine must not fail them
# for generating inputs slowly or for one slow example.
settings.register_profile("actprune", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("actprune")

# The cores this run may use (taskset), shared among pytest-xdist's workers when there are several.
torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

FAMILIES = ("llama", "qwen2", "gemma3")


@functools.cache
def tiny_model(family: str, layers: int = 2):
    """A small random model of the family; every in_features is a multiple of 32."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed({"llama": 0, "qwen2": 1, "gemma3": 2}[family])
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        for name, p in model.named_parameters():  # random init leaves biases at 0: make them count
            if name.endswith("bias"):
                torch.nn.init.normal_(p, std=0.5)
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=16, sliding_window=8))
    return model.eval()


@functools.cache
def tiny_program(family: str):
    return actprune_compiler.export_causal_lm(tiny_model(family))


PROMPT = torch.tensor([[5, 17, 42, 99, 3, 64, 8]])


def greedy(model, ids=PROMPT, tokens=20):
    """Greedy continuation with the KV cache: the generated token ids."""
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              pad_token_id=0)[0, ids.shape[1]:].tolist()


@pytest.fixture
def fresh_dynamo():
    """No compiled graph, backend log or cached W^T carried over from another test."""
    from actprune_compiler.backends import dynamo
    from actprune_compiler.kernels import cpu

    torch._dynamo.reset()
    dynamo.LOG.reset()
    cpu.clear_cache()
    yield
    torch._dynamo.reset()


def token_ids(batch=2, seq=24, vocab=128, seed=0):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@functools.cache
def char_tokenizer():
    """A character-level tokenizer (99 ids, fits the tiny models' vocab of 128); no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def save_tiny(folder, family: str = "llama"):
    """The tiny model and the character tokenizer as a save_pretrained() folder (what loads by path)."""
    tiny_model(family).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny Llama and its tokenizer, saved where HFLM and load_model find a string `pretrained`."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def data_dir():
    """The evaluation data folder (the project's data/ unless $ACTPRUNE_DATA_DIR says otherwise).

    Fails, never skips, when the data is not there: a clone ships it, so missing data is a bug that CI must see.
    """
    from actprune_compiler.eval.data import TASK_FILES, WIKITEXT_DIR, find_data_dir, where_data_goes

    root = find_data_dir()
    needed = [f"{WIKITEXT_DIR}/test", f"{WIKITEXT_DIR}/validation",
              *(f for task in ("arc_easy", "boolq", "piqa", "winogrande") for f in TASK_FILES[task])]
    missing = needed if root is None else [rel for rel in needed if not (root / rel).exists()]
    if missing:
        pytest.fail(f"evaluation data not found ({', '.join(missing)} under {root or 'no data folder'}): "
                    f"it goes in {where_data_goes()}", pytrace=False)
    return root


# For tests that do not take the path: @needs_data fails (not skips) like the fixture.
needs_data = pytest.mark.usefixtures("data_dir")
