"""generate_until through `--model actprune`: prefill and decode both run graphs the actprune backend
rewrote, and the text is what an independent eager reference of the same pruning generates (tiny model)."""

from reference import hooked

# Same generation arguments (HFLM batches only requests that share them): batches of 2 and of 1.
PROMPTS = ["Pack my box", "The lazy dog sleeps", "A"]


def _requests():
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}), i)
            for i, prompt in enumerate(PROMPTS)]


def _input_ids_shape(gm):
    """The shape of a Dynamo graph's input_ids, a concrete size as an int and a symbolic one as "sym"."""
    (ids,) = [n for n in gm.graph.nodes if n.op == "placeholder" and "input_ids" in n.name]
    return tuple(d if isinstance(d, int) else "sym" for d in ids.meta["example_value"].shape)


def test_generate_until_runs_rewritten_prefill_and_decode_graphs_and_matches_the_eager_reference(
        tiny_dir, fresh_dynamo, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from actprune_compiler.backends import dynamo
    from actprune_compiler.eval.lm_eval_model import ActPruneLM

    shapes = []  # input_ids shape of every graph handed to the backend, in order
    real_host = dynamo.GraphModuleHost

    def spy(gm, example_inputs):
        shapes.append(_input_ids_shape(gm))
        return real_host(gm, example_inputs)

    monkeypatch.setattr(dynamo, "GraphModuleHost", spy)
    # compile=false: the backend's passes rewrite every graph, then run it eagerly (no Inductor)
    lm = ActPruneLM(pretrained=str(tiny_dir), pattern="2:4", compile=False, device="cpu", batch_size=2)
    assert not dynamo.LOG.graphs  # compiled lazily: every graph below comes from generate_until
    got = lm.generate_until(_requests())

    assert len(dynamo.LOG.graphs) == len(shapes) >= 3
    # every projection of both blocks pruned in every graph; only the (unmatched) lm_head stays dense
    assert [(g.config, len(g.rewritten), g.dense) for g in dynamo.LOG.graphs] == [("2:4", 14, ["lm_head"])] * len(
        shapes)
    assert any(s[-1] == 1 for s in shapes)  # decode: one new token per step against the KV cache
    assert any(s[-1] == "sym" for s in shapes)  # the prefill: prompt length symbolic (dynamic=True)
    assert dynamo.report(lm.model)["ran_outside_rewritten_graphs"] == []

    # An independent eager reference (nn.Linear pre-hooks masking each input 2:4 in numpy) on the same weights
    reference = HFLM(pretrained=str(tiny_dir), device="cpu", batch_size=2)
    with hooked(reference.model, 2, 4) as layers:
        assert layers == 14
        want = reference.generate_until(_requests())
    dense = reference.generate_until(_requests())
    assert got == want
    assert got != dense  # the pruning changes what is generated: the comparison above can fail


def test_model_info_records_the_versions(tiny_dir):
    from importlib import metadata

    import torch

    from actprune_compiler.eval.lm_eval_model import ActPruneLM

    info = ActPruneLM(pretrained=str(tiny_dir), pattern="2:4", compile=False, device="cpu").get_model_info()
    versions = info["actprune"]["versions"]
    assert versions["lm_eval"] == metadata.version("lm_eval") and versions["datasets"] == metadata.version("datasets")
    assert versions["torch"] == torch.__version__ and versions["transformers"] == metadata.version("transformers")
    assert info["actprune"]["label"] == "2:4" and "model_num_parameters" in info  # HFLM's own info is kept


def test_versions_say_not_installed_for_a_missing_distribution(monkeypatch):
    from importlib import metadata

    from actprune_compiler.reporting import runinfo

    real = metadata.version

    def version(name):
        if name == "datasets":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(runinfo.metadata, "version", version)
    recorded = runinfo.versions()
    assert recorded["datasets"] == "not installed" and recorded["lm_eval"] == real("lm-eval")
