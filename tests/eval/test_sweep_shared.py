"""Two `actprune sweep` processes on one results file share its runs: each run is evaluated by one of them,
recorded exactly once, and both print the whole table (eval/sweep.py: a claim per run)."""

import json
import subprocess
import sys
import time
from pathlib import Path

from actprune_compiler.eval.sweep import data_checksum, run_key
from actprune_compiler.eval.sweep_file import load_sweep

CHILD = Path(__file__).with_name("sweep_shared_child.py")
SWEEP = """
models: [tiny]
options: {tasks: [wikitext2], max_windows: 2, seqlen: 64}
configs: [none, "2:4", "8:16"]
results: RESULTS
"""


def _wait_for(condition, processes, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # each process imports torch: seconds on a loaded machine
    while not condition():
        for process in processes:
            assert process.poll() is None, f"a sweep ended before {what}:\n{process.communicate()}"
        assert time.monotonic() < deadline, f"the sweeps never got to {what}"
        time.sleep(0.05)


def test_two_sweeps_on_one_file_run_each_run_once_and_both_print_the_whole_table(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(SWEEP.replace("RESULTS", str(tmp_path / "out" / "results.jsonl")))
    markers, go = tmp_path / "markers", tmp_path / "go"
    markers.mkdir()

    def start():
        return subprocess.Popen([sys.executable, str(CHILD), str(sweep_file), str(markers), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start()
    processes = [first]
    try:
        _wait_for(lambda: any(markers.iterdir()), processes, "the first one's first run")
        second = start()  # it plans while the first one holds its first run, unfinished
        processes.append(second)
        _wait_for(lambda: len(list(markers.iterdir())) == 2, processes, "a run of the second one")
        go.touch()  # now both hold a run each; let them go on
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
        assert out.count("| 2:4 |") == 1 and out.count("| 8:16 |") == 1 and "| none |" in out, out  # whole table
    assert "is being run by another process on the same results file" in outputs[1][1]
    sweep = load_sweep(sweep_file)
    records = [json.loads(line) for line in sweep.results.read_text().splitlines()]
    data = data_checksum(sweep.options)
    keys = sorted(run_key(m, c, sweep.options, sweep.dtype, data) for m in sweep.models for c in sweep.configs)
    assert sorted(r["key"] for r in records) == keys  # each run exactly once
    assert {r["pid"] for r in records} == {first.pid, second.pid}  # and both did some of them
    started = sorted(p.name.rsplit("-", 1)[0] for p in markers.iterdir())
    assert started == sorted(f"started-{r['pruning']}" for r in records)  # nothing evaluated twice either
    assert not list(sweep.results.parent.glob(".*.lock"))  # the claims are gone with their runs
