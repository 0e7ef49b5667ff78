"""Every bad flag of every subcommand fails at once: one `actprune: error:` line, exit 2, nothing written,
and no model loaded (load_model is replaced by one that fails the test)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actprune_compiler.cli import INTERRUPTED, build_parser, main

# Every module that imports load_model by name: replacing it there replaces every load a command makes.
LOADERS = [importlib.import_module(f"actprune_compiler.{name}") for name in (
    "commands.bench", "commands.compile", "commands.generate", "commands.inspect", "commands.sensitivity",
    "eval.runner", "eval.sweep")]


def _refuse_to_load(*args, **kwargs):
    raise AssertionError("loaded a model")


def replace_load_model(monkeypatch, fake) -> None:
    for module in LOADERS:
        monkeypatch.setattr(module, "load_model", fake)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A cwd holding the things bad inputs point at; load_model fails the test if anything reaches it."""
    replace_load_model(monkeypatch, _refuse_to_load)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("keep me\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}\n")  # looks like a model folder to inspect
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "report.json").write_text('{"model": "x", ')
    (tmp_path / "badprog").mkdir()
    (tmp_path / "badprog" / "report.json").write_text(json.dumps({"layers": []}))
    (tmp_path / "badprog" / "program.pt2").write_bytes(b"not a zip archive")
    return tmp_path


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def fails_at_once(argv: list[str], fragment: str, root: Path, capfd) -> str:
    """Run argv; check exit 2, one error line holding fragment, no traceback, no change on disk."""
    before = _tree(root)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors (OneLineParser) exit rather than return
        code = exit.code
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "loaded a model" not in err, f"{argv} loaded a model before failing: {err}"
    assert code == 2, err
    assert last.startswith("actprune: error: ") and fragment in last, last
    assert "Traceback" not in err
    assert _tree(root) == before, "a bad input created or changed files"
    return last


@pytest.mark.parametrize("args,fragment", [
    (["--pattern", "3:2"], "pattern '3:2' is invalid"),
    (["--pattern", "none"], "actprune compile needs a pattern"),
    (["--out", "file.txt"], "--out file.txt is a file; give a folder path"),
    (["--out", "file.txt/art"], "lies under file.txt, which is a file"),
    (["--out", "full"], "--out full already exists and is not empty; pass --force"),
    (["--calib-samples", "0"], "argument --calib-samples: 0 is too small; it must be a positive integer"),
    (["--calib-seqlen", "x"], "argument --calib-seqlen: 'x' is not a whole number"),
    (["--skip-sensitive", "-1"], "argument --skip-sensitive: -1 is too small; it must be an integer >= 0"),
    (["--calib-data", "missing.txt"], "argument --calib-data: 'missing.txt' is neither wikitext2-validation"),
    (["--criterion", "best"], "criterion for target 'activation' 'best' is unknown"),
    (["--target", "weight", "--correction", "variance"], "applies to activation pruning only"),
    (["--correction", "magic"], "argument --correction: invalid choice: 'magic'"),
    (["--modules", ""], "modules '' contains an empty name"),
    (["--recovery", "lora"], "argument --recovery: invalid choice: 'lora'"),
    (["--recovery", "offset", "--correction", "bias"], "use another correction than 'bias' with it"),
    (["--recovery", "finetune", "--target", "weight"], "use it with target 'activation' only"),
    (["--recovery-steps", "-3"], "argument --recovery-steps: -3 is too small"),
    (["--recovery-lr", "0"], "argument --recovery-lr: 0 is out of range; it must be a positive finite number"),
    (["--recovery-lr", "fast"], "argument --recovery-lr: 'fast' is not a number"),
    (["--rotation", "hadamard"], "argument --rotation: invalid choice: 'hadamard'"),
    (["--rotation", "pca", "--recovery", "offset"], "use the rotation with an activation target"),
    (["--rotation", "pca", "--pattern", "50%"], "use it with an N:M pattern, not '50%'"),
])
def test_compile(workdir, capfd, args, fragment):
    out = [] if "--out" in args else ["--out", "art"]
    fails_at_once(["compile", *out, *args], fragment, workdir, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["--seqlen", "1"], "argument --seqlen: 1 is too small; it must be an integer >= 2"),
    (["--seqlen", "2048.5"], "argument --seqlen: '2048.5' is not a whole number"),
    (["--batch-size", "0"], "argument --batch-size: 0 is too small; it must be a positive integer"),
    (["--max-windows", "-1"], "argument --max-windows: -1 is too small"),
    (["--limit", "0"], "argument --limit: 0 is too small"),
    (["--limit", "2.5"], "argument --limit: 2.5 is not a whole count"),
    (["--limit", "all"], "argument --limit: 'all' is not a number"),
    (["--num-fewshot", "-2"], "argument --num-fewshot: -2 is too small; it must be an integer >= 0"),
    (["--tasks", "arc_eesy"], "argument --tasks: unknown task 'arc_eesy'; give wikitext2 or any lm-eval task"),
    (["--tasks", "wikitext2,arc_eesy"], "unknown task 'arc_eesy'"),
    (["--tasks", ""], "argument --tasks: no task given"),
    (["--tasks", " , "], "argument --tasks: no task given"),
    (["--bos", "sometimes"], "argument --bos: invalid choice: 'sometimes'"),
    (["--data-dir", "/nonexistent"], "argument --data-dir: /nonexistent is not an existing folder"),
    (["--data-dir", "file.txt"], "argument --data-dir: file.txt is not an existing folder"),
    (["--output", "full"], "--output full is a folder; give a file path"),
    (["--output", "file.txt/result.json"], "lies under file.txt, which is a file"),
    (["--pattern", "3:2"], "pattern '3:2' is invalid"),
    (["--pattern", "2:4", "--criterion", "best"], "'best' is unknown"),
])
def test_eval(workdir, capfd, args, fragment):
    fails_at_once(["eval", *args], fragment, workdir, capfd)


