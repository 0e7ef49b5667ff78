"""actprune eval --model ARTIFACT scores the artifact's program.pt2 as saved: the same numbers as a fresh run."""

import json
import shutil

import pytest
from conftest import char_tokenizer, tiny_model

from actprune_compiler.cli import main
from actprune_compiler.eval.data import TASK_FILES, WIKITEXT_DIR, find_data_dir

TEXT = ("The quick brown fox jumps over the lazy dog.\n" * 12) + "Pack my box with five dozen liquor jugs.\n" * 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, artifact folder, data folder): a float64 8:16 artifact of the tiny Llama and a tiny
    WikiText-2 test split (the project's ARC-Easy beside it)."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("eval-artifact")
    model = root / "tiny"
    tiny_model("llama").save_pretrained(model)
    char_tokenizer().save_pretrained(model)
    data = root / "data"
    Dataset.from_dict({"page": [TEXT, TEXT.upper()]}).save_to_disk(str(data / WIKITEXT_DIR / "test"))
    project = find_data_dir()
    if project is not None and (project / TASK_FILES["arc_easy"][0]).is_file():
        (data / "arc_easy").mkdir()
        shutil.copy(project / TASK_FILES["arc_easy"][0], data / TASK_FILES["arc_easy"][0])
    artifact = root / "art"
    assert main(["compile", "--model", str(model), "--pattern", "8:16", "--dtype", "float64", "--no-check",
                 "--out", str(artifact)]) == 0
    return model, artifact, data


def evaluate(tmp_path, *flags):
    out = tmp_path / f"result-{len(list(tmp_path.iterdir()))}.json"
    assert main(["eval", *flags, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_an_artifact_scores_what_a_fresh_run_of_its_model_and_pattern_scores(tiny, tmp_path, capsys):
    model, artifact, data = tiny
    common = ["--tasks", "wikitext2", "--seqlen", "64", "--max-windows", "4", "--batch-size", "2",
              "--data-dir", str(data)]
    fresh = evaluate(tmp_path, "--model", str(model), "--pattern", "8:16", "--dtype", "float64", *common)
    fresh_table = capsys.readouterr().out
    scored = evaluate(tmp_path, "--model", str(artifact), *common)  # compiled by Inductor, as the fresh run
    table = capsys.readouterr().out

    assert scored["artifact"] == str(artifact) and "artifact" not in fresh
    assert scored["metrics"]["wikitext2"]["windows"] == fresh["metrics"]["wikitext2"]["windows"] == 4
    assert scored["metrics"]["wikitext2"]["ppl"] == pytest.approx(fresh["metrics"]["wikitext2"]["ppl"], rel=1e-12)
    for key in ("model", "model_class", "device", "dtype", "pruning", "config", "replaced_linears", "options",
                "compiled", "calibration"):
        assert scored[key] == fresh[key], key
    assert scored["model"] == str(model) and scored["pruning"] == "8:16" and scored["replaced_linears"] == 14
    assert scored["dtype"] == "float64" and scored["compiled"] and "compile_s" in scored["stages_s"]
    assert "load_s" in scored["stages_s"] and "export_s" not in scored["stages_s"]
    header = [line for line in table.splitlines() if "wikitext2 ppl" in line]
    assert header and header == [line for line in fresh_table.splitlines() if "wikitext2 ppl" in line]


def test_lm_eval_scores_the_program_alike_without_the_model_weights(tiny):
    """Zero-shot tasks hand lm-eval a weightless stand-in for the model: the same log-likelihoods."""
    from lm_eval.api.instance import Instance

    from actprune_compiler.artifact.folder import load_program
    from actprune_compiler.eval.artifact_eval import ProgramModel, _tokenizer_and_config
    from actprune_compiler.eval.harness import make_lm
    from actprune_compiler.eval.runner import EvalOptions, program_runner

    model, artifact, _ = tiny
    tokenizer, config = _tokenizer_and_config(str(model), "float64", artifact)
    runner = program_runner(load_program(artifact), "cpu", EvalOptions(compile=False))
    pairs = [("Question: what jumps?\nAnswer:", " the fox"), ("Pack my box", " with jugs"), ("A", " b")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    stand_in = make_lm(runner, ProgramModel(config, "cpu", str(model)), tokenizer, 2).loglikelihood(requests)
    eager = make_lm(runner, tiny_model("llama"), char_tokenizer(), 2).loglikelihood(requests)
    assert stand_in == eager and len(stand_in) == 3


@pytest.mark.usefixtures("data_dir")  # ARC-Easy comes from the project's data
def test_flags_that_say_what_the_artifact_is_are_accepted(tiny, tmp_path):
    _, artifact, data = tiny
    result = evaluate(tmp_path, "--model", str(artifact), "--pattern", "8 : 16", "--target", "activation",
                      "--modules", "q_proj, k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--dtype", "float64",
                      "--device", "cpu", "--tasks", "wikitext2,arc_easy", "--limit", "2", "--seqlen", "64",
                      "--max-windows", "2", "--data-dir", str(data), "--no-compile")
    assert result["compiled"] is False and result["pruning"] == "8:16" and result["metrics"]["wikitext2"]["ppl"] > 1
    assert result["metrics"]["arc_easy"]["samples"] == 2 and 0 <= result["metrics"]["arc_easy"]["metrics"]["acc"] <= 1


@pytest.mark.parametrize("flags,sentence", [
    (["--pattern", "2:4"], "--pattern 2:4 conflicts with the artifact {art}, compiled with pattern 8:16: "
                           "an artifact fixes its config (report.json); drop --pattern, or compile a new artifact"),
    (["--pattern", "none"], "--pattern none conflicts with the artifact {art}, compiled with pattern 8:16"),
    (["--target", "activation", "--criterion", "clact"], "--criterion clact conflicts with the artifact {art}, "
                                                         "compiled with criterion magnitude"),
    (["--exclude", "down_proj"], "--exclude down_proj conflicts with the artifact {art}, compiled with exclude none"),
    (["--seed-compat"], "--seed-compat conflicts with the artifact {art}, compiled with drop_bias False"),
    (["--calib-samples", "4"], "--calib-samples 4 conflicts with the artifact {art}, compiled with calib_samples 16"),
    (["--calib-data", "wikitext2-train"],
     "--calib-data conflicts with the artifact {art}: an artifact fixes its config"),
    (["--dtype", "float32"], "--dtype float32 conflicts with the artifact {art}, whose program is float64"),
    (["--seqlen", "512"], "--seqlen 512 is longer than the artifact {art} takes: its program was exported for "
                          "sequences of at most 256 tokens; pass --seqlen 256 or less"),
])
def test_a_flag_that_would_change_the_program_is_one_sentence(tiny, flags, sentence, capfd):
    _, artifact, data = tiny
    assert main(["eval", "--model", str(artifact), "--data-dir", str(data), "--no-compile", *flags]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actprune: error: " + sentence.format(art=artifact)), lines


def test_a_folder_without_report_json_is_not_an_artifact(tiny, tmp_path, capfd):
    _, artifact, _ = tiny
    program_only = tmp_path / "program-only"
    program_only.mkdir()
    shutil.copy(artifact / "program.pt2", program_only)
    assert main(["eval", "--model", str(program_only)]) == 2
    assert f"{program_only} is not an actprune artifact (no report.json); create one with: actprune compile" in \
        capfd.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--model", str(empty)]) == 2
    assert (f"{empty} is neither an actprune artifact (no report.json) nor a model folder (no config.json)"
            in capfd.readouterr().err)


def test_a_report_naming_a_model_not_found_here_says_so(tiny, tmp_path, capfd):
    _, artifact, data = tiny
    moved = tmp_path / "moved"
    shutil.copytree(artifact, moved)
    report = json.loads((moved / "report.json").read_text())
    (moved / "report.json").write_text(json.dumps({**report, "model": "relative/../tiny"}))
    assert main(["eval", "--model", str(moved), "--data-dir", str(data), "--seqlen", "64", "--no-compile"]) == 2
    assert (f"the artifact {moved} was compiled from model 'relative/../tiny' (report.json), which is not found "
            "from ") in capfd.readouterr().err
    del report["device"]
    (moved / "report.json").write_text(json.dumps(report))
    assert main(["eval", "--model", str(moved)]) == 2
    assert f"{moved}/report.json is damaged: it lacks 'device'; actprune compile writes" in capfd.readouterr().err
