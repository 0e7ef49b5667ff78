"""Sweeps: resumable (skip what is done, including records written before a field existed), latest run wins."""

import json

import pytest

from actprune_compiler import SparsityConfig
from actprune_compiler.commands.sweep import render
from actprune_compiler.eval import sweep as sweep_module
from actprune_compiler.eval.runner import EvalOptions
from actprune_compiler.eval.sweep import load_sweep, read_results, result_key, run_key, run_sweep

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


@pytest.fixture
def fake_evaluate(monkeypatch):
    calls = []

    def evaluate(model_spec, config, options, *, dtype, loaded):
        calls.append(config.label if config else "none")
        ppl = {"none": 10.0, "2:4": 30.0, "8:16 wt": 90.0}.get(calls[-1], 20.0)
        return {"model": model_spec, "config": config.to_dict() if config else None, "options": options.key(),
                "pruning": calls[-1], "runtime_s": 60.0 * len(calls), "total_s": 70.0, "replaced_linears": 14,
                "metrics": {"wikitext2": {"ppl": ppl},
                            "boolq": {"metrics": {"acc": 0.6, "acc_stderr": 0.02}}}}

    monkeypatch.setattr(sweep_module, "evaluate", evaluate)
    monkeypatch.setattr("actprune_compiler.models.load_model", lambda spec, dtype: (None, None))
    return calls


def test_sweep_runs_each_config_once_and_resumes(sweep_file, fake_evaluate):
    sweep = load_sweep(sweep_file)
    assert len(run_sweep(sweep, progress=False, isolate=False)) == 3
    assert fake_evaluate == ["none", "2:4", "8:16 wt"]
    run_sweep(sweep, progress=False, isolate=False)
    assert len(fake_evaluate) == 3  # nothing redone


def test_record_from_before_a_field_existed_counts_as_done(sweep_file, fake_evaluate):
    sweep = load_sweep(sweep_file)
    old = {"model": "tiny", "config": SparsityConfig("2:4").to_dict(), "options": sweep.options.key()}
    del old["config"]["skip_sensitive"], old["options"]["compile"]  # fields added later, at their defaults
    sweep.results.parent.mkdir()
    sweep.results.write_text(json.dumps(old) + "\n" + '{"torn": ')  # and a crash mid-write
    assert result_key(old) == run_key("tiny", SparsityConfig("2:4"), sweep.options)
    run_sweep(sweep, progress=False, isolate=False)
    assert fake_evaluate == ["none", "8:16 wt"]


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
    methods = load_sweep(sweep_file)
    methods.table = "methods"
    table, _ = render(methods, "sweep.yaml")
    text = table.read_text()
    assert "| magnitude | **30.00** |" in text and "| weight magnitude |  | 90.00 |" in text
    assert "closes 0% of the gap to dense (short of the goal of half)" in text