WIKITEXT_TEST = "WikiText-2 test split (DATA/wikitext2/wikitext_document_level/wikitext-2-raw-v1/test)"


@pytest.mark.parametrize("args,fragment", [
    (["--tasks", "wikitext2"], f"evaluation data not found in the data folder empty: {WIKITEXT_TEST}; put each "
                               "at its path under DATA, with DATA the project's data folder"),
    (["--tasks", "arc_challenge"], "evaluation data not found in the data folder empty: arc_challenge "
                                   "(DATA/arc_challenge/ARC-Challenge-Test.jsonl); put each at its path"),
    (["--tasks", "wikitext2,piqa"], f"{WIKITEXT_TEST}; piqa (DATA/piqa/valid.jsonl, DATA/piqa/valid-labels.lst)"),
    (["--tasks", "boolq", "--pattern", "2:4", "--skip-sensitive", "1"],  # the calibration split, too
     "WikiText-2 validation split (DATA/wikitext2/wikitext_document_level/wikitext-2-raw-v1/validation); boolq"),
    (["--tasks", "winogrande"], "or pass --allow-hub to fetch it from the Hugging Face hub"),
])
def test_eval_with_missing_data_fails_before_loading(workdir, capfd, args, fragment):
    fails_at_once(["eval", "--data-dir", "empty", *args], fragment, workdir, capfd)


@pytest.mark.parametrize("tasks", ["wikitext2", "arc_challenge"])
def test_allow_hub_lifts_the_missing_data_check(workdir, capfd, tasks):
    code = main(["eval", "--data-dir", "empty", "--tasks", tasks, "--allow-hub"])
    err = capfd.readouterr().err
    assert code == 1 and "loaded a model" in err, err  # it went on to the model load


@pytest.mark.parametrize("args,fragment", [
    (["--max-new-tokens", "0"], "argument --max-new-tokens: 0 is too small; it must be a positive integer"),
    (["--pattern", "none", "--compare-dense"], "--compare-dense runs the dense model beside a pattern; give "),
    (["--json-out", "out.json", "--compare-dense"], "--json-out records the start of one model; drop --compare-dense"),
    (["--json-out", "full"], "--json-out full is a folder; give a file path"),
    (["--pattern", "3:2"], "pattern '3:2' is invalid"),
    (["--inner-backend", "tvm"], "argument --inner-backend: invalid choice: 'tvm'"),
    (["--calib-samples", "-3"], "argument --calib-samples: -3 is too small"),
])
def test_generate(workdir, capfd, args, fragment):
    fails_at_once(["generate", "--prompt", "Hello", *args], fragment, workdir, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["--repeats", "0"], "argument --repeats: 0 is too small; it must be a positive integer"),
    (["--prompt-len", "0"], "argument --prompt-len: 0 is too small"),
    (["--decode-tokens", "-1"], "argument --decode-tokens: -1 is too small; it must be an integer >= 0"),
    (["--prefill", "1x"], "argument --prefill: '1x' in '1x' is not a shape"),
    (["--prefill", "1x512,0x8"], "argument --prefill: '0x8' in '1x512,0x8' is not a shape"),
    (["--prefill", ""], "argument --prefill: no shape given"),
    (["--layer-tokens", "a,b"], "argument --layer-tokens: 'a' in 'a,b' is not a positive integer"),
    (["--layer-tokens", "1,0"], "argument --layer-tokens: '0' in '1,0' is not a positive integer"),
    (["--out", "file.txt"], "--out file.txt is a file; give a folder path"),
    (["--pattern", "none"], "bench times activation pruning"),
    (["--target", "weight"], "bench times activation pruning"),
    (["--pattern", "3:2"], "pattern '3:2' is invalid"),
])
def test_bench(workdir, capfd, args, fragment):
    fails_at_once(["bench", *args], fragment, workdir, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["--top", "0"], "argument --top: 0 is too small; it must be a positive integer"),
    (["--output", "file.txt/layers.json"], "--output file.txt/layers.json lies under file.txt, which is a file"),
    (["--output", "full"], "--output full is a folder; give a file path"),
    (["--pattern", "none"], "sensitivity ranks activation pruning"),
    (["--calib-data", "nowhere"], "argument --calib-data: 'nowhere' is neither"),
])
def test_sensitivity(workdir, capfd, args, fragment):
    fails_at_once(["sensitivity", *args], fragment, workdir, capfd)


