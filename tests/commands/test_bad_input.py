"""Every bad flag of every subcommand fails at once: one `actprune: error:` line, exit 2, nothing written,
and no model loaded (load_model is replaced by one that fails the test)."""

import argparse
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
    "commands.bench", "commands.compare", "commands.compile", "commands.generate", "commands.inspect",
    "commands.sensitivity",
    "eval.runner", "eval.sweep")]

# A report.json of the shape actprune compile writes (artifact.REPORT_SHAPE), with one layer.
REPORT = {"model": "tiny", "model_class": "LlamaForCausalLM", "device": "cpu", "dtype": "float32", "label": "2:4",
          "config": {"pattern": "2:4"}, "totals": {"linears": 1, "replaced": 1, "dense_not_matched": 0,
                                                   "dense_excluded": 0},
          "graph_ops": {"nm_linear": 1, "linear": 0}, "timings": {"export_s": 1.0},
          "layers": [{"module": "model.layers.0.mlp.down_proj", "in_features": 128, "out_features": 64,
                      "decision": "activation 2:4"}]}


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
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("keep me\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}\n")  # looks like a model folder to inspect
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "report.json").write_text('{"model": "x", ')
    (tmp_path / "badprog").mkdir()
    (tmp_path / "badprog" / "report.json").write_text(json.dumps(REPORT))
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
    (["--criterion", "clact", "--exclude", "q_proj"],  # the dense model: they would be ignored
     "--criterion, --exclude would not apply: without --pattern (or with --pattern none) eval scores the dense "
     "model; give --pattern, or drop them"),
    (["--pattern", "none", "--calib-data", "file.txt"], "--calib-data would not apply"),
    (["--pattern", "2:4", "--criterion", "clact_static", "--calib-data", "binary.txt"],
     "--calib-data 'binary.txt' is not a UTF-8 text file (invalid start byte at byte 128); give a text file"),
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


@pytest.mark.parametrize("command", ["compile --out art", "eval", "generate", "bench", "compare", "sensitivity",
                                     "inspect model"])
@pytest.mark.parametrize("device, fragment", [
    ("mps", "argument --device: device 'mps' is not supported; use cpu, cuda or cuda:N"),
    ("gpu0", "argument --device: device 'gpu0' is not a device name"),
    pytest.param("cuda", "argument --device: device 'cuda' was asked for, but this machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU says this")),
])
def test_every_model_command_refuses_a_device_it_cannot_use(workdir, capfd, command, device, fragment):
    fails_at_once([*command.split(), "--device", device], fragment, workdir, capfd)


# --- every flag of every command, from the parser itself ------------------------------------------------
# Each flag that takes a value is tried with a value of the wrong type, one out of range and an empty one:
# for a flag with choices, values outside them; for one with a type= function, the values BAD_TYPED lists
# for that function; for one that takes any text, the values FREE_TEXT lists for it. A new flag, or a new
# type function, without bad values here fails test_every_flag_is_tried.
#
# A value is refused (exit 2, one line naming the flag, nothing written, no model loaded), or ACCEPTED (the
# command goes on to load the model), or AFTER_LOAD: it can only be judged against the model, which
# tests/commands/test_after_load.py does.
ACCEPTED, AFTER_LOAD = "accepted", "judged after the load"
WHOLE = "is not a whole number"
BAD_TYPED = {
    "int_at_least.<locals>.parse": [("x", WHOLE), ("2.5", WHOLE), ("-1000000", "is too small"), ("", WHOLE)],
    "positive_float": [("fast", "is not a number"), ("0", "is out of range"), ("inf", "is out of range"),
                       ("", "is not a number")],
    "example_limit": [("all", "is not a number"), ("0", "is too small"), ("2.5", "is not a whole count"),
                      ("", "is not a number")],
    "existing_folder": [("/nonexistent", "is not an existing folder"), ("file.txt", "is not an existing folder"),
                        ("", "the folder is empty")],
    "calib_source": [("missing.txt", "is neither"), ("full", "is neither"), ("", "is neither")],
    "task_list": [("arc_eesy", "unknown task 'arc_eesy'"), ("", "no task given")],
    "positive_int_list": [("a,b", "is not a positive integer"), ("1,0", "is not a positive integer"),
                          ("", "no value given")],
    "shape_list": [("1x", "is not a shape"), ("0x8", "is not a shape"), ("", "no shape given")],
    "device_name": [("gpu0", "is not a device name"), ("mps", "is not supported"), ("", "is not a device name")],
    "model_spec": [("", "the model is empty"), ("no-such-model", "unknown model 'no-such-model'"),
                   ("./missing", "unknown model './missing'"), ("file.txt", "is a file, not a model folder")],
    "pattern_list": [("", "no pattern given"), ("2:x", "--pattern '2:x' is not understood"),
                     ("8:16,4:2", "--pattern '4:2' is invalid")],
    "choice_list.<locals>.parse": [("int3", "int3 is not a "), ("", " given; give comma-separated ones of ")],
    "worker_count": [("two", WHOLE), ("0", "is too small"), ("100000", "is more than this machine holds"),
                     ("", WHOLE)],
}
FREE_TEXT = {
    "pattern": [("", "--pattern '' is not understood"), ("2:x", "--pattern '2:x' is not understood"),
                ("1.5", "--pattern '1.5' is out of range"), ("4:2", "--pattern '4:2' is invalid")],
    "criterion": [("", "--criterion for target 'activation' '' is unknown"),
                  ("best", "--criterion for target 'activation' 'best' is unknown")],
    "modules": [("", "--modules '' contains an empty name"), ("q_proj,,v_proj", "contains an empty name"),
                ("q_prj", AFTER_LOAD)],
    "exclude": [("", ACCEPTED), ("down-proj", AFTER_LOAD)],
    "out": [("", "--out is empty"), ("/proc/out", "cannot be written: creating a file in /proc fails"),
            ("file.txt/out", "lies under file.txt, which is a file")],
    "output": [("", "--output is empty"), ("/proc/r.json", "cannot be written: creating a file in /proc fails"),
               ("full", "is a folder")],
    "json_out": [("", "--json-out is empty"),
                 ("/proc/start.json", "cannot be written: creating a file in /proc fails")],
    "prompt": [("", AFTER_LOAD)],
    "layer": [("", "--layer '' matches none"), ("*.9.*", "--layer '*.9.*' matches none")],
    "show": [("", "--show '' is not one of the 1 linear layers"), ("model.layers.0", "is not one of")],
    "sweep": [("", "the sweep file is empty (no path)"), ("missing.yaml", "sweep file missing.yaml does not exist"),
              ("file.txt", "sweep file file.txt must be a mapping")],
}
# What each command needs besides the flag tried (its required arguments), and the flags that inspect
# reads from an artifact (the others make it inspect a model).
NEEDS = {"compile": ["--out", "art"], "generate": ["--prompt", "Hello"], "inspect": ["model"],
         "sweep": ["sweep.yaml"], "eval": ["--pattern", "2:4"]}  # (a second --pattern replaces this one)
