"""The dequantised copy of a GGUF model: written once, keyed by the file's checksum and the dtype,
and loaded back to the same weights."""

import copy

import pytest
import torch
from conftest import char_tokenizer, tiny_model

from actprune_compiler.models import gguf as gguf_copy


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_copy, "CACHE_DIR", tmp_path / "cache")
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"stands in for a GGUF file: only its checksum is read here")
    return path


def make_loader(calls):
    """The GGUF route returns the tiny model (what dequantising would give); a folder is read for real."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(folder, gguf_name):
        calls.append(gguf_name)
        if gguf_name is not None:
            return copy.deepcopy(tiny_model("llama")), char_tokenizer()
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)

    return load


def test_second_load_reads_the_copy_with_the_same_weights(gguf):
    calls = []
    first, _ = gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    second, tokenizer = gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    assert calls == ["tiny.gguf", None]  # dequantised once, then read from the copy
    assert tokenizer("abc").input_ids == char_tokenizer()("abc").input_ids
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert "quantization_config" not in (gguf_copy.cached_folder(gguf, torch.float32) / "config.json").read_text()


def test_another_dtype_or_a_changed_file_never_reads_a_stale_copy(gguf):
    calls = []
    gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    gguf_copy.load_gguf(gguf, torch.bfloat16, make_loader(calls))
    gguf.write_bytes(b"a new release of the model")
    gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    assert calls == ["tiny.gguf"] * 3
    assert len(list((gguf_copy.CACHE_DIR / "dequantized").iterdir())) == 3


def test_the_copy_can_be_turned_off(gguf, monkeypatch):
    monkeypatch.setenv("ACTPRUNE_NO_GGUF_CACHE", "1")
    calls = []
    gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    gguf_copy.load_gguf(gguf, torch.float32, make_loader(calls))
    assert calls == ["tiny.gguf", "tiny.gguf"] and not (gguf_copy.CACHE_DIR / "dequantized").exists()
