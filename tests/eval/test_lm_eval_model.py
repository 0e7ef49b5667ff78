"""actprune as an lm-eval model (`--model actprune`) and the `actprune-lm-eval` command, on a tiny model."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import char_tokenizer, tiny_model

from actprune_compiler.sparsity.config import SparsityConfig

PAIRS = [("Question: what jumps?\nAnswer:", " the fox"), ("Pack my box", " with jugs"), ("A", " b"),
         ("The lazy dog sleeps", " all day long.")]


def _requests(kind="loglikelihood", args=PAIRS):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, arg, i) for i, arg in enumerate(args)]


def test_registered_model_scores_and_generates_through_the_sparse_compiled_forward(tiny_dir, fresh_dynamo):
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    from actprune_compiler.api import compile_program, sparsify
    from actprune_compiler.backends.dynamo import LOG
    from actprune_compiler.eval.harness import make_lm
    from actprune_compiler.eval.lm_eval_model import ActPruneLM

    assert get_model("actprune") is ActPruneLM  # importing the module registered it
    lm = get_model("actprune").create_from_arg_obj({"pretrained": str(tiny_dir), "pattern": "2:4"},
                                                     {"batch_size": 2, "device": "cpu"})
    got = [ll for ll, _ in lm.loglikelihood(_requests())]
    assert LOG.graphs and all(len(g.rewritten) == 14 for g in LOG.graphs)  # every projection of both blocks

    # actprune's own path (`actprune eval`: the exported program, compiled by Inductor) scores the same
    model, tok = tiny_model("llama"), char_tokenizer()
    own = make_lm(compile_program(sparsify(model, SparsityConfig("2:4")).program), model, tok, batch_size=2)
    want = [ll for ll, _ in own.loglikelihood(_requests())]
    dense = [ll for ll, _ in HFLM(pretrained=model, tokenizer=tok, batch_size=1).loglikelihood(_requests())]
    assert got == pytest.approx(want, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, dense, strict=True)) > 1e-3

    # generate_until runs model.generate, whose prefill and decode steps call the same compiled forward
    graphs = len(LOG.graphs)
    (text,) = lm.generate_until(_requests("generate_until", [("Pack my box", {"until": ["\n"], "max_gen_toks": 6})]))
    assert isinstance(text, str)
    assert len(LOG.graphs) > graphs and all(len(g.rewritten) == 14 for g in LOG.graphs)


def test_regional_model_args_compile_each_kind_of_layer_once_and_score_alike(tiny_dir, fresh_dynamo):
    from lm_eval.api.registry import get_model

    from actprune_compiler.backends.dynamo import LOG
    from actprune_compiler.eval import lm_eval_model  # noqa: F401  (registers "actprune")

    scores = {}
    for regional in (False, True):
        LOG.reset()
        lm = get_model("actprune").create_from_arg_obj({"pretrained": str(tiny_dir), "pattern": "2:4",
                                                         "regional": regional}, {"batch_size": 2, "device": "cpu"})
        scores[regional] = [ll for ll, _ in lm.loglikelihood(_requests())]
        assert lm.actprune_info["regional"] is regional
    assert {len(g.rewritten) for g in LOG.graphs} == {14} and all(g.regions["kinds"] == 3 for g in LOG.graphs)
    assert scores[True] == pytest.approx(scores[False], abs=1e-4)
    (text,) = lm.generate_until(_requests("generate_until", [("Pack my box", {"until": ["\n"], "max_gen_toks": 4})]))
    assert isinstance(text, str)


def test_calibrated_config_reads_calib_data_and_scores_eagerly(tiny_dir, tmp_path, fresh_dynamo):
    from actprune_compiler.backends.dynamo import LOG
    from actprune_compiler.eval.lm_eval_model import ActPruneLM

    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    lm = ActPruneLM(pretrained=str(tiny_dir), pattern="2:4", criterion="clact_static", calib_samples=2,
                    calib_seqlen=32, calib_data=str(text), compile=False, device="cpu")
    assert lm.actprune_info["calibration"] == f"file {text}" and lm.actprune_info["label"] == "2:4 clact_static"
    lls = [ll for ll, _ in lm.loglikelihood(_requests())]
    assert all(ll < 0 for ll in lls) and LOG.graphs[0].config == "2:4 clact_static"


def test_actprune_arguments_are_checked_before_the_model_loads(tiny_dir):
    from actprune_compiler.eval.lm_eval_model import ActPruneLM

    with pytest.raises(ValueError, match="pattern '3:2' is invalid"):
        ActPruneLM(pretrained=str(tiny_dir), pattern="3:2")
    with pytest.raises(ValueError, match="compile must be true or false"):
        ActPruneLM(pretrained=str(tiny_dir), compile="yes")
    with pytest.raises(ValueError, match="regional must be true or false"):
        ActPruneLM(pretrained=str(tiny_dir), regional="yes")
    with pytest.raises(ValueError, match="cannot be frozen; use regional=true or freeze=true, not both"):
        ActPruneLM(pretrained=str(tiny_dir), regional=True, freeze=True)
    with pytest.raises(TypeError, match="pretrained must be a string"):
        ActPruneLM(pretrained=tiny_model("llama"))


@pytest.mark.usefixtures("data_dir")
def test_local_task_names_map_to_the_data_folder_and_refuse_what_is_missing(monkeypatch, tmp_path):
    from actprune_compiler.commands.lm_eval_cli import local_tasks

    assert local_tasks(["arc_easy", "actprune_local_arc_easy", "boolq", "lambada_openai"]) == {
        "arc_easy": "arc_easy", "actprune_local_arc_easy": "arc_easy", "boolq": "boolq"}
    assert local_tasks(["arc_easy", "actprune_local_arc_easy", "boolq"], hub_tasks=True) == {
        "actprune_local_arc_easy": "arc_easy"}
    with pytest.raises(SystemExit, match="has no local mirror; allowed: actprune_local_arc_easy"):
        local_tasks(["actprune_local_mmlu"])
    monkeypatch.setenv("ACTPRUNE_DATA_DIR", str(tmp_path))  # an empty data folder, searched first
    monkeypatch.setattr("actprune_compiler.eval.data.default_data_dirs", lambda: [tmp_path])
    with pytest.raises(SystemExit, match="needs the local piqa files, which are not there; they go in"):
        local_tasks(["actprune_local_piqa"])


def _run_cli(tiny_dir, out, processes):
    """actprune-lm-eval on 8 local arc_easy documents (reference kernels: compile=false keeps it quick);
    (acc, {doc_id: log-likelihoods}) from its results and --log_samples files."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "actprune_compiler.commands.lm_eval_cli",
               "--model", "actprune", "--model_args", f"pretrained={tiny_dir},pattern=2:4,compile=false",
               "--tasks", "actprune_local_arc_easy", "--limit", "8", "--device", "cpu",
               "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = glob.glob(f"{out}/*/results_*.json")
    (samples,) = glob.glob(f"{out}/*/samples_actprune_local_arc_easy_*.jsonl")
    result = json.loads(open(results).read())
    rows = [json.loads(line) for line in open(samples)]
    assert result["config"]["actprune"]["label"] == "2:4"
    return (result["results"]["actprune_local_arc_easy"]["acc,none"],
            {r["doc_id"]: [float(ll) for ll, _ in r["filtered_resps"]] for r in rows})


