import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_model, token_ids
from reference import reference_logits

from actprune_compiler.artifact.folder import load_program
from actprune_compiler.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.mark.parametrize("pattern,target", [("2:4", "activation"), ("8:16", "activation"),
                                            ("16:32", "activation"), ("8:16", "weight")])
def test_compile_writes_the_three_files_and_the_program_matches_the_reference(tiny_dir, tmp_path, pattern, target,
                                                                             capsys):
    out = tmp_path / "art"
    args = ["compile", "--model", str(tiny_dir), "--pattern", pattern, "--target", target, "--out", str(out)]
    assert main(args + ([] if pattern == "8:16" else ["--no-check"])) == 0
    assert sorted(p.name for p in out.iterdir()) == ["graph.txt", "program.pt2", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["replaced"] == 14 and report["config"]["pattern"] == pattern
    assert len(report["layers"]) == 15 and report["versions"]["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "replaced 14" in printed
    if pattern == "8:16" and target == "activation":
        assert report["check"]["passed"] and report["check"]["max_relative_diff"] < 1e-9
        assert len(report["check"]["layers"]) == 3 and "check: 3 of 14 rewritten layers" in printed
    elif pattern == "8:16":
        assert report["check"]["passed"] and report["check"]["layers"] == 14
        assert "keeps at most N nonzeros in all 14 pruned layers" in printed
    ids = token_ids()
    with torch.no_grad():
        got = load_program(out).module()(ids)
    n, m = map(int, pattern.split(":"))
    if target == "activation":
        assert "actprune.nm_linear" in (out / "graph.txt").read_text()
        torch.testing.assert_close(got, reference_logits(tiny_model("llama"), ids, n, m), rtol=0, atol=1e-5)
    else:
        assert "actprune.nm_linear" not in (out / "graph.txt").read_text()
        assert all(row["weight_density"] == 0.5 for row in report["layers"] if "weight_density" in row)


def test_a_fresh_interpreter_loads_the_program_after_importing_the_package(tiny_dir, tmp_path):
    out = tmp_path / "art"
    assert main(["compile", "--model", str(tiny_dir), "--pattern", "2:4", "--out", str(out), "--no-check"]) == 0
    code = ("import torch, actprune_compiler; p = torch.export.load({!r}); "
            "print(p.module()(torch.zeros(1, 5, dtype=torch.long)).shape)").format(str(out / "program.pt2"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 5, 128])" in result.stdout


def test_inspect_shows_table_and_before_after(tiny_dir, tmp_path, capsys):
    out = tmp_path / "art"
    main(["compile", "--model", str(tiny_dir), "--pattern", "8:16", "--out", str(out), "--no-check"])
    capsys.readouterr()
    layer = "model.layers.1.mlp.down_proj"
    assert main(["inspect", str(out), "--layer", "*.1.mlp.*", "--show", layer]) == 0
    text = capsys.readouterr().out
    assert "3 of 15 linears match" in text
    assert "before: linear" in text and "aten.linear.default" in text
    assert "after:  nm_linear" in text and "actprune.nm_linear.default" in text and "8, 16" in text


@pytest.mark.parametrize("args,message", [
    (["--pattern", "3:2"], "pattern '3:2' is invalid; allowed: 'N:M' with 0 < N < M <= 256"),
    (["--pattern", "8:16", "--model", "no-such-model"], "unknown model 'no-such-model'; use an alias (smollm2-135m"),
    (["--pattern", "2:4", "--criterion", "best"], "criterion for target 'activation' 'best' is unknown"),
    (["--pattern", "16:32", "--modules", "q_proj", "--model", "TINY_80"],  # checked before the export
     "--pattern 16:32 prunes groups of M=32 input features, and layer model.layers.0.self_attn.q_proj has 80, "
     "not a multiple of 32"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys, args, message):
    if "TINY_80" in args:
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=80, intermediate_size=96, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "m")
        args = [str(tmp_path / "m") if a == "TINY_80" else a for a in args]
    out = tmp_path / "art"
    try:
        code = main(["compile", "--out", str(out), *args])
    except SystemExit as exit_:  # refused as it was parsed (--model)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # earlier lines: progress bars of the setup
    assert last.startswith("actprune: error: ") and message in last and "Traceback" not in err
    assert not out.exists()
