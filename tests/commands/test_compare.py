"""actprune compare on the tiny Llama: one table, JSON and plot, each variant scored on the same windows and
decoded to the same number of tokens."""

from __future__ import annotations

import json

import torch

from actprune_compiler.benchmark.compare import Variant, weights_read_per_token
from actprune_compiler.cli import main
from actprune_compiler.sparsity.config import SparsityConfig
from tests.conftest import needs_data, tiny_model


@needs_data
def test_compare_scores_and_times_every_variant(tiny_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(tiny_dir), "--pattern", "2:4,8:16", "--max-windows", "1",
                 "--seqlen", "64", "--new-tokens", "4", "--repeats", "2", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["variants"] == ["dense", "2:4", "8:16"]
    for name in result["variants"]:
        assert result["quality"][name]["windows"] == 1
        decode = result["speed"]["decode"][name]
        assert len(decode["samples"]) == 2 and all(rate > 0 for rate in decode["samples"])
        assert len(decode["tokens"]) == 4
    # 2:4 keeps half of each group's activations: the tiny model's loss moves, so the variants really differ
    assert result["quality"]["2:4"]["ppl"] != result["quality"]["dense"]["ppl"]
    table = (out / "compare.md").read_text()
    assert all(f"| {name} " in table for name in result["variants"])
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote" in capsys.readouterr().out


def test_weights_read_per_token_counts_each_layers_kept_rows_in_its_format():
    """The tiny Llama's bytes per token, layer by layer by hand: 8:16 reads half of each pruned layer's rows;
    int4g32 holds a row's codes with its scales, int4k32 reads the kept codes and every block's scales; the
    dense lm_head reads all of its rows, in float32 or (under a format) in int8."""
    model = tiny_model("llama")
    linears = {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = [shape for name, shape in linears.items() if name == "lm_head"]
    pruned = [shape for name, shape in linears.items() if name != "lm_head"]

    def total(bits_pruned, bits_head):
        return round(sum(n * k * bits_pruned / 8 for n, k in pruned) + sum(n * k * bits_head / 8 for n, k in head))

    def read(quant):
        return weights_read_per_token(model, Variant.actprune(SparsityConfig("8:16", quant=quant)), "tiny")

    assert weights_read_per_token(model, Variant.actprune(None), "tiny") == total(32, 32)
    assert read("none") == total(16, 32)
    int8_head = sum(n * (k * 8 + 32) / 8 for n, k in head)  # a float32 scale per output
    assert read("int4g32") == round(sum(n * k * (4 + 1) / 2 / 8 for n, k in pruned) + int8_head)
    assert read("int4k32") == round(sum(n * k * (4 / 2 + 1) / 8 for n, k in pruned) + int8_head)
