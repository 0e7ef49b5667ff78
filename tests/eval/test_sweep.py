"""Sweeps: resumable (skip what is done, including records written before a field existed), latest run wins,
and a week-long sweep survives anything: torn lines, SIGKILL mid-run, failing runs, bad files, Ctrl-C."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actprune_compiler import SparsityConfig
from actprune_compiler.cli import main
from actprune_compiler.commands.sweep import render
from actprune_compiler.eval import sweep as sweep_module
from actprune_compiler.eval.data import WIKITEXT_DIR
from actprune_compiler.eval.runner import EvalOptions
from actprune_compiler.eval.sweep import (
    append_result,
    data_checksum,
    read_records,
    read_results,
    result_key,
    run_key,
    run_sweep,
)
from actprune_compiler.eval.sweep_file import load_sweep

SWEEP = """
models: [tiny]
options: {tasks: [wikitext2], max_windows: 2, seqlen: 64}
configs:
  - none
  - {pattern: "2:4"}
  - {pattern: "8:16", target: weight}
results: RESULTS
"""


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("RESULTS", str(tmp_path / "out" / "results.jsonl")))
    return path


class Calls(list):
    """The labels evaluated, in order; the runs labelled in .fail raise, those in .interrupt get Ctrl-C."""

    def __init__(self):
        super().__init__()
        self.fail, self.interrupt = set(), set()


@pytest.fixture
def fake_evaluate(monkeypatch):
    calls = Calls()

    def evaluate(model_spec, config, options, *, dtype, loaded=None):
        calls.append(config.label if config else "none")
        if calls[-1] in calls.fail:
            raise RuntimeError(f"{calls[-1]} went wrong\non two lines")
        if calls[-1] in calls.interrupt:
            raise KeyboardInterrupt
        ppl = {"none": 10.0, "2:4": 30.0, "8:16 wt": 90.0}.get(calls[-1], 20.0)
        return {"model": model_spec, "config": config.to_dict() if config else None, "options": options.key(),
                "pruning": calls[-1], "runtime_s": 60.0 * len(calls), "total_s": 70.0, "replaced_linears": 14,
                "metrics": {"wikitext2": {"ppl": ppl},
                            "boolq": {"metrics": {"acc": 0.6, "acc_stderr": 0.02}}}}

    monkeypatch.setattr(sweep_module, "evaluate", evaluate)
    monkeypatch.setattr(sweep_module, "load_model", lambda spec, dtype: (None, None))
    # `actprune sweep` isolates each run in a spawned process, which would not see the fake: run it here
    monkeypatch.setattr(sweep_module, "_evaluate_in_child",
                        lambda model, config, options, dtype: evaluate(model, config, options, dtype=dtype))
    return calls


def test_sweep_runs_each_config_once_and_resumes(sweep_file, fake_evaluate):
    sweep = load_sweep(sweep_file)
    assert len(run_sweep(sweep, progress=False, isolate=False)) == 3
    assert fake_evaluate == ["none", "2:4", "8:16 wt"]
    run_sweep(sweep, progress=False, isolate=False)
    assert len(fake_evaluate) == 3  # nothing redone


def test_record_from_before_a_field_existed_counts_as_done(sweep_file, fake_evaluate, capsys):
    sweep = load_sweep(sweep_file)
    old = {"model": "tiny", "config": SparsityConfig("2:4").to_dict(), "options": sweep.options.key()}
    # fields added later, at their defaults
    del old["config"]["skip_sensitive"], old["options"]["compile"], old["options"]["batch_size"]
    sweep.results.parent.mkdir()
    sweep.results.write_text(json.dumps(old) + "\n" + '{"torn": ')  # and a crash mid-write
    assert result_key(old) == run_key("tiny", SparsityConfig("2:4"), sweep.options)  # no dtype, no data checksum
    run_sweep(sweep, progress=False, isolate=False)
    assert fake_evaluate == ["none", "8:16 wt"]
    assert "skipped 1 torn line(s)" in capsys.readouterr().out


def test_a_rerun_replaces_the_older_record(tmp_path):
    options = EvalOptions(max_windows=2).key()
    first = {"model": "tiny", "config": None, "options": options, "runtime_s": 9.0}
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (first, {**first, "config": SparsityConfig("2:4").to_dict()},
                                                       {**first, "runtime_s": 5.0})) + "\n")
    rows = read_results(path)
    assert [(r["config"] is None, r["runtime_s"]) for r in rows] == [(False, 9.0), (True, 5.0)]


def test_bad_sweep_files_say_what_is_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [tiny]\nconfigs: [none]\noptions: {windows: 3}\n")
    with pytest.raises(ValueError, match="unknown sweep options"):
        load_sweep(path)
    path.write_text("configs: [none]\n")
    with pytest.raises(ValueError, match="models and configs required"):
        load_sweep(path)


def test_render_writes_the_seed_table_and_the_methods_table(sweep_file, fake_evaluate, tmp_path):
    sweep = load_sweep(sweep_file)
    run_sweep(sweep, progress=False, isolate=False)
    table, image = render(sweep, "sweep.yaml")
    text = table.read_text()
    assert "| 2:4 | 30.000 |" in text and "| 2.00x | 14 |" in text  # runtime vs the dense run of the sweep
    assert "differences under about 0.040 are within noise" in text and image.stat().st_size > 0
    sweep.options.max_windows = 4  # the sweep file changed: the runs at 2 windows are not this sweep's rows
    run_sweep(sweep, progress=False, isolate=False)
    text = render(sweep, "sweep.yaml")[0].read_text()
    assert text.count("| 2:4 | 30.000 |") == 1 and "first 4 windows" in text
    assert len(read_results(sweep.results)) == 6  # both versions' records are kept
    methods = load_sweep(sweep_file)
    methods.table = "methods"
    table, _ = render(methods, "sweep.yaml")
    text = table.read_text()
    assert "| magnitude | **30.00** |" in text and "| weight magnitude |  | 90.00 |" in text
    assert "closes 0% of the gap to dense (short of the goal of half)" in text


def _keys(sweep):
    data = data_checksum(sweep.options)
    return sorted(run_key(m, c, sweep.options, sweep.dtype, data) for m in sweep.models for c in sweep.configs)


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "results.jsonl"
    whole = {"model": "tiny", "config": None, "options": EvalOptions().key()}
    torn = json.dumps({**whole, "config": SparsityConfig("2:4").to_dict()})[:40]  # killed mid-write
    path.write_text(json.dumps(whole) + "\n" + torn)
    new = {**whole, "config": SparsityConfig("8:16").to_dict()}
    append_result(path, new)
    assert read_results(path) == [whole, new]
    assert read_records(path) == ([whole, new], 1)
    assert path.read_text() == json.dumps(whole) + "\n" + torn + "\n" + json.dumps(new) + "\n"


def test_a_sweep_killed_mid_run_resumes_with_every_run_exactly_once(sweep_file, fake_evaluate, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("sweep_child.py")), str(sweep_file),
                              str(markers), "2:4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = load_sweep(sweep_file)
    try:
        deadline = time.monotonic() + 120  # the child imports torch: seconds on a loaded machine
        while not ((markers / "started-2").exists() and sweep.results.exists()):
            assert child.poll() is None, f"the sweep ended before it was killed:\n{child.communicate()[0]}"
            assert time.monotonic() < deadline, "the sweep never reached its second run"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # in the middle of the second run ("2:4")
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert len(read_results(sweep.results)) == 1  # the first run, finished before the kill
    run_sweep(sweep, progress=False, isolate=False)
    assert fake_evaluate == ["2:4", "8:16 wt"]  # the killed run is redone, the finished one is not
    lines = sweep.results.read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == _keys(sweep)
    assert sorted(r["key"] for r in read_results(sweep.results)) == _keys(sweep)


def test_a_failing_run_is_recorded_the_others_go_on_and_the_next_invocation_retries_it(
        sweep_file, fake_evaluate, capsys):
    fake_evaluate.fail.add("2:4")
    assert main(["sweep", str(sweep_file)]) == 1
    err = capsys.readouterr().err
    assert "failed: tiny 2:4: RuntimeError: 2:4 went wrong on two lines" in err and "1 run(s) failed" in err
    sweep = load_sweep(sweep_file)
    data = data_checksum(sweep.options)
    failed = [r for r in read_results(sweep.results) if r.get("status") == "failed"]
    assert [(r["model"], r["pruning"], r["error"]) for r in failed] == [
        ("tiny", "2:4", "RuntimeError: 2:4 went wrong on two lines")]
    assert failed[0]["config"] == SparsityConfig("2:4").to_dict() and "Traceback" in failed[0]["traceback"]
    assert failed[0]["key"] == run_key("tiny", SparsityConfig("2:4"), sweep.options, "float32", data)
    assert len(read_results(sweep.results)) == 3 and fake_evaluate == ["none", "2:4", "8:16 wt"]
    table = sweep.results.with_name("table.md").read_text()
    assert "| none |" in table and "| 2:4 |" not in table  # rendering skips the failed run

    fake_evaluate.fail.clear()
    assert main(["sweep", str(sweep_file)]) == 0
    assert fake_evaluate[3:] == ["2:4"]  # only the failed run is retried
    rows = read_results(sweep.results)
    assert len(rows) == 3 and not [r for r in rows if r.get("status") == "failed"]
    assert "| 2:4 | 30.000 |" in sweep.results.with_name("table.md").read_text()


def test_ctrl_c_keeps_finished_runs_leaves_no_partial_line_and_exits_130(sweep_file, fake_evaluate, capsys):
    fake_evaluate.interrupt.add("2:4")
    assert main(["sweep", str(sweep_file)]) == 130
    assert "interrupted: finished runs are saved" in capsys.readouterr().out
    results = load_sweep(sweep_file).results
    assert [r["pruning"] for r in read_results(results)] == ["none"] and results.read_text().endswith("}\n")


GOOD = "models: [tiny]\nconfigs: [none]\n"
BAD_SWEEPS = {
    "models: [tiny\nconfigs: [none]\n": "is not valid YAML at line 2",
    "- tiny\n": "must be a mapping with keys models, configs",
    "models: smollm2-135m\nconfigs: [none]\n": "models must be a list (models: [smollm2-135m]), not the str",
    "models: [tiny]\nconfigs: 8:16\n": 'configs must be a list (configs: [none, "8:16"]), not the int 496',
    GOOD + "model: tiny\n": "unknown key(s) ['model']",
    GOOD.replace("[none]", '[none, {pattern: "4:2"}]'): "configs entry 2 ({'pattern': '4:2'}): pattern '4:2'",
    GOOD.replace("[none]", "\n  - 2:4"): 'not the int 124 (YAML reads an unquoted N:M in base 60',
    GOOD + "options: {tasks: wikitext2}\n": "option tasks must be a list of str, not the str 'wikitext2'",
    GOOD + "options: {seqlen: long}\n": "option seqlen must be int, not the str 'long'",
    GOOD + "options: {windows: 3}\n": "unknown sweep options ['windows']",
    GOOD + "options: [seqlen]\n": "options must be a mapping",
    "configs: [none]\n": "models and configs required",
    # values, not only types: each as the eval command's flag would check it
    GOOD + "options: {tasks: [wikitext2, arc_eesy]}\n":
        "option tasks has unknown task 'arc_eesy'; give wikitext2 or any lm-eval task or group",
    GOOD + "options: {tasks: []}\n": "option tasks is empty; give wikitext2 or any lm-eval task or group",
    GOOD + "options: {bos: sometimes}\n": "option bos 'sometimes' is unknown; allowed: auto, window, start, none",
    GOOD + "dtype: float8\n": "dtype 'float8' is unknown; allowed: float32, bfloat16, float16, float64",
    GOOD + "options: {calib_data: nowhere/calib.txt}\n":
        "option calib_data 'nowhere/calib.txt' is neither wikitext2-validation, wikitext2-train "
        "nor an existing text file",
    GOOD + "options: {seqlen: 1}\n": "option seqlen 1 is too small; it must be an integer >= 2",
    GOOD + "options: {batch_size: 0}\n": "option batch_size 0 is too small; it must be a positive integer",
    GOOD + "options: {max_windows: 0}\n": "option max_windows 0 is too small; it must be a positive integer",
    GOOD + "options: {limit: 0}\n": "option limit 0 is not allowed; it must be a fraction between 0 and 1 "
                                    "or a whole count of examples >= 1",
    GOOD + "options: {limit: 2.5}\n": "option limit 2.5 is not allowed; it must be a fraction",
    GOOD + "options: {num_fewshot: -1}\n": "option num_fewshot -1 is too small; it must be an integer >= 0",
}


@pytest.mark.parametrize("text", BAD_SWEEPS)
def test_a_bad_sweep_file_is_one_sentence_naming_the_problem(tmp_path, capsys, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["sweep", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"actprune: error: sweep file {path}") and BAD_SWEEPS[text] in last, last


def test_allowed_option_values_load(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("some text\n")
    path = tmp_path / "good.yaml"
    path.write_text(GOOD + f"dtype: bfloat16\noptions: {{tasks: [wikitext2, hellaswag], bos: window, seqlen: 2, "
                           f"batch_size: 1, max_windows: 1, limit: 0.5, num_fewshot: 0, calib_data: {calib}}}\n")
    sweep = load_sweep(path)
    assert sweep.dtype == "bfloat16" and sweep.options.tasks == ("wikitext2", "hellaswag")
    assert sweep.options.limit == 0.5 and sweep.options.num_fewshot == 0 and sweep.options.calib_data == str(calib)
    path.write_text(GOOD + "options: {limit: 4, calib_data: wikitext2-train, max_windows: null}\n")
    assert load_sweep(path).options.limit == 4


def test_a_missing_sweep_file_is_one_sentence(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"actprune: error: sweep file {tmp_path / 'nope.yaml'} does not exist"


def test_the_run_key_changes_with_everything_that_changes_the_result(tmp_path):
    base = EvalOptions(max_windows=2)
    changed = [dataclasses.replace(base, **change) for change in (
        {"batch_size": 8}, {"seqlen": 64}, {"bos": "window"}, {"max_windows": 4}, {"limit": 100},
        {"num_fewshot": 5}, {"apply_chat_template": True}, {"compile": False}, {"calib_data": "wikitext2-train"},
        {"tasks": ("wikitext2", "boolq")})]
    keys = [run_key("tiny", None, base, "float32", "abc"), run_key("tiny", None, base, "bfloat16", "abc"),
            run_key("tiny", None, base, "float32", "abd"), run_key("other", None, base, "float32", "abc"),
            run_key("tiny", SparsityConfig("2:4"), base, "float32", "abc"),
            *(run_key("tiny", None, options, "float32", "abc") for options in changed)]
    assert len(set(keys)) == len(keys)

    # the data checksum follows the content of the files the runs read
    for split in ("test", "validation"):
        (tmp_path / WIKITEXT_DIR / split).mkdir(parents=True)
        (tmp_path / WIKITEXT_DIR / split / "data-00000-of-00001.arrow").write_bytes(split.encode())
    options = EvalOptions(data_dir=str(tmp_path))
    first = data_checksum(options)
    assert len(first) == 12 and data_checksum(options) == first
    (tmp_path / WIKITEXT_DIR / "test" / "data-00000-of-00001.arrow").write_bytes(b"changed")
    assert data_checksum(options) != first


def test_recovery_table_shows_the_gap_closed_and_the_cost():
    from actprune_compiler.eval.render import method_name, recovery_table

    def result(config, ppl, recovery=None):
        return {"model": "tiny", "pruning": config.label if config else "none",
                "config": config.to_dict() if config else None, "metrics": {"wikitext2": {"ppl": ppl}},
                "calibration": {"recovery": recovery} if recovery else None}

    learned = {"kl_held_out_before": 0.9, "kl_held_out_after": 0.45, "seconds": 120.0, "train_tokens": 81920,
               "extra_constant_values": 1000}
    tuned = SparsityConfig("8:16", recovery="finetune", recovery_steps=40)
    results = [result(None, 20.0), result(SparsityConfig("8:16"), 44.0), result(tuned, 32.0, learned)]
    text = recovery_table(results, "tiny")
    assert method_name(tuned.to_dict()) == "magnitude + finetune (40 steps)"
    assert "| 8:16 | magnitude + finetune (40 steps) | 32.00 | 50% |" in text
    assert "| 0.900 -> 0.450 | 2.0 min, 81,920 tokens | a bias add | 1,000 values |" in text


def test_a_rotation_is_reported_with_its_cost_and_never_as_the_free_best():
    from actprune_compiler.eval.render import method_name, methods_table, recovery_table

    def result(config, ppl, rotation=None):
        return {"model": "tiny", "pruning": config.label if config else "none",
                "config": config.to_dict() if config else None, "metrics": {"wikitext2": {"ppl": ppl}},
                "calibration": {"rotation": rotation} if rotation else None}

    cost = {"extra_flops_fraction": 0.948, "constant_values": 4096}
    rotated = SparsityConfig("8:16", rotation="pca")
    results = [result(None, 20.0), result(SparsityConfig("8:16"), 44.0), result(rotated, 30.0, cost),
               result(SparsityConfig("8:16", correction="variance"), 40.0)]
    assert method_name(rotated.to_dict()) == "magnitude + pca rotation"
    assert "| 30.00 | 58% |" in recovery_table(results, "tiny")
    assert "| 94.8% of the pruned GEMMs (x @ Q) | 4,096 values |" in recovery_table(results, "tiny")
    table, gaps = methods_table(results, "tiny")
    assert "| magnitude + variance | **40.00** |" in table and "| magnitude + pca rotation | 30.00 |" in table
    assert gaps["8:16"]["free"]["best"] == "magnitude + variance"
    assert gaps["8:16"]["with_extra_work"]["best"] == "magnitude + pca rotation"


@pytest.mark.parametrize("table", ["seed", "methods"])
def test_a_model_given_as_a_folder_path_gets_its_plot_where_the_table_links_it(tmp_path, fake_evaluate, table):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("[tiny]", f"[{tmp_path}/models/tiny]").replace("RESULTS", str(tmp_path / "out" /
                                                                                             "results.jsonl"))
                    + f"table: {table}\n")
    sweep = load_sweep(path)
    run_sweep(sweep, progress=False, isolate=False)
    written = render(sweep, "sweep.yaml")
    text = written[0].read_text()
    links = [line.split("](", 1)[1].rstrip(")\n") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 1 and "/" not in links[0], links  # a file beside table.md
    assert (sweep.results.parent / links[0]).is_file() and written[1] == sweep.results.parent / links[0]
    assert links[0].endswith(f"{str(tmp_path).strip('/').replace('/', '-')}-models-tiny.png")
    assert sorted(p.name for p in sweep.results.parent.iterdir() if p.is_dir()) == []  # no nested folders


def test_a_results_folder_that_cannot_be_written_fails_before_the_first_run(tmp_path, fake_evaluate, capsys):
    (tmp_path / "file.txt").write_text("not a folder\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("RESULTS", str(tmp_path / "file.txt" / "results.jsonl")))
    assert main(["sweep", str(path)]) == 2
    assert fake_evaluate == []
    assert capsys.readouterr().err.strip() == (
        f"actprune: error: sweep file {path}: results {tmp_path}/file.txt/results.jsonl lies under "
        f"{tmp_path}/file.txt, which is a file, not a folder")