@pytest.mark.usefixtures("data_dir")
def test_two_processes_split_the_documents_and_score_like_one(tiny_dir, tmp_path):
    acc_one, lls_one = _run_cli(tiny_dir, tmp_path / "one", 1)
    acc_two, lls_two = _run_cli(tiny_dir, tmp_path / "two", 2)
    assert sorted(lls_two) == sorted(lls_one) == list(range(8))  # rank 0 gathered both halves
    assert acc_two == acc_one
    for doc, lls in lls_one.items():
        assert lls_two[doc] == pytest.approx(lls, abs=1e-4)
    assert torch.tensor([ll for lls in lls_one.values() for ll in lls]).isfinite().all()


def test_a_gguf_model_loads_from_its_dequantised_copy_once_there_is_one(tmp_path, monkeypatch):
    from actprune_compiler.eval.lm_eval_model import resolve_pretrained
    from actprune_compiler.models import gguf as gguf_copy

    monkeypatch.setattr(gguf_copy, "CACHE_DIR", tmp_path / "cache")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stands in for a GGUF file")
    assert resolve_pretrained(str(gguf), "float32") == (str(tmp_path), "m.gguf")
    copy = gguf_copy.cached_folder(gguf, torch.float32)
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    assert resolve_pretrained(str(gguf), "float32") == (str(copy), None)
    assert resolve_pretrained(str(gguf), "bfloat16") == (str(tmp_path), "m.gguf")  # no copy in that dtype
    assert resolve_pretrained("org/name", "float32") == ("org/name", None)
