"""Regional compilation: one compiled decoder layer serves every layer of the same shape, with the same logits
as the whole graph compiled at once."""

import copy
import functools

import pytest
import torch
from conftest import char_tokenizer, tiny_model, token_ids
from torch._dynamo.utils import counters

from actprune_compiler import SparsityConfig, compile_program, sparsify
from actprune_compiler.backends.regional import compile_regions

TEXT = "The quick brown fox jumps over the lazy dog. " * 40
CONFIGS = {
    "magnitude": SparsityConfig("8:16"),
    # per-layer constants added by the passes: corrected biases and score scales
    "calibrated": SparsityConfig("8:16", criterion="clact_static", correction="bias", calib_samples=2,
                                 calib_seqlen=32),
}
NM_LINEAR = torch.ops.actprune.nm_linear.default


@functools.cache
def sparsified(family: str, layers: int, method: str, dtype: torch.dtype = torch.float32):
    model = copy.deepcopy(tiny_model(family, layers=layers)).to(dtype)
    return sparsify(model, CONFIGS[method], tokenizer=char_tokenizer(), calib_text=TEXT)


@pytest.mark.parametrize("family, method", [("llama", "magnitude"), ("llama", "calibrated"), ("gemma3", "magnitude")])
def test_regional_and_whole_graph_compilation_give_the_same_logits_in_float64(fresh_dynamo, family, method):
    result = sparsified(family, 2, method, torch.float64)
    program = result.program
    # the whole graph frozen, as actprune eval compiles it
    whole, regional = compile_program(program, freeze=True), compile_program(program, regional=True)
    if method == "calibrated":  # the regions read the program's own per-layer constants
        constants = {id(t) for name, t in program.constants.items() if name.endswith(("corrected_bias", "score_scale"))}
        read = {id(t) for t in regional.regions.module.buffers()}
        assert len(constants) == 2 * 7 * 2 and constants <= read
    for batch, seq in [(2, 24), (1, 1)]:  # a prefill shape, and a decode step (static shape: the decode kernel)
        ids = token_ids(batch, seq)
        got, want = regional(ids), whole(ids)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
        with torch.no_grad():
            torch.testing.assert_close(got, result.module()(ids), rtol=0, atol=1e-6)  # the uncompiled program


def test_every_layer_runs_the_code_compiled_for_the_first(fresh_dynamo):
    program = sparsified("llama", 4, "magnitude").program
    counters.clear()
    compiled = compile_program(program, regional=True)
    for batch, seq in [(2, 24), (3, 17)]:
        compiled(token_ids(batch, seq))
    # before the layers, the 4 layers, after them: 3 kinds, each traced by Dynamo and compiled by Inductor once
    assert compiled.regions.summary() == {"regions": 6, "kinds": 3, "blocks_per_kind": [1, 4, 1]}
    assert compiled.regions.kinds[1].blocks == [f"lm.model.layers.{i}" for i in range(4)]
    assert counters["stats"]["unique_graphs"] == 3 and not counters["recompiles"]
    inductor = counters["inductor"]
    assert inductor["fxgraph_cache_miss"] + inductor["fxgraph_cache_hit"] == 3 and not inductor["fxgraph_cache_bypass"]


def test_the_compiled_regions_hold_the_rewritten_ops(fresh_dynamo):
    result = sparsified("llama", 4, "calibrated")
    graphs = []

    def record(gm, example_inputs):  # what Dynamo hands to the backend, run as is
        graphs.append(gm)
        return gm.forward

    module = result.program.module()
    regions = compile_regions(module, functools.partial(torch.compile, backend=record, dynamic=True))
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(module(ids), result.module()(ids), rtol=0, atol=0)
    per_graph = sorted(sum(n.target is NM_LINEAR for n in gm.graph.nodes) for gm in graphs)
    assert per_graph == [0, 0, 7]  # one graph for the 4 layers, 7 nm_linear each; lm_head stays dense
    layer = next(k for k in regions.kinds if len(k.blocks) == 4)
    assert sum(n.target is NM_LINEAR for n in layer.graph.nodes) == 7
    assert all(n.kwargs.get("score_scale") is not None for n in layer.graph.nodes if n.target is NM_LINEAR)


def test_regional_compilation_refuses_freezing_and_plain_modules():
    program = sparsified("llama", 2, "magnitude").program
    with pytest.raises(ValueError, match="cannot be frozen; use freeze=False"):
        compile_program(program, regional=True, freeze=True)
    with pytest.raises(TypeError, match="takes an ExportedProgram"):
        compile_program(program.module(), regional=True)
