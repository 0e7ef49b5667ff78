"""`actprune-lm-eval`: plain task names scored from the local copy (or, opted out, left to lm-eval), the
--include_path clash, and what its results and --log_samples files record (tiny model)."""

import argparse
import glob
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch


def _written(path):
    import yaml

    return yaml.safe_load(open(path))


@pytest.mark.usefixtures("data_dir")
def test_plain_names_with_local_files_become_local_yamls_under_their_plain_names(tmp_path, capsys):
    from actprune_compiler.commands.lm_eval_cli import add_local_tasks
    from actprune_compiler.eval.data import task_data

    args = argparse.Namespace(tasks=["arc_easy", "hellaswag", "lambada_openai", "actprune_local_boolq", "arc_easy"],
                              include_path=None)
    assert task_data("hellaswag") is None  # no local copy: it must go to lm-eval as it is
    assert add_local_tasks(args, tmp_path) == {"arc_easy": "arc_easy", "actprune_local_boolq": "boolq"}
    assert args.tasks == [str(tmp_path / "arc_easy.yaml"), "hellaswag", "lambada_openai",
                          str(tmp_path / "actprune_local_boolq.yaml")]
    plain, prefixed = _written(tmp_path / "arc_easy.yaml"), _written(tmp_path / "actprune_local_boolq.yaml")
    assert plain["task"] == "arc_easy" and plain["tag"] == [] and plain["dataset_path"] == "json"
    assert plain["include"].endswith("lm_eval/tasks/arc/arc_easy.yaml") and plain["test_split"] == "test"
    assert prefixed["task"] == "actprune_local_boolq" and prefixed["tag"] == ["actprune_local"]
    err = capsys.readouterr().err
    local_file = str(task_data("arc_easy")["arc_easy/ARC-Easy-Test.jsonl"])
    assert f"actprune-lm-eval: arc_easy: scoring the local copy {local_file} (--actprune-hub-tasks" in err
    assert "hellaswag: no local copy in" in err and "lambada" not in err
    assert err.count("arc_easy: scoring") == 1  # named twice, scored (and said) once


@pytest.mark.usefixtures("data_dir")
def test_the_hub_flag_leaves_plain_names_to_lm_eval_but_not_the_local_names(tmp_path, capsys):
    from actprune_compiler.commands.lm_eval_cli import add_local_tasks, take_hub_flag

    argv, hub = take_hub_flag(["actprune-lm-eval", "--tasks", "arc_easy", "--actprune-hub-tasks", "--limit", "5"])
    assert argv == ["actprune-lm-eval", "--tasks", "arc_easy", "--limit", "5"] and hub
    assert take_hub_flag(["x", "--tasks", "arc_easy"]) == (["x", "--tasks", "arc_easy"], False)
    args = argparse.Namespace(tasks=["arc_easy", "actprune_local_arc_easy"], include_path=None)
    assert add_local_tasks(args, tmp_path, hub_tasks=True) == {"actprune_local_arc_easy": "arc_easy"}
    assert args.tasks == ["arc_easy", str(tmp_path / "actprune_local_arc_easy.yaml")]
    err = capsys.readouterr().err
    assert "actprune-lm-eval: actprune_local_arc_easy: scoring the local copy" in err
    assert "actprune-lm-eval: arc_easy:" not in err


@pytest.mark.usefixtures("data_dir")
def test_main_takes_the_flag_out_before_lm_eval_parses(monkeypatch, capsys):
    """main() as the console script runs it, up to lm-eval's run: what lm-eval's parser and run get."""
    from lm_eval._cli import HarnessCLI

    from actprune_compiler.commands import lm_eval_cli

    seen = []
    monkeypatch.setattr(HarnessCLI, "execute", lambda self, args: seen.append((args.command, list(args.tasks))))
    base = ["actprune-lm-eval", "--model", "actprune", "--tasks", "arc_easy,piqa", "--limit", "2"]
    monkeypatch.setattr(sys, "argv", base)
    lm_eval_cli.main()
    monkeypatch.setattr(sys, "argv", [*base, "--actprune-hub-tasks"])
    lm_eval_cli.main()  # lm-eval's parser would exit 2 on an argument it does not know
    (command, local), (_, hub) = seen
    assert command == "run" and [os.path.basename(t) for t in local] == ["arc_easy.yaml", "piqa.yaml"]
    assert hub == ["arc_easy", "piqa"]


