"""actprune compare on the tiny Llama: one table, JSON and plot, each variant scored on the same windows and
decoded to the same number of tokens."""

from __future__ import annotations

import json

from actprune_compiler.cli import main
from tests.conftest import needs_data


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
