"""What a flag asks of the model is checked right after the model loads, before anything is exported or
compiled: one `actprune: error:` line naming the flag and the limit, exit 2, no traceback, nothing written.
And a pattern that matches nothing is refused, never taken for "nothing to exclude".

The model is the tiny random Llama saved to a folder (256 positions, 2 layers of 7 projections, lm_head);
exporting or compiling fails the test, so each case must be refused before that."""

import pytest
from conftest import needs_data

import actprune_compiler.api
import actprune_compiler.backends.dynamo
import actprune_compiler.eval.runner
from actprune_compiler.cli import main
from actprune_compiler.sparsity.config import parse_pattern


def _went_past_the_checks(*args, **kwargs):
    raise AssertionError("exported or compiled before refusing")


@pytest.fixture
def no_export(monkeypatch, tmp_path):
    for module, name in [(actprune_compiler.api, "export_causal_lm"),
                         (actprune_compiler.eval.runner, "export_causal_lm"),
                         (actprune_compiler.backends.dynamo, "compile_model"),
                         (actprune_compiler.backends.dynamo, "compile_dense")]:
        monkeypatch.setattr(module, name, _went_past_the_checks)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(argv: list[str], fragment: str, folder, capfd) -> str:
    code = main(argv)
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "exported or compiled before refusing" not in err, err
    assert code == 2, err
    assert last.startswith("actprune: error: ") and fragment in last, last
    assert [line for line in err.splitlines() if line.startswith("actprune")] == [last]
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == [], "a refused command wrote something"
    return last


EVAL = [
    (["--seqlen", "4096"], "--seqlen 4096 is longer than model TINY takes: it has 256 positions; give --seqlen 256 "
                           "or less"),
    (["--batch-size", "5000"], "--batch-size 5000 is more than an exported program takes; give --batch-size 4096"),
    (["--tasks", "arc_easy", "--limit", "2", "--num-fewshot", "99999"],
     "--num-fewshot 99999 is more than task arc_easy can give: its few-shot examples come from 2376 documents; "
     "give --num-fewshot 2376 or less"),
    (["--pattern", "2:4", "--exclude", "down-proj"],  # a typo: it would prune every down_proj, labelled excluded
     "--exclude pattern 'down-proj' matches none of the 14 linear layers that --modules selects, so it would keep "
     "nothing dense; their names are down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
    (["--pattern", "2:4", "--exclude", "*.0.*,lm_head"], "--exclude pattern 'lm_head' matches none of the 14"),
    (["--pattern", "2:4", "--modules", "q_proj,dwn_proj"],
     "--modules pattern 'dwn_proj' matches none of the model's 15 linear layers; their names are down_proj, "
     "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    (["--pattern", "128:256"], "--pattern 128:256 prunes groups of M=256 input features, and layer "
                               "model.layers.0.self_attn.q_proj has 64, not a multiple of 256"),
    (["--pattern", "2:4", "--skip-sensitive", "14"], "--skip-sensitive 14 would keep all 14 layers that would be "
                                                     "pruned dense; give at most 13"),
    (["--pattern", "2:4", "--criterion", "clact_static", "--calib-samples", "100000"],
     "--calib-samples 100000 x --calib-seqlen 512 needs 100000 windows of 512 tokens, and the calibration text"),
]


@needs_data
@pytest.mark.parametrize("args,fragment", EVAL)
def test_eval(tiny_dir, no_export, capfd, args, fragment):
    refused(["eval", "--model", str(tiny_dir), "--seqlen", "64", "--max-windows", "1", "--output", "result.json",
             *args],
            fragment.replace("TINY", str(tiny_dir)), no_export, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["--prompt", ""], "--prompt '' is no token at all for the tokenizer of model 'TINY'; give a prompt"),
    (["--max-new-tokens", "1000"], "--max-new-tokens 1000 after a prompt of 5 tokens runs past the 256 positions "
                                   "of model 'TINY'; give --max-new-tokens 251 or less"),
    (["--prompt", "x" * 300], "--max-new-tokens 32 after a prompt of 300 tokens runs past the 256 positions of "
                              "model 'TINY'; give a shorter --prompt"),
    (["--chat"], "--chat wraps the prompt in the tokenizer's chat template, and the tokenizer of model 'TINY' has "
                 "none; drop --chat"),
    (["--exclude", "nothing_like_this"], "--exclude pattern 'nothing_like_this' matches none of the 14"),
])
def test_generate(tiny_dir, no_export, capfd, args, fragment):
    refused(["generate", "--model", str(tiny_dir), "--prompt", "Hello", *args],
            fragment.replace("TINY", str(tiny_dir)), no_export, capfd)


@pytest.mark.parametrize("command", [["compile", "--out", "art"], ["sensitivity", "--output", "s.json"],
                                     ["bench", "--out", "bench"], ["inspect"]])
@pytest.mark.parametrize("args,fragment", [
    (["--exclude", "down-proj"], "--exclude pattern 'down-proj' matches none"),
    (["--modules", "q_prj"], "--modules pattern 'q_prj' matches none of the model's 15 linear layers"),
])
def test_every_command_refuses_a_pattern_that_matches_nothing(tiny_dir, no_export, capfd, command, args, fragment):
    if command == ["inspect"]:
        argv = ["inspect", str(tiny_dir), "--pattern", "2:4", *args]
    else:
        argv = [*command, "--model", str(tiny_dir), "--pattern", "2:4", *args]
    refused(argv, fragment, no_export, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["--layer", "*.9.*"], "--layer '*.9.*' matches none of the 15 linear layers; their names are down_proj"),
    (["--show", "model.layers.0.mlp"], "--show 'model.layers.0.mlp' is not one of the 15 linear layers; give a "
                                       "whole module path such as 'model.layers.0.self_attn.q_proj'"),
])
def test_inspect_refuses_a_layer_that_is_not_there(tiny_dir, no_export, capfd, args, fragment):
    refused(["inspect", str(tiny_dir), "--pattern", "2:4", *args], fragment, no_export, capfd)


def test_a_model_folder_without_weights_is_bad_input(tiny_dir, tmp_path, capfd, monkeypatch):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_dir / "config.json").read_text())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    refused(["compile", "--model", str(folder), "--pattern", "2:4", "--out", "art"],
            f"model folder '{folder}' does not load (Error no file named model.safetensors", work, capfd)
    (folder / "config.json").write_text('{"model_type": ')  # and a damaged config.json
    refused(["eval", "--model", str(folder), "--output", "r.json"],
            f"model folder '{folder}' does not load (It looks like the config file at", work, capfd)


def test_every_example_the_pattern_message_allows_is_accepted():
    """The message lists what the parser takes; each example it gives must parse (0.5 given as text, too)."""
    with pytest.raises(ValueError) as refusal:
        parse_pattern("0.5:1")
    message = str(refusal.value)
    examples = ["2:4", "8:16", "50%", "0.5"]
    assert all(example in message for example in examples), message
    assert [str(parse_pattern(example)) for example in examples] == ["2:4", "8:16", "50%", "50%"]
    assert str(parse_pattern(0.5)) == str(parse_pattern(".5")) == "50%"
    for outside in ("1.5", "0", "100%", "0%"):
        with pytest.raises(ValueError, match="is out of range; allowed"):
            parse_pattern(outside)
