import copy
import json
import math

import pytest
import torch
from conftest import char_tokenizer, tiny_model, tiny_program
from reference import hooked

from actprune_compiler import SparsityConfig, compile_program, sparsify
from actprune_compiler.eval.perplexity import make_windows, perplexity, resolve_bos

TEXT = ("The quick brown fox jumps over the lazy dog.\n" * 12) + "Pack my box with five dozen liquor jugs.\n" * 8


@pytest.mark.parametrize("bos,first,length", [("none", 7, 16), ("start", 1, 16), ("window", 1, 16)])
def test_windows_are_non_overlapping_and_bos_is_explicit(bos, first, length):
    ids = torch.arange(7, 7 + 100)
    windows = make_windows(ids, 16, bos, 1, None)
    assert windows.shape[1] == length and windows[0, 0] == first
    if bos == "window":
        assert (windows[:, 0] == 1).all() and windows.shape[0] == 100 // 15
        assert torch.equal(windows[1, 1:], ids[15:30])
    else:
        assert windows.shape[0] == (100 + (bos == "start")) // 16
    assert make_windows(ids, 16, bos, 1, 2).shape[0] == 2


def test_bos_auto_follows_the_tokenizer_as_the_seed_does():
    tok = char_tokenizer()
    assert resolve_bos("auto", tok) == "none"  # this tokenizer adds no BOS by itself
    adds_bos = copy.deepcopy(tok)  # the shared tokenizer stays as it is
    adds_bos.add_bos_token = True  # as Gemma's and Llama-2's tokenizers do: one BOS at the start, not per window
    assert adds_bos("a").input_ids[0] == tok.bos_token_id
    assert resolve_bos("auto", adds_bos) == "start"
    with pytest.raises(ValueError, match="--bos 'sometimes' is unknown; allowed: auto, window, start, none"):
        resolve_bos("sometimes", tok)


def independent_perplexity(model, tok, text, seqlen, windows):
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    losses = []
    with torch.no_grad():
        for w in range(windows):
            chunk = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
            losses.append(model(input_ids=chunk, labels=chunk, use_cache=False).loss)
    return math.exp(torch.stack(losses).mean().item())


def test_compiled_dense_perplexity_equals_plain_transformers():
    model, tok = tiny_model("llama"), char_tokenizer()
    runner = compile_program(tiny_program("llama"))
    result = perplexity(runner, tok, TEXT, seqlen=64, max_windows=4, batch_size=2, bos="none", progress=False)
    assert result["windows"] == 4 and result["predicted_tokens"] == 4 * 63
    assert result["ppl"] == pytest.approx(independent_perplexity(model, tok, TEXT, 64, 4), rel=1e-5)


