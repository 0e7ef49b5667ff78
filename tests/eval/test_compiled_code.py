"""An artifact made with --compiled-code carries Inductor's cache artifacts: evaluating it regionally in a fresh
process with an empty Inductor cache takes every graph from them and scores what a run without them scores."""

import json
import os
import subprocess
import sys

from datasets import Dataset

from actprune_compiler.eval.compiled_code import COMPILED_CODE
from actprune_compiler.eval.data import WIKITEXT_DIR

TEXT = ("The quick brown fox jumps over the lazy dog.\n" * 12) + "Pack my box with five dozen liquor jugs.\n" * 8


def actprune(*args, cache) -> None:
    """One command in a fresh process with its own Inductor cache folder."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-m", "actprune_compiler.cli", *map(str, args)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_eval_of_an_artifact_with_compiled_code_takes_every_inductor_graph_from_it(tiny_dir, tmp_path):
    data = tmp_path / "data"
    Dataset.from_dict({"page": [TEXT, TEXT.upper()]}).save_to_disk(str(data / WIKITEXT_DIR / "test"))
    art = tmp_path / "art"
    actprune("compile", "--model", tiny_dir, "--pattern", "8:16", "--no-check", "--compiled-code", "--out", art,
             cache=tmp_path / "cache-compile")
    report = json.loads((art / "report.json").read_text())
    assert (art / COMPILED_CODE).stat().st_size == report["compiled_code"]["bytes"] > 0
    # the regions (before the layers, one layer kind, after them) at batch 1 and at batch 2 (lm-eval's)
    assert report["compiled_code"]["graphs"] == 6

    flags = ["eval", "--model", art, "--tasks", "wikitext2", "--data-dir", data, "--seqlen", 64, "--regional"]
    actprune(*flags, "--output", tmp_path / "warm.json", cache=tmp_path / "cache-warm")
    warm = json.loads((tmp_path / "warm.json").read_text())
    cache = warm["compiled_code"]["fxgraph_cache"]
    assert cache == {"hit": 3}  # perplexity windows are batch 1: its three graphs, none compiled

    (art / COMPILED_CODE).unlink()  # without it: every graph compiles, and the score is the same
    actprune(*flags, "--output", tmp_path / "cold.json", cache=tmp_path / "cache-cold")
    cold = json.loads((tmp_path / "cold.json").read_text())
    assert "compiled_code" not in cold
    assert warm["metrics"]["wikitext2"]["ppl"] == cold["metrics"]["wikitext2"]["ppl"]
