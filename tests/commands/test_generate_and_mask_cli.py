"""Front doors that once ignored or broke on an option: generate with a calibrated criterion, and
compile with an attention-mask input (its check must pass)."""

import json

import pytest
from conftest import char_tokenizer, tiny_model

from actprune_compiler.cli import main

CALIB_TEXT = "Calibration text for a tiny model, with some variety: 0123456789. " * 40


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-tok")
    tiny_model("llama").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    (path / "calib.txt").write_text(CALIB_TEXT)
    return path


def test_generate_with_a_calibrated_criterion(tiny_with_tokenizer, capsys):
    args = ["generate", "--model", str(tiny_with_tokenizer), "--pattern", "8:16", "--criterion", "clact_static",
            "--prompt", "Hello", "--max-new-tokens", "3", "--calib-data", str(tiny_with_tokenizer / "calib.txt"),
            "--calib-samples", "2", "--calib-seqlen", "64", "--inner-backend", "eager"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[8:16 clact_static] Hello" in out and "decode tokens/s" in out


def test_compile_with_an_attention_mask_input_passes_its_check(tiny_with_tokenizer, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", "--model", str(tiny_with_tokenizer), "--pattern", "8:16", "--attention-mask",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == ["input_ids", "attention_mask"] and report["check"]["passed"]
    assert "compiled by Inductor equal the reference kernel" in capsys.readouterr().out
