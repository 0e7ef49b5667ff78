"""Sweeps on several workers (eval/workers.py): each run exactly once, both workers busy on their own cores
and caches, a SIGKILL of the whole process tree resumed, torchrun started by hand, bad --workers refused.

The workers are real processes started by torchrun's elastic agent (sweep_workers_child.py); only the
evaluation of each run is a fake, which records where it ran."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actprune_compiler.cli import main
from actprune_compiler.eval import sweep as sweep_module
from actprune_compiler.eval import workers as workers_module
from actprune_compiler.eval.sweep import data_checksum, read_results, run_key
from actprune_compiler.eval.sweep_file import load_sweep

CHILD = Path(__file__).with_name("sweep_workers_child.py")
SWEEP = """
models: [tiny]
options: {tasks: [wikitext2], max_windows: 2, seqlen: 64}
configs: [none, "2:4", "4:8", "8:16"]
results: RESULTS
"""
# pending runs in sweep order, split i % 2: worker 0 takes none and 4:8, worker 1 takes 2:4 and 8:16
SHARES = {0: ["none", "4:8"], 1: ["2:4", "8:16"]}


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("RESULTS", str(tmp_path / "out" / "results.jsonl")))
    (tmp_path / "markers").mkdir()
    return path


def _env(tmp_path, **settings) -> dict[str, str]:
    env = {**os.environ, "SWEEP_TEST_MARKERS": str(tmp_path / "markers"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), **settings}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        env.pop(name, None)  # a clean launch, whatever the test process inherited
    return env


def _lines(sweep) -> list[dict]:
    return [json.loads(line) for line in sweep.results.read_text().splitlines()]


def _keys(sweep) -> list[str]:
    data = data_checksum(sweep.options)
    return sorted(run_key(m, c, sweep.options, sweep.dtype, data) for m in sweep.models for c in sweep.configs)


def _by_rank(records) -> dict[int, list[str]]:
    ranks: dict[int, list[str]] = {}
    for record in records:
        ranks.setdefault(record["rank"], []).append(record["pruning"])
    return ranks


def test_two_workers_run_every_run_once_each_on_its_own_cores_and_cache(sweep_file, tmp_path):
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(CHILD), "launch", str(sweep_file)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep = load_sweep(sweep_file)
    lines = _lines(sweep)
    assert sorted(r["key"] for r in lines) == _keys(sweep)  # every run, once
    assert _by_rank(lines) == SHARES  # both workers did their share
    assert 'results: ["none", "2:4", "4:8", "8:16"]' in done.stdout  # rank 0's results, in sweep order
    assert "sweep: 0 of 4 run(s) already in" in done.stdout and "; 2 workers" in done.stdout
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    first, second = ({**r, "cores": set(r["cores"] or ())} for r in lines if r["pruning"] in ("none", "2:4"))
    for record in (first, second):
        assert record["threads"] == max(1, cores // 2) and record["omp_threads"] == str(record["threads"])
        assert record["inductor_cache"] == str(tmp_path / "inductor" / f"rank{record['rank']}")
    if hasattr(os, "sched_setaffinity") and cores >= 2:
        assert first["cores"] and second["cores"] and not first["cores"] & second["cores"]
    assert time.monotonic() - start < 120


def test_a_sweep_killed_mid_run_resumes_on_two_workers_with_every_run_exactly_once(sweep_file, tmp_path):
    markers = tmp_path / "markers"
    child = subprocess.Popen([sys.executable, str(CHILD), "launch", str(sweep_file)],
                             env=_env(tmp_path, SWEEP_TEST_SLOW="4:8,8:16", SWEEP_TEST_ATTEMPT="first"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sweep = load_sweep(sweep_file)
    try:
        deadline = time.monotonic() + 180  # the launcher and both workers import torch: seconds on a busy machine
        # both workers are in their second run, after recording their first
        while not ((markers / "started-4:8").exists() and (markers / "started-8:16").exists()):
            assert child.poll() is None, f"the sweep ended before it was killed:\n{child.communicate()[0]}"
            assert time.monotonic() < deadline, "the workers never reached their second runs"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)  # the launcher, the agent's workers, everything
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
    assert sorted(r["pruning"] for r in read_results(sweep.results)) == ["2:4", "none"]

    done = subprocess.run([sys.executable, str(CHILD), "launch", str(sweep_file)],
                          env=_env(tmp_path, SWEEP_TEST_ATTEMPT="rerun"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sweep: 2 of 4 run(s) already in" in done.stdout
    lines = _lines(sweep)
    assert sorted(r["key"] for r in lines) == _keys(sweep)  # nothing lost, nothing twice
    rerun = [r for r in lines if r["attempt"] == "rerun"]
    assert _by_rank(rerun) == {0: ["4:8"], 1: ["8:16"]}  # the two killed runs, one per worker


def test_torchrun_started_by_hand_runs_the_sweep_renders_once_and_exits_1_for_a_failed_run(sweep_file, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(CHILD), "cli", str(sweep_file)]
    done = subprocess.run(command, env=_env(tmp_path, SWEEP_TEST_FAIL="8:16"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    sweep = load_sweep(sweep_file)
    lines = _lines(sweep)
    assert sorted(r["key"] for r in lines) == _keys(sweep)
    assert [r["pruning"] for r in lines if r.get("status") == "failed"] == ["8:16"]
    assert _by_rank([r for r in lines if "rank" in r]) == {0: ["none", "4:8"], 1: ["2:4"]}
    assert done.stdout.count("wrote ") == 2 and done.stdout.count("# actprune results") == 1  # rank 0 only
    assert "1 run(s) failed" in done.stderr and "| 4:8 |" in sweep.results.with_name("table.md").read_text()
    # rank 0 alone exits 1, after rendering; the others exit 0, so the agent never stops rank 0 mid-write
    assert "exitcode  : 1" in done.stderr and "rank      : 0 (local_rank: 0)" in done.stderr
    assert "SIGTERM" not in done.stderr and "rank      : 1" not in done.stderr


BAD_WORKERS = {"0": "argument --workers: 0 is too small; it must be a positive integer",
               "two": "argument --workers: 'two' is not a whole number; it must be a positive integer"}


@pytest.mark.parametrize("value", BAD_WORKERS)
def test_a_bad_workers_value_is_one_sentence_before_anything_loads(sweep_file, monkeypatch, capsys, value):
    def never(*args, **kwargs):
        raise AssertionError("nothing may load or launch for a bad --workers")

    monkeypatch.setattr(sweep_module, "load_model", never)
    monkeypatch.setattr(sweep_module, "evaluate", never)
    monkeypatch.setattr(workers_module, "launch_sweep", never)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(sweep_file), "--workers", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"actprune: error: {BAD_WORKERS[value]} (see 'actprune sweep --help')"


def test_workers_under_torchrun_is_one_sentence(sweep_file, monkeypatch, capsys):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert main(["sweep", str(sweep_file), "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "actprune: error: --workers 2 cannot be combined with torchrun, which started 2 workers already; "
        "drop --workers under torchrun")


def test_a_runs_own_process_is_not_one_of_the_workers(monkeypatch):
    """A run's process inherits torchrun's variables from its worker; evaluation must not see them."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.setenv(name, "1")
    sweep_module._one_process()
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"} & set(os.environ)