def test_compiled_pruned_loglikelihoods_match_hooked_eager_reference():
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from actprune_compiler.eval.harness import make_lm

    model, tok = tiny_model("llama"), char_tokenizer()
    runner = compile_program(sparsify(tiny_program("llama"), SparsityConfig("2:4")).program)
    pairs = [("Question: what jumps?\nAnswer:", " the fox"), ("Pack my box", " with jugs"), ("A", " b"),
             ("The lazy dog sleeps", " all day long.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    compiled = make_lm(runner, model, tok, batch_size=2).loglikelihood(requests)
    with hooked(model, 2, 4):
        reference = HFLM(pretrained=model, tokenizer=tok, batch_size=1).loglikelihood(requests)
    dense = HFLM(pretrained=model, tokenizer=tok, batch_size=1).loglikelihood(requests)
    for (got, _), (want, _) in zip(compiled, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert max(abs(a[0] - b[0]) for a, b in zip(reference, dense, strict=True)) > 1e-3


def test_missing_wikitext_says_where_to_put_it(tmp_path, monkeypatch):
    from actprune_compiler.eval.data import load_wikitext2

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # fail at once instead of retrying the hub

    with pytest.raises(FileNotFoundError, match=r"WikiText-2 test split not found: put it at "
                                                r"DATA/wikitext2/wikitext_document_level/wikitext-2-raw-v1/test"):
        load_wikitext2("test", data_dir=tmp_path)


@pytest.mark.usefixtures("data_dir")
@pytest.mark.usefixtures("data_dir")
def test_local_tasks_convert_to_the_hub_schema():
    from actprune_compiler.eval.data import TO_HUB_SCHEMA, task_data

    arc = TO_HUB_SCHEMA["arc_easy"](task_data("arc_easy"))
    assert len(arc) == 2376 and set(arc[0]) == {"id", "question", "choices", "answerKey"}
    assert arc[0]["answerKey"] in arc[0]["choices"]["label"]
    boolq = TO_HUB_SCHEMA["boolq"](task_data("boolq"))
    assert len(boolq) == 3270 and sum(r["label"] for r in boolq) == 2033
    piqa = TO_HUB_SCHEMA["piqa"](task_data("piqa"))
    assert len(piqa) == 1838 and sum(r["label"] for r in piqa) == 928
    assert len(TO_HUB_SCHEMA["winogrande"](task_data("winogrande"))) == 1267


@pytest.mark.usefixtures("data_dir")
def test_eval_command_runs_offline_on_a_tiny_model(tmp_path, capsys):
    from actprune_compiler.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "result.json"
    code = main(["eval", "--model", str(model_dir), "--pattern", "2:4", "--tasks",
                 "wikitext2,arc_easy,boolq,piqa,winogrande", "--seqlen", "64", "--max-windows", "3",
                 "--limit", "4", "--batch-size", "2", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["replaced_linears"] == 14 and result["pruning"] == "2:4"
    assert result["metrics"]["wikitext2"]["windows"] == 3 and result["metrics"]["wikitext2"]["ppl"] > 1
    from actprune_compiler.eval.data import load_wikitext2

    scored = load_wikitext2("test")  # the result names the text it scored, not only the raw file it came from
    assert result["metrics"]["wikitext2"]["text_sha256"] == scored.text_sha256 != scored.sha256
    for task in ("arc_easy", "boolq", "piqa", "winogrande"):
        metrics = result["metrics"][task]
        assert metrics["source"] == "local files" and metrics["samples"] == 4
        assert 0 <= metrics["metrics"]["acc"] <= 1 and "acc_stderr" in metrics["metrics"]
    assert "acc_norm" in result["metrics"]["arc_easy"]["metrics"]
    assert "wikitext2 ppl" in capsys.readouterr().out


def test_runner_uses_calibration_text_read_before_the_model_loaded():
    from actprune_compiler.eval.runner import EvalOptions, _runner

    config = SparsityConfig("2:4", criterion="clact_static", calib_samples=2, calib_seqlen=32)
    options = EvalOptions(compile=False, calib_data="nowhere/calib.txt", progress=False)
    model, tok = tiny_model("llama"), char_tokenizer()
    _, sparsified, calibration, _ = _runner(model, tok, config, options, calib_text=(TEXT, "read by the caller"))
    assert calibration["source"] == "read by the caller" and sparsified.replaced == 14
    with pytest.raises(ValueError, match="--calib-data 'nowhere/calib.txt' is neither"):  # None: read here
        _runner(model, tok, config, options)


def test_regional_eval_scores_what_the_whole_graph_scores():
    """`actprune eval --regional` (one compiled decoder layer for all of them) on a float64 tiny model: the
    same perplexity as the whole compiled graph, and the option is recorded only when on."""
    from actprune_compiler.eval.runner import EvalOptions, evaluate

    model = copy.deepcopy(tiny_model("llama", layers=3)).double()
    results = {}
    for regional in (False, True):
        options = EvalOptions(seqlen=64, max_windows=2, progress=False, regional=regional)
        results[regional] = evaluate("tiny", SparsityConfig("8:16"), options, loaded=(model, char_tokenizer()))
    whole, regional = results[False]["metrics"]["wikitext2"], results[True]["metrics"]["wikitext2"]
    assert regional["windows"] == whole["windows"] == 2
    assert math.isclose(regional["mean_nll"], whole["mean_nll"], rel_tol=1e-9)
    assert results[True]["options"]["regional"] is True and "regional" not in results[False]["options"]


def test_any_lm_eval_task_resolves_local_mirrors_first_and_names_the_unknown(tmp_path):
    from actprune_compiler.eval.harness import resolve_tasks, unknown_tasks

    assert unknown_tasks(["wikitext2", "arc_easy"]) == []  # no lm-eval index needed for these
    assert unknown_tasks(["lambada_openai", "gsm8k", "arc_eesy"]) == ["arc_eesy"]
    (tmp_path / "data").mkdir()
    names, provenance = resolve_tasks(["lambada_openai", "arc_easy"], tmp_path / "data", tmp_path)
    # lm-eval's own tasks, unchanged: lambada has no local mirror, arc_easy's files are not in this folder
    assert names == {"lambada_openai": "lambada_openai", "arc_easy": "arc_easy"}
    assert {p["source"] for p in provenance.values()} == {"lm-eval built-in task (hub dataset)"}
    assert list(tmp_path.glob("*.yaml")) == []


def test_generation_tasks_are_refused_not_run_on_the_dense_model():
    from lm_eval.api.instance import Instance

    from actprune_compiler.eval.harness import make_lm

    runner = compile_program(sparsify(tiny_program("llama"), SparsityConfig("2:4")).program)
    lm = make_lm(runner, tiny_model("llama"), char_tokenizer(), batch_size=1)
    request = Instance("generate_until", {}, ("Once upon", {"until": ["."], "max_gen_toks": 4}), 0)
    with pytest.raises(ValueError, match="run it with actprune-lm-eval --model actprune"):
        lm.generate_until([request])
