"""Warm starts: a second process compiling the same sparse model takes its code from Inductor's FX graph
cache, and a change to actprune's lowering code changes the cache key."""

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

# One process: the tiny Llama, 8:16 through compile_model without freezing (freezing makes Inductor
# bypass its cache), one forward; prints Inductor's cache counters and the logits' checksum.
SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_model, token_ids
from torch._dynamo.utils import counters
from actprune_compiler import compile_model
from actprune_compiler.backends import dynamo
model = compile_model(tiny_model("llama"), {{"pattern": "8:16"}}, freeze=False)
logits = model(token_ids()).logits
print(json.dumps({{"inductor": dict(counters["inductor"]), "rewritten": dynamo.report()["rewritten_per_graph"],
                  "sum": float(logits.double().sum())}}))
"""


def compile_in_fresh_process(cache: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS))], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_reuses_the_compiled_sparse_graph(tmp_path):
    cold = compile_in_fresh_process(tmp_path)
    warm = compile_in_fresh_process(tmp_path)
    assert cold["inductor"].get("fxgraph_cache_miss", 0) >= 1 and "fxgraph_cache_bypass" not in cold["inductor"]
    assert warm["inductor"].get("fxgraph_cache_hit", 0) == cold["inductor"]["fxgraph_cache_miss"]
    assert warm["inductor"].get("fxgraph_cache_miss", 0) == 0
    # the passes still ran (the cache holds Inductor's code, not actprune's rewrite): 14 projections per graph
    assert warm["rewritten"] == cold["rewritten"] and set(cold["rewritten"]) == {14}
    assert warm["sum"] == cold["sum"]


def test_the_cache_key_covers_actprune_lowering_code(monkeypatch):
    from actprune_compiler.lowering import inductor

    inductor._lowering_hash.cache_clear()
    before = inductor.CACHE_SALT.uuid()
    assert inductor.CACHE_SALT.uuid() == before
    assert inductor._lowering_hash(False) != inductor._lowering_hash(True)  # with or without the native kernel
    real = inductor.get_hash_for_files
    monkeypatch.setattr(inductor, "get_hash_for_files", lambda files, extra: real(files, extra + " changed"))
    inductor._lowering_hash.cache_clear()
    assert inductor.CACHE_SALT.uuid() != before
    inductor._lowering_hash.cache_clear()
