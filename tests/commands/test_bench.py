"""actprune bench on the tiny Llama: the decode table holds Hugging Face's generate through the backend and
actprune's decode loop (dense, the config, and the config in float32 when it quantises), with the machine's
quietness beside it."""

from __future__ import annotations

import json

from actprune_compiler.cli import main


def test_bench_decodes_with_the_loop_and_the_quantised_variant(tiny_dir, tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "--model", str(tiny_dir), "--pattern", "8:16", "--quant", "int4g32", "--prefill", "1x16",
                 "--layer-tokens", "1", "--decode-tokens", "4", "--prompt-len", "4", "--repeats", "1",
                 "--out", str(out)])
    assert code == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["config"]["quant"] == "int4g32"
    loops = [name for name in result["decode"] if name.endswith("decode loop")]
    assert loops == ["dense decode loop", "8:16 int4g32 decode loop", "8:16 decode loop"]
    assert all(result["decode"][name]["tokens_per_s"] > 0 for name in result["decode"])
    assert set(result["decode_machine"]) >= {"load_average_before", "quiet", "spread"}
    assert "Load average" in (out / "bench.md").read_text()


def test_llamacpp_beside_a_model_without_gguf_fails_before_the_load(tiny_dir, tmp_path, capfd):
    code = main(["bench", "--model", str(tiny_dir), "--vs-llamacpp", "--out", str(tmp_path / "b")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert ("is not an alias or a .gguf file" in err[0]) or ("llama.cpp is not installed" in err[0]), err
    assert not (tmp_path / "b").exists()