def test_an_include_path_defining_a_local_name_is_refused_and_other_include_paths_combine(tmp_path, data_dir):
    from actprune_compiler.commands.lm_eval_cli import add_local_tasks

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.yaml").write_text("task: arc_easy\ndataset_path: somewhere\noutput_type: multiple_choice\n")
    args = argparse.Namespace(tasks=["arc_easy"], include_path=str(mine))
    with pytest.raises(SystemExit, match=rf"--include_path {mine} defines arc_easy, which this command scores "
                                         rf"from actprune's local copy; pass --actprune-hub-tasks"):
        add_local_tasks(args, tmp_path)
    assert args.tasks == ["arc_easy"]  # nothing swapped before the refusal
    (mine / "a.yaml").write_text("task: my_task\ndataset_path: somewhere\noutput_type: multiple_choice\n")
    args = argparse.Namespace(tasks=["arc_easy", "my_task"], include_path=str(mine))
    add_local_tasks(args, tmp_path)
    assert args.tasks == [str(tmp_path / "arc_easy.yaml"), "my_task"] and args.include_path == str(mine)


def test_the_local_tag_and_names_fail_when_the_files_are_missing(monkeypatch, tmp_path):
    from actprune_compiler.commands.lm_eval_cli import local_tasks

    monkeypatch.setattr("actprune_compiler.eval.data.default_data_dirs", lambda: [tmp_path])  # an empty folder
    assert local_tasks(["arc_easy", "piqa"]) == {}  # plain names without files: lm-eval's hub tasks
    with pytest.raises(SystemExit, match="the tag actprune_local scores the local task files, and there are none"):
        local_tasks(["actprune_local"])
    with pytest.raises(SystemExit, match="needs the local piqa files, which are not there"):
        local_tasks(["actprune_local_piqa"])


@pytest.mark.usefixtures("data_dir")
def test_a_plain_name_runs_offline_from_the_local_copy_and_records_versions_and_samples(tiny_dir, tmp_path):
    """The command end to end, offline: arc_easy scored from data/, results keyed "arc_easy", the versions in
    the results file, and lm-eval's per-sample records of the actprune model."""
    from actprune_compiler.eval.data import task_data

    command = [sys.executable, "-m", "actprune_compiler.commands.lm_eval_cli", "--model", "actprune",
               "--model_args", f"pretrained={tiny_dir},pattern=2:4,compile=false", "--tasks", "arc_easy",
               "--limit", "4", "--device", "cpu", "--output_path", str(tmp_path), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (local_file,) = task_data("arc_easy").values()
    assert f"actprune-lm-eval: arc_easy: scoring the local copy {local_file}" in done.stderr

    (results,) = glob.glob(f"{tmp_path}/*/results_*.json")
    result = json.loads(open(results).read())
    assert list(result["results"]) == ["arc_easy"]
    assert result["configs"]["arc_easy"]["dataset_path"] == "json"
    assert 0 <= result["results"]["arc_easy"]["acc,none"] <= 1 and result["n-samples"]["arc_easy"]["effective"] == 4
    recorded = result["config"]["actprune"]["versions"]
    assert recorded["lm_eval"] == metadata.version("lm_eval") and recorded["datasets"] == metadata.version("datasets")
    assert recorded["torch"] == torch.__version__ and recorded["transformers"] == metadata.version("transformers")
    assert recorded["actprune"] and result["config"]["actprune"]["label"] == "2:4"

    (samples,) = glob.glob(f"{tmp_path}/*/samples_arc_easy_*.jsonl")
    rows = [json.loads(line) for line in open(samples)]
    first = [json.loads(line)["id"] for line in open(local_file).readlines()[:4]]
    assert sorted(r["doc_id"] for r in rows) == [0, 1, 2, 3]
    assert sorted(r["doc"]["id"] for r in rows) == sorted(first)  # the local file's documents, in its order
    for row in rows:
        lls = [float(ll) for ll, _ in row["filtered_resps"]]
        assert len(lls) == len(row["doc"]["choices"]["text"]) and all(ll < 0 for ll in lls)


@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize("extra,code,line", [
    (["--model_args", "pretrained=TINY,pattern=9:4"], 2,
     "actprune-lm-eval: error: pattern '9:4' is invalid; allowed: 'N:M' with 0 < N < M <= 256"),
    (["--model_args", "pretrained=TINY,pattern=2:4,exclude=down-proj"], 2,
     "actprune-lm-eval: error: exclude pattern 'down-proj' matches none of the 14 linear layers that modules selects"),
    (["--model_args", "pretrained=TINY,pattern=2:4", "--output_path", "/proc/results"], 2,
     "actprune-lm-eval: error: --output_path /proc/results cannot be written: creating a file in /proc fails"),
])
def test_a_bad_argument_is_one_line_as_in_actprune(tiny_dir, tmp_path, extra, code, line):
    command = [sys.executable, "-m", "actprune_compiler.commands.lm_eval_cli", "--model", "actprune",
               *[arg.replace("TINY", str(tiny_dir)) for arg in extra], "--tasks", "arc_easy", "--limit", "2",
               "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    said = [text for text in done.stderr.splitlines() if "error" in text.lower()]
    assert len(said) == 1 and said[0].startswith(line), done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == said[0]
    assert list(tmp_path.iterdir()) == []
