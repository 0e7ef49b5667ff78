"""WikiText-2 perplexity split over torchrun ranks equals the single-process figure.

The multi-process tests launch real ranks with `python -m torch.distributed.run --nproc_per_node 2`
(gloo on the CPU). Run as a script, this file is one such rank: it scores every case of CASES with
perplexity() inside eval.distributed.process_group() and writes what it saw to OUT/rank<R>.json.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer, tiny_model

from actprune_compiler.eval import distributed
from actprune_compiler.eval.perplexity import perplexity

TESTS = Path(__file__).resolve().parents[1]
TEXT = ("The quick brown fox jumps over the lazy dog.\n" * 12) + "Pack my box with five dozen liquor jugs.\n" * 8
SEQLEN = 32  # TEXT is 856 characters: 26 windows
# name: (max_windows, batch_size). Two ranks get 2+2, 2+1 (uneven), 1+0 (rank 1 has nothing) and 13+13.
CASES = {"even": (4, 2), "uneven": (3, 1), "one window": (1, 1), "all": (None, 4)}


def float64_runner():
    """The tiny model in float64, eager: rank-to-rank differences are then summation order alone."""
    model = copy.deepcopy(tiny_model("llama")).double()  # tiny_model is cached: never change it in place

    def run(ids):
        return model(input_ids=ids, use_cache=False).logits

    return run


def score(name: str) -> dict:
    max_windows, batch_size = CASES[name]
    return perplexity(float64_runner(), char_tokenizer(), TEXT, seqlen=SEQLEN, max_windows=max_windows,
                      batch_size=batch_size, progress=False)


def torchrun(args: list[str], env: dict[str, str] | None = None, timeout: float = 240) -> str:
    """Run `torchrun --nproc_per_node 2 ARGS`; a rank that skipped the collective shows up as a timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    env.pop("OMP_NUM_THREADS", None)  # as a user who set none: torchrun then sets 1 for every rank
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two torchrun ranks saw (one launch serves every test here)."""
    out = tmp_path_factory.mktemp("ranks")
    torchrun([__file__, str(out)], env={"TORCHINDUCTOR_CACHE_DIR": str(out / "inductor")})
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_give_the_single_process_perplexity(two_ranks, name):
    single = score(name)
    for seen in two_ranks:
        got = seen["cases"][name]
        assert got["ppl"] == pytest.approx(single["ppl"], rel=1e-6, abs=0)
        assert got["mean_nll"] == pytest.approx(single["mean_nll"], rel=1e-12, abs=0)  # float64 throughout
        assert (got["windows"], got["predicted_tokens"]) == (single["windows"], single["predicted_tokens"])
    # the windows were split, not scored twice: rank r had windows r, r + 2, ...
    shares = [seen["shares"][name] for seen in two_ranks]
    assert shares == [len(range(r, single["windows"], 2)) for r in range(2)]


def test_each_rank_has_its_own_inductor_cache_and_a_share_of_the_cores(two_ranks, tmp_path_factory):
    caches = [Path(seen["inductor_cache"]) for seen in two_ranks]
    assert [c.name for c in caches] == ["rank0", "rank1"] and caches[0].parent.name == "inductor"
    cores = distributed.available_cores()
    assert [seen["threads"] for seen in two_ranks] == [max(1, cores // 2)] * 2  # not torchrun's 1
    assert all(seen["world"] == 2 and not seen["grouped_after"] for seen in two_ranks)  # group destroyed


def test_rank_settings_respect_the_user():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    assert distributed.rank_settings({**env, "TORCHINDUCTOR_CACHE_DIR": "/c"}, cores=16) == ("/c/rank3", 8)
    assert distributed.rank_settings({**env, "OMP_NUM_THREADS": "3"}, cores=16)[1] is None  # the user's 3
    assert distributed.rank_settings({"WORLD_SIZE": "8", "RANK": "0"}, cores=2)[1] == 1  # never 0 threads
    assert distributed.rank_settings({}, cores=16) == (None, None)  # a plain process: nothing changes
    with pytest.raises(ValueError, match=r"environment variable RANK='x' is not a whole number"):
        distributed.rank_settings({"WORLD_SIZE": "2", "RANK": "x"}, cores=2)


def test_backend_and_device_follow_the_rank(monkeypatch):
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert distributed.rank_device(None) == "cpu"
        with pytest.raises(ValueError, match="no CUDA GPU"):
            distributed.rank_device("cuda")
    elif torch.cuda.device_count() >= 2:
        assert distributed.rank_device("cuda") == "cuda:1"
        with pytest.raises(ValueError, match="names one GPU, but torchrun started 2 processes"):
            distributed.rank_device("cuda:0")


def test_scoring_under_torchrun_without_a_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        score("even")


def test_zero_shot_tasks_under_torchrun_point_to_the_lm_eval_cli(monkeypatch, capsys):
    from actprune_compiler.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "--tasks", "wikitext2,arc_easy", "--pattern", "none"]) == 2
    assert ("actprune: error: zero-shot tasks (arc_easy) under torchrun go through actprune-lm-eval (the lm-eval "
            "CLI); under torchrun, actprune eval takes --tasks wikitext2 only") in capsys.readouterr().err


@pytest.mark.usefixtures("data_dir")
def test_torchrun_actprune_eval_writes_one_result_from_rank_zero(tmp_path):
    from actprune_compiler.cli import main

    model = copy.deepcopy(tiny_model("llama")).double()
    model.save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    flags = ["eval", "--model", str(tmp_path / "model"), "--pattern", "8:16", "--tasks", "wikitext2",
             "--seqlen", "64", "--max-windows", "3", "--dtype", "float64", "--device", "cpu", "--no-compile"]
    stdout = torchrun(["-m", "actprune_compiler.cli", *flags, "--output", str(tmp_path / "two.json")])
    assert stdout.count(f"wrote {tmp_path / 'two.json'}") == 1 and stdout.count("wikitext2 ppl") == 1  # rank 0 only
    assert main([*flags, "--output", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["metrics"]["wikitext2"]["windows"] == 3
    assert two["metrics"]["wikitext2"]["ppl"] == pytest.approx(one["metrics"]["wikitext2"]["ppl"], rel=1e-6, abs=0)
    assert math.isfinite(two["metrics"]["wikitext2"]["ppl"])


def rank_main(out: Path) -> None:
    """One torchrun rank: set up like `actprune eval`, score every case, write what this rank saw."""
    distributed.prepare_rank()
    seen = {"inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], "threads": torch.get_num_threads(),
            "cases": {}, "shares": {}}
    with distributed.process_group("cpu"):
        seen["world"] = distributed.world()
        for name in CASES:
            seen["cases"][name] = score(name)
            windows = seen["cases"][name]["windows"]
            seen["shares"][name] = len(range(windows)[distributed.shard(windows)])
    seen["grouped_after"] = torch.distributed.is_initialized()
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
