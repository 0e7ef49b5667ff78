"""Ctrl-C (SIGINT, sent to the whole process group as a terminal does) and SIGTERM (sent to the command's
process alone, as `kill` does), in each phase of a real command: one line, exit 130 or 143, no traceback,
no result written and no temporary file left, and no process of the command left running.

Each phase is reached for certain, not after a sleep: the command stops there and says so on stderr
(signal_child.py), or, for the imports, `python -X importtime` names each module as it is imported."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import save_tiny

CHILD = Path(__file__).with_name("signal_child.py")
SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}
STOPPED = "finished results are saved, nothing half-written was left"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("signals") / "tiny")


def _start(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """The command in a session of its own (its process group holds it and every process it starts)."""
    environment = {**os.environ, **env}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        environment.pop(name, None)
    return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for_line(process: subprocess.Popen, found, timeout: float = 240) -> list[str]:
    """stderr's lines up to the first that `found` accepts (the command is then in the phase)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break  # the command ended
        lines.append(line)
        if found(line):
            return lines
    process.kill()
    raise AssertionError(f"the phase was never reached:\n{''.join(lines)}{process.communicate()[1]}")


def _send(process: subprocess.Popen, name: str) -> None:
    signum, _ = SIGNALS[name]
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        os.kill(process.pid, signum)  # kill PID: the command's own process alone


def _live_processes(group: int) -> list[str]:
    """The processes of a process group that still run (a zombie has ended, only its parent has not reaped it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(text.split(")", 1)[0] + ")")
    return found


def _ends_cleanly(process: subprocess.Popen, name: str, before: list[str], *, starting: bool = False) -> str:
    """The checks every case shares; returns stdout."""
    out, rest = process.communicate(timeout=120)
    err = "".join(before) + rest
    assert process.returncode == SIGNALS[name][1], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if line.startswith("actprune")]
    expected = (f"actprune: interrupted ({name}) while starting; nothing was done" if starting
                else f"actprune: interrupted ({name}); {STOPPED}")
    assert said == [expected], err
    assert err.rstrip().splitlines()[-1] == expected, err
    deadline = time.monotonic() + 30  # multiprocessing's resource tracker ends when its last client has
    while (left := _live_processes(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes outlived the command: {left}"
    return out


def _eval_args(tiny: Path, output: Path) -> list[str]:
    return ["eval", "--model", str(tiny), "--max-windows", "1", "--seqlen", "32", "--no-compile",
            "--output", str(output)]


@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_while_importing_is_one_line(tiny, tmp_path, name):
    output = tmp_path / "result.json"
    process = _start([sys.executable, "-X", "importtime", "-m", "actprune_compiler.cli", *_eval_args(tiny, output)],
                     tmp_path)
    # the handlers are in place before the custom ops import, and after them a second of imports follows
    lines = _wait_for_line(process, lambda line: line.split("|")[-1].strip() == "actprune_compiler.ops")
    _send(process, name)
    _ends_cleanly(process, name, [line for line in lines if not line.startswith("import time:")], starting=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("phase", ["load", "compile", "run", "write"])
@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_in_each_phase_of_eval_writes_nothing(tiny, tmp_path, phase, name):
    output = tmp_path / "result.json"
    process = _start([sys.executable, str(CHILD), *_eval_args(tiny, output)], tmp_path, SIGNAL_TEST_PHASE=phase)
    lines = _wait_for_line(process, lambda line: line.startswith(f"phase {phase} reached"))
    _send(process, name)
    _ends_cleanly(process, name, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no result, no temporary file beside it


SWEEP = """
models: [MODEL]
options: {tasks: [wikitext2], max_windows: 1, seqlen: 32, compile: false}
configs: [none, "2:4", "4:8", "8:16"]
results: RESULTS
"""


@pytest.mark.parametrize("phase", ["load", "run"])
@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_during_a_sweep_stops_the_runs_process(tiny, tmp_path, phase, name):
    """The run is evaluated in a process of its own (eval/isolated.py), where the phase is reached."""
    results = tmp_path / "out" / "results.jsonl"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.replace("MODEL", str(tiny)).replace("RESULTS", str(results)))
    process = _start([sys.executable, str(CHILD), "sweep", str(sweep)], tmp_path, SIGNAL_TEST_PHASE=phase)
    lines = _wait_for_line(process, lambda line: f"phase {phase} reached" in line)  # after a progress bar
    _send(process, name)
    out = _ends_cleanly(process, name, lines)
    assert "interrupted: finished runs are saved in" in out
    assert not results.exists() or results.read_text() == ""  # the interrupted run left no record
    assert [p.name for p in results.parent.iterdir()] == []  # nor its claim


@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_to_a_sweep_on_two_workers_stops_every_worker_and_run(tiny, tmp_path, name):
    results = tmp_path / "out" / "results.jsonl"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.replace("MODEL", str(tiny)).replace("RESULTS", str(results)))
    process = _start([sys.executable, str(CHILD), "sweep", str(sweep), "--workers", "2"], tmp_path,
                     SIGNAL_TEST_PHASE="load", OMP_NUM_THREADS="1")
    first = _wait_for_line(process, lambda line: "phase load reached" in line)
    lines = first + _wait_for_line(process, lambda line: "phase load reached" in line)  # both workers' runs
    _send(process, name)
    _ends_cleanly(process, name, lines)
    assert [p.name for p in results.parent.iterdir()] == []


def test_a_finished_eval_in_the_same_harness_writes_its_result(tiny, tmp_path):
    """The harness stops nothing by itself: without a signal the command ends as usual."""
    output = tmp_path / "result.json"
    process = _start([sys.executable, str(CHILD), *_eval_args(tiny, output)], tmp_path, SIGNAL_TEST_PHASE="none")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert json.loads(output.read_text())["metrics"]["wikitext2"]["ppl"] > 0