def _append_many(path: str, writer: int) -> None:
    for index in range(40):  # lines of 64 kB: far beyond what one write() is sure to keep whole on a pipe
        sweep_module.append_result(Path(path), {"writer": writer, "index": index, "pad": "x" * 65536})


def test_records_appended_by_several_processes_at_once_stay_whole_lines(tmp_path):
    import multiprocessing

    path = tmp_path / "results.jsonl"
    path.write_text('{"model": "tiny"}\n{"torn": ')  # a crash mid-write, before the workers start
    context = multiprocessing.get_context("fork")  # no imports to repeat: the test is the appending
    writers = [context.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    records, torn = sweep_module.read_records(path)
    assert torn == 1 and records[0] == {"model": "tiny"}
    assert sorted((r["writer"], r["index"]) for r in records[1:]) == [(w, i) for w in range(4) for i in range(40)]
    assert path.read_text().count("\n\n") == 0  # one writer alone ended the torn line


@pytest.mark.parametrize("visible", [None, "3,5"])
def test_each_worker_gets_its_gpu_its_cores_and_its_cache(monkeypatch, tmp_path, visible):
    """The binding on a 2-GPU, 4-core machine, faked: no GPU here, and the test process keeps its own cores."""
    import torch

    from actprune_compiler.eval.workers import WorkerInfo, bind_worker

    for name in ("OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, "set by the test")  # restored afterwards, as bind_worker changes them
        monkeypatch.delenv(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    pinned = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: pinned.append(list(cores)), raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    ids = visible.split(",") if visible else ["0", "1"]
    for rank in range(3):
        if visible:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)  # what each worker inherits
        else:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
        binding = bind_worker(WorkerInfo(rank, 3, rank, 3))
        assert binding.device == f"cuda:{rank % 2}" and os.environ["CUDA_VISIBLE_DEVICES"] == ids[rank % 2]
        assert binding.threads == 1 and os.environ["OMP_NUM_THREADS"] == "1" and pinned[-1] == [rank]
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / f"rank{rank}")


def test_more_workers_than_the_machine_holds_is_one_sentence(sweep_file, monkeypatch, capsys):
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 4)
    monkeypatch.setattr(workers_module, "free_memory", lambda: 64 << 30)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(sweep_file), "--workers", "5"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "actprune: error: argument --workers: 5 is more than this machine holds: this process may use 4 core(s) and "
        "each worker needs one of its own; give 4 or fewer (see 'actprune sweep --help')")
    monkeypatch.setattr(workers_module, "free_memory", lambda: 3 << 30)  # 3 GB free: room for 3 workers
    with pytest.raises(SystemExit):
        main(["sweep", str(sweep_file), "--workers", "4"])
    assert capsys.readouterr().err.strip() == (
        "actprune: error: argument --workers: 4 is more than this machine holds: 3.0 GB of memory is free and each "
        "worker, with the process of its run, holds about 1 GB before any model is loaded; give 3 or fewer "
        "(see 'actprune sweep --help')")
