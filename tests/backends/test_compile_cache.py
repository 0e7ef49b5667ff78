"""Warm starts: a second process compiling the same sparse model takes its code from Inductor's FX graph
cache, and a change to actprune's lowering code changes the cache key."""

import pytest
from conftest import save_tiny

from actprune_compiler.benchmark.startup import cold_and_warm


@pytest.mark.parametrize("regional", [False, True])
def test_a_second_process_reuses_the_compiled_sparse_graph(tmp_path, regional):
    """Two fresh processes (benchmark/startup.py, what `actprune bench --startup` runs): the cold one
    compiles into an empty Inductor cache, the warm one takes every graph (the decode loop's step; regional:
    every kind of layer of Hugging Face's prefill and decode graphs) from it and generates the same tokens.
    Without freezing: Inductor bypasses its cache for frozen graphs."""
    folder = save_tiny(tmp_path / "tiny")
    starts = cold_and_warm(str(folder), "8:16", tmp_path, new_tokens=4, regional=regional)
    cold, warm = starts["cold"]["inductor_cache"], starts["warm"]["inductor_cache"]
    graphs = 2 if regional else 1  # Hugging Face's prefill and decode graphs; the decode loop's one step
    assert cold.get("fxgraph_cache_miss", 0) >= graphs and "fxgraph_cache_bypass" not in cold
    # every graph the cold start compiled or found (regional: a kind shared by prefill and decode is found)
    looked_up = cold["fxgraph_cache_miss"] + cold.get("fxgraph_cache_hit", 0)
    assert warm.get("fxgraph_cache_hit", 0) == looked_up and warm.get("fxgraph_cache_miss", 0) == 0
    assert starts["warm"]["tokens"] == starts["cold"]["tokens"]
    assert starts["warm"]["rewritten_per_graph"] == starts["cold"]["rewritten_per_graph"]
    assert set(starts["cold"]["rewritten_per_graph"]) == {14}  # the passes ran on every graph, warm or cold


def test_the_cache_key_covers_actprune_lowering_code(monkeypatch):
    from actprune_compiler.lowering import inductor

    inductor._lowering_hash.cache_clear()
    before = inductor.POST_GRAD_PASS.uuid()
    assert inductor.POST_GRAD_PASS.uuid() == before
    assert inductor._lowering_hash(False) != inductor._lowering_hash(True)  # with or without the native kernel
    real = inductor.get_hash_for_files
    monkeypatch.setattr(inductor, "get_hash_for_files", lambda files, extra: real(files, extra + " changed"))
    inductor._lowering_hash.cache_clear()
    assert inductor.POST_GRAD_PASS.uuid() != before
    inductor._lowering_hash.cache_clear()