@pytest.mark.parametrize("args,fragment", [
    (["corrupt"], "corrupt/report.json is not valid JSON"),
    (["badprog", "--show", "model.layers.0.mlp.down_proj", "--program"],
     "badprog/program.pt2 is not a readable torch.export program"),
    (["empty"], "empty is neither an actprune artifact (no report.json) nor a model folder"),
    (["model", "--pattern", "3:2"], "pattern '3:2' is invalid"),
    (["model", "--pattern", "none"], "inspecting a model needs a pattern"),
    (["model", "--calib-samples", "0"], "argument --calib-samples: 0 is too small"),
])
def test_inspect(workdir, capfd, args, fragment):
    fails_at_once(["inspect", *args], fragment, workdir, capfd)


def test_a_corrupt_program_is_one_line_in_a_real_process(workdir):
    # torch.export.load logs a traceback through a handler bound to the real stderr, which capfd misses.
    result = subprocess.run([sys.executable, "-m", "actprune_compiler.cli", "inspect", "badprog", "--show",
                             "model.layers.0.mlp.down_proj", "--program"],
                            capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "actprune: error: badprog/program.pt2 is not a readable torch.export program (BadZipFile: File is not a "
        "zip file); recompile it with actprune compile"], result.stderr


def test_ctrl_c_returns_130_with_one_line_and_writes_nothing(workdir, monkeypatch, capfd):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    replace_load_model(monkeypatch, interrupted)
    assert main(["compile", "--pattern", "2:4", "--out", "art"]) == INTERRUPTED
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actprune: interrupted"), lines
    assert not (workdir / "art").exists()


def test_valid_values_parse_as_before(workdir):
    parser = build_parser()
    args = parser.parse_args(["eval", "--tasks", "wikitext2, arc_easy,arc_easy", "--limit", "4", "--data-dir", "."])
    assert args.tasks == ("wikitext2", "arc_easy") and args.limit == 4 and isinstance(args.limit, int)
    assert args.seqlen == 2048 and args.bos == "auto" and args.data_dir == "."
    assert parser.parse_args(["eval", "--limit", "0.25"]).limit == 0.25
    assert parser.parse_args(["eval"]).tasks == ("wikitext2",)
    bench = parser.parse_args(["bench"])
    assert bench.prefill == [(1, 512), (8, 512)] and bench.layer_tokens == [1, 4, 8, 512]
    assert bench.decode_tokens == 32 and parser.parse_args(["bench", "--decode-tokens", "0"]).decode_tokens == 0
    assert parser.parse_args(["compile", "--out", "a", "--calib-data", "file.txt"]).calib_data == "file.txt"


def test_building_the_parser_does_not_import_lm_eval():
    # The task list comes from eval.harness; importing it must stay cheap (lm_eval loads only to score).
    code = ("import sys; from actprune_compiler.cli import build_parser; build_parser(); "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["compile --out art", "eval", "generate", "bench", "sensitivity", "inspect model"])
@pytest.mark.parametrize("device, fragment", [
    ("mps", "argument --device: device 'mps' is not supported; use cpu, cuda or cuda:N"),
    ("gpu0", "argument --device: device 'gpu0' is not a device name"),
    pytest.param("cuda", "argument --device: device 'cuda' was asked for, but this machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU says this")),
])
def test_every_model_command_refuses_a_device_it_cannot_use(workdir, capfd, command, device, fragment):
    fails_at_once([*command.split(), "--device", device], fragment, workdir, capfd)