ARTIFACT_FLAGS = {"layer", "show"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _value_flags():
    """(command, action) for every argument that takes a value."""
    for command, parser in _commands().items():
        for action in parser._actions:
            if action.nargs != 0 and not isinstance(action, argparse._HelpAction):
                yield command, action


def _bad_values(action: argparse.Action) -> list[tuple[str, str]] | None:
    if action.choices is not None:
        return [("bogus", "invalid choice: 'bogus'"), ("", "invalid choice: ''")]
    if action.type is not None:
        return BAD_TYPED.get(action.type.__qualname__)
    return FREE_TEXT.get(action.dest)


def _name(action: argparse.Action) -> str:
    return action.option_strings[-1] if action.option_strings else action.dest


def _cases():
    for command, action in _value_flags():
        for value, expected in _bad_values(action) or []:
            if expected != AFTER_LOAD:
                yield pytest.param(command, action.dest, value, expected, id=f"{command} {_name(action)} {value!r}")


def test_every_flag_is_tried():
    untried = [f"{command} {_name(action)}" for command, action in _value_flags() if _bad_values(action) is None]
    assert not untried, f"no bad values for {untried}: add them to BAD_TYPED (by type) or FREE_TEXT (by name)"


@pytest.mark.parametrize("command,dest,value,expected", list(_cases()))
def test_every_flag_refuses_bad_values_at_once(workdir, capfd, command, dest, value, expected):
    (workdir / "sweep.yaml").write_text("models: [tiny]\nconfigs: [none]\nresults: out/results.jsonl\n")
    action = next(a for a in _commands()[command]._actions if a.dest == dest)
    needs = list(NEEDS.get(command, []))
    if command == "inspect":
        needs = ["badprog"] if dest in ARTIFACT_FLAGS else needs
    if action.option_strings:
        argv = [command, *needs, action.option_strings[-1], value]
    else:  # the positional argument itself
        argv = [command, value]
    if expected == ACCEPTED:
        code = main(argv)
        err = capfd.readouterr().err
        assert code == 1 and "loaded a model" in err, f"{argv} was not taken: {err}"
        return
    last = fails_at_once(argv, expected, workdir, capfd)
    assert _name(action) in last, f"the message does not name {_name(action)}: {last}"


# --- output locations: checked before any work, never over an input -----------------------------------------

@pytest.mark.parametrize("argv,fragment", [
    (["compile", "--model", "model", "--out", "model", "--force"],
     "--out model is the input model, which replacing it would remove; give a folder of its own"),
    (["compile", "--out", ".", "--force"], "--out . is the current folder, which replacing it would remove"),
    (["compile", "--model", "model", "--out", "..", "--force"], "--out .. holds the current folder"),
    (["compile", "--out", "/proc/art"], "--out /proc/art cannot be written: creating a file in /proc fails"),
    (["eval", "--model", "badprog", "--output", "badprog/report.json"],
     "--output badprog/report.json would overwrite a file of the input badprog; give another path"),
    (["eval", "--model", "model", "--output", "model/config.json", "--pattern", "2:4"],
     "--output model/config.json would overwrite a file of the input model"),
    (["eval", "--pattern", "2:4", "--calib-data", "file.txt", "--output", "file.txt"],
     "--output file.txt would overwrite the input file.txt"),
    (["eval", "--output", "/proc/self/result.json"], "cannot be written: creating a file in /proc/self fails"),
    (["sensitivity", "--output", "/sys/layers.json"], "cannot be written: creating a file in /sys fails"),
    (["bench", "--out", "/proc/bench"], "--out /proc/bench cannot be written"),
    (["sweep", "results-under-a-file.yaml"],
     "sweep file results-under-a-file.yaml: results file.txt/out/results.jsonl lies under file.txt, which is a file"),
    (["sweep", "results-unwritable.yaml"], "results /proc/out/results.jsonl cannot be written"),
    (["sweep", "results-is-itself.yaml"], "results results-is-itself.yaml would overwrite the input"),
])
def test_an_output_that_cannot_be_written_fails_before_any_work(workdir, capfd, argv, fragment):
    for name, results in [("results-under-a-file", "file.txt/out/results.jsonl"),
                          ("results-unwritable", "/proc/out/results.jsonl"), ("results-is-itself", "IT")]:
        path = workdir / f"{name}.yaml"
        path.write_text(f"models: [tiny]\nconfigs: [none]\nresults: {results.replace('IT', path.name)}\n")
    fails_at_once(argv, fragment, workdir, capfd)


def test_a_writable_output_leaves_no_probe_behind(workdir):
    from actprune_compiler.reporting.files import check_output_file, check_output_folder

    before = _tree(workdir)
    check_output_file("new/result.json")
    check_output_folder("art", force=False)
    check_output_folder("full", force=True, replaced=False)
    assert _tree(workdir) == before


# --- damaged inputs: named, with what was expected ------------------------------------------------------------

DAMAGED_REPORTS = {
    "config is a string": ({**REPORT, "config": "2:4"},
                           "its config is a string \"2:4\", not an object"),
    "a list": ([REPORT], "it is a list"),
    "empty": ({}, "it lacks 'model'"),
    "no totals": ({k: v for k, v in REPORT.items() if k != "totals"}, "it lacks 'totals'"),
    "totals of text": ({**REPORT, "totals": {**REPORT["totals"], "replaced": "one"}},
                       "its totals['replaced'] is a string \"one\", not a whole number"),
    "a bad layer row": ({**REPORT, "layers": [{"module": "x"}]}, "its layers[0] lacks 'in_features'"),
    "an unknown config": ({**REPORT, "config": {"pattern": "2:4", "size": 3}},
                          "its config is not a config actprune reads (unknown SparsityConfig fields ['size']"),
    "a bad pattern": ({**REPORT, "config": {"pattern": "9:4"}},
                      "its config is not a config actprune reads (pattern '9:4' is invalid"),
}


@pytest.mark.parametrize("command", ["inspect", "eval"])
@pytest.mark.parametrize("damage", DAMAGED_REPORTS)
def test_a_damaged_report_is_named_with_what_was_expected(workdir, capfd, command, damage):
    report, fragment = DAMAGED_REPORTS[damage]
    (workdir / "art").mkdir()
    (workdir / "art" / "report.json").write_text(json.dumps(report))
    argv = ["inspect", "art"] if command == "inspect" else ["eval", "--model", "art"]
    last = fails_at_once(argv, f"art/report.json is damaged: {fragment}", workdir, capfd)
    assert "actprune compile writes an object with model, model_class, device, dtype, label, config" in last
    assert last.endswith("; recompile the artifact")


def test_a_report_that_is_not_text_is_named(workdir, capfd):
    (workdir / "art").mkdir()
    (workdir / "art" / "report.json").write_bytes(b"\xff\xfe\x00binary")
    fails_at_once(["inspect", "art"], "art/report.json is not valid JSON (not text); recompile", workdir, capfd)


@pytest.mark.parametrize("argv, fragment", [
    (["compare", "--quant", "int8,int8"], "argument --quant: int8,int8 names a quantisation format twice"),
    (["compare", "--llamacpp", "F32,F32"], "argument --llamacpp: F32,F32 names a llama.cpp weight type"),
    (["compare", "--pattern", "8:16,8:16"], "argument --pattern: 8:16,8:16 names a pattern twice"),
])
def test_a_list_that_names_a_variant_twice_is_refused(workdir, capfd, argv, fragment):
    fails_at_once(argv, fragment, workdir, capfd)
