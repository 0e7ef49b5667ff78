"""Recovery methods: learned values folded into the graph's constants, checked against eager references."""

import copy

import pytest
import torch
from conftest import char_tokenizer, tiny_model, token_ids
from reference import masked_input

import actprune_compiler
from actprune_compiler import SparsityConfig
from actprune_compiler.artifact.folder import load_program, save_artifact
from actprune_compiler.recovery.prepare import prepare
from actprune_compiler.sparsity.constants import LearnedLayer

CALIB_TEXT = "Calibration text for a tiny model, with some variety: 0123456789 the quick brown fox. " * 60
METHODS = ("offset", "affine", "finetune")


@pytest.fixture(autouse=True)
def no_store(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTPRUNE_NO_RECOVERY_CACHE", "1")


def tiny64(family="llama"):
    return copy.deepcopy(tiny_model(family)).double()


def config(method="offset", steps=0, **kw):
    training = {"recovery": method, "recovery_steps": steps} if method != "none" else {}
    return SparsityConfig("8:16", calib_samples=2, calib_seqlen=32, **training, **kw)


def program_logits(result, ids):
    with torch.no_grad():
        return result.module()(ids)


def folded_reference(model, learned: dict[str, LearnedLayer], ids, n=8, m=16):
    """An eager model with each learned weight and bias copied in and the numpy mask on its input."""
    ref = copy.deepcopy(model)
    handles = []
    for name, module in ref.named_modules():
        if name in learned:
            with torch.no_grad():
                if learned[name].weight is not None:
                    module.weight.copy_(learned[name].weight)
                module.bias = torch.nn.Parameter(learned[name].bias.clone())
            handles.append(module.register_forward_pre_hook(lambda mod, args: (masked_input(args[0], n, m),)))
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("method", METHODS)
def test_zero_steps_equals_the_calibrated_bias(method):
    """Every method starts from E[x - x_sparse] folded into the bias: at 0 steps, correction 'bias'."""
    model, tok, ids = tiny64(), char_tokenizer(), token_ids()
    learned = actprune_compiler.sparsify(model, config(method), tokenizer=tok, calib_text=CALIB_TEXT)
    calibrated = actprune_compiler.sparsify(model, config("none", correction="bias"), tokenizer=tok,
                                            calib_text=CALIB_TEXT)
    torch.testing.assert_close(program_logits(learned, ids), program_logits(calibrated, ids), rtol=1e-10, atol=1e-10)
    assert learned.report["recovery"]["steps"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_trained_values_are_graph_constants_and_match_an_eager_reference(method, tmp_path):
    model, tok, ids = tiny64(), char_tokenizer(), token_ids()
    cfg = config(method, steps=4, recovery_lr=1e-2)
    prepared = prepare(model, tok, cfg, CALIB_TEXT)
    summary = prepared.recovery
    # (a random tiny model's KL is ~1e-3 and noisy; the real models' tables show it falling)
    assert summary["train_tokens"] == 4 * 4 * 32 and summary["kl_held_out_after"] != summary["kl_held_out_before"]
    learned = prepared.learned
    start = prepare(model, tok, cfg.replace(recovery_steps=0), CALIB_TEXT).learned
    assert all(not torch.equal(learned[k].bias, start[k].bias) for k in learned)
    assert len(learned) == 14
    assert all((layer.weight is not None) == (method != "offset") for layer in learned.values())
    result = actprune_compiler.sparsify(model, cfg, tokenizer=tok, calib_text=CALIB_TEXT, stats=prepared.stats)
    names = [k for k in result.program.constants if k.endswith(".learned_bias")]
    assert len(names) == 14
    # the graph holds exactly the learned values: the folded reference gives the same logits
    torch.testing.assert_close(program_logits(result, ids), folded_reference(model, learned, ids), rtol=1e-9,
                               atol=1e-9)
    save_artifact(tmp_path / "art", result.program, {"layers": result.layers})
    loaded = load_program(tmp_path / "art")
    for name in names:
        torch.testing.assert_close(loaded.constants[name], result.program.constants[name], rtol=0, atol=0)
    torch.testing.assert_close(loaded.module()(ids), program_logits(result, ids), rtol=0, atol=0)


def test_compiled_graph_matches_the_eager_student():
    """Inductor's compiled program against the training-time module (SparseLinear) with the same values."""
    from actprune_compiler.recovery.distill import sparse_student

    model, tok, ids = tiny64(), char_tokenizer(), token_ids()
    cfg = config("affine", steps=3, recovery_lr=1e-2, criterion="amber", correction="shift_static")
    prepared = prepare(model, tok, cfg, CALIB_TEXT)
    result = actprune_compiler.sparsify(model, cfg, stats=prepared.stats, tokenizer=tok, calib_text=CALIB_TEXT)
    student, modules = sparse_student(model, cfg, prepared.stats)
    with torch.no_grad():  # a fresh student holding the folded values (a = s = t = 0), as the graph does
        for name, module in modules.items():
            module.weight.copy_(prepared.learned[name].weight if prepared.learned[name].weight is not None
                                else module.weight)
            module.offset.zero_()
            module.bias = prepared.learned[name].bias.clone()
        eager = student(input_ids=ids, use_cache=False).logits
    with torch.no_grad():  # the program, run eagerly, is exactly the student
        torch.testing.assert_close(result.module()(ids), eager, rtol=0, atol=0)
        # compiled: HF's rotary embedding runs in float32 even in a float64 model, and Inductor fuses it
        # differently, hence 1e-6 and not float64's rounding
        compiled = actprune_compiler.compile_program(result.program)
        torch.testing.assert_close(compiled(ids), eager, rtol=1e-6, atol=1e-6)


def test_store_reuses_learned_values(monkeypatch, tmp_path):
    from actprune_compiler.recovery import store

    monkeypatch.delenv("ACTPRUNE_NO_RECOVERY_CACHE")
    monkeypatch.setattr(store, "CACHE_DIR", tmp_path)
    model, tok = tiny64(), char_tokenizer()
    cfg = config("offset", steps=2, recovery_lr=1e-2)
    first = prepare(model, tok, cfg, CALIB_TEXT)
    second = prepare(model, tok, cfg, CALIB_TEXT)
    assert not first.recovery["from_store"] and second.recovery["from_store"]
    for name, layer in first.learned.items():
        torch.testing.assert_close(second.learned[name].bias, layer.bias, rtol=0, atol=0)
    other = prepare(model, tok, cfg.replace(recovery_steps=1), CALIB_TEXT)
    assert not other.recovery["from_store"]
    other_text = prepare(model, tok, cfg, CALIB_TEXT.upper())
    kept_dense = prepare(model, tok, cfg.replace(skip_sensitive=1), CALIB_TEXT)
    assert not other_text.recovery["from_store"] and not kept_dense.recovery["from_store"]
    assert len(kept_dense.learned) == 13 and len(list(tmp_path.glob("recovery/*.pt"))) == 4


def test_torch_compile_backend_uses_learned_values_and_leaves_the_model_alone(fresh_dynamo):
    model, tok, ids = tiny64(), char_tokenizer(), token_ids()
    cfg = config("finetune", steps=2, recovery_lr=1e-2)
    prepared = prepare(model, tok, cfg, CALIB_TEXT)
    expected = folded_reference(model, prepared.learned, ids)
    compiled = copy.deepcopy(model)
    before = {k: v.clone() for k, v in compiled.state_dict().items()}
    actprune_compiler.compile_model(compiled, cfg, tokenizer=tok, calib_text=CALIB_TEXT, inner_backend="eager")
    with torch.no_grad():
        got = compiled(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    for k, v in compiled.state_dict().items():  # the learned weights are graph constants, not written back
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_backend_refuses_learned_values_that_do_not_fit(fresh_dynamo):
    model, tok = tiny64(), char_tokenizer()
    learned = prepare(model, tok, config("offset"), CALIB_TEXT).learned
    with pytest.raises(ValueError, match="the config has recovery 'none'"):
        actprune_compiler.compile_model(copy.deepcopy(model), SparsityConfig("8:16"), learned=learned)
    partial = dict(list(learned.items())[1:])
    compiled = actprune_compiler.compile_model(copy.deepcopy(model), config("offset"), learned=partial,
                                               inner_backend="eager")
    with pytest.raises(Exception, match="learned no values for model.layers.0.self_attn.q_proj"):
        compiled(input_ids=token_ids(), use_cache=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_trained_function_is_the_folded_one(dtype):
    """SparseLinear with nonzero a, s, t computes exactly the folded layer the graph receives."""
    from actprune_compiler.recovery.sparse_linear import SparseLinear
    from actprune_compiler.sparsity.constants import LayerConstants
    from actprune_compiler.sparsity.recovery_methods import RECOVERY

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(dtype)
    layer = SparseLinear(linear, SparsityConfig("8:16", recovery="finetune"), LayerConstants(), linear.bias,
                         torch.randn(64), RECOVERY["finetune"])
    with torch.no_grad():
        for p in (layer.offset, layer.scale, layer.out_shift):
            p.copy_(torch.randn_like(p) * 0.05)
    x = torch.randn(3, 5, 64, dtype=dtype)
    folded = layer.fold()
    n_kept = masked_input(x, 8, 16)
    with torch.no_grad():
        expected = torch.nn.functional.linear(n_kept, folded.weight, folded.bias)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert layer.offset.dtype == layer.scale.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_bad_recovery_configs_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="recovery 'lora' is unknown; allowed: none, offset, affine, finetune"):
        SparsityConfig("8:16", recovery="lora")
    with pytest.raises(ValueError, match="target 'activation' only"):
        SparsityConfig("8:16", target="weight", recovery="offset")
    with pytest.raises(ValueError, match="use another correction than 'bias'"):
        SparsityConfig("8:16", correction="bias", recovery="offset")
    with pytest.raises(ValueError, match="recovery_steps must be a non-negative integer"):
        SparsityConfig("8:16", recovery="offset", recovery_steps=-1)
    with pytest.raises(ValueError, match="recovery_lr must be a positive finite number"):
        SparsityConfig("8:16", recovery="offset", recovery_lr=float("inf"))
    with pytest.raises(ValueError, match="choose one with recovery=..."):
        SparsityConfig("8:16", recovery_steps=5)
    assert SparsityConfig("8:16", recovery="offset", recovery_lr=1) == SparsityConfig("8:16", recovery="offset",
                                                                                      recovery_lr=1.0)
    assert SparsityConfig("8:16", recovery="finetune", recovery_steps=50).label == "8:16 finetune(50)"


def test_compile_command_trains_folds_and_reports(tiny_dir, tmp_path, capsys):
    """`actprune compile --recovery ...`: report.json says what was learned and what it cost; the graph names
    the learned biases."""
    import json

    from actprune_compiler.cli import main

    text = tmp_path / "calib.txt"
    text.write_text(CALIB_TEXT)
    out = tmp_path / "art"
    assert main(["compile", "--model", str(tiny_dir), "--pattern", "8:16", "--recovery", "affine",
                 "--recovery-steps", "2", "--calib-data", str(text), "--calib-samples", "2", "--calib-seqlen", "32",
                 "--out", str(out), "--no-check"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["recovery"] == "affine" and report["label"] == "8:16 affine(2)"
    recovery = report["recovery"]
    assert recovery["steps"] == 2 and recovery["train_tokens"] == 2 * 4 * 32 and recovery["seconds"] > 0
    assert recovery["extra_constant_values"] == sum(row["out_features"] for row in report["layers"][:-1])
    assert "recovery_s" in report["timings"]
    assert "recovery affine: 2 steps on 256 calibration tokens" in capsys.readouterr().out
    assert (out / "graph.txt").read_text().count("learned_bias") >= 14


def test_a_config_field_added_later_keeps_earlier_store_keys_at_its_default():
    """Values learned before SparsityConfig had `rotation` were keyed on a JSON without it: same key now."""
    import json

    from actprune_compiler.recovery.store import config_key

    tuned = SparsityConfig("2:4", recovery="finetune", recovery_steps=40)
    before = {k: v for k, v in tuned.to_dict().items() if k != "rotation"}
    assert config_key(tuned) == json.dumps(before, sort_keys=True)
    rotated = SparsityConfig("2:4", rotation="pca")
    assert '"rotation": "pca"' in config_key(rotated)
    assert '"rotation"' not in config_key(rotated.replace(rotation="none"))


def test_a_gguf_load_and_its_dequantised_copy_share_store_keys():
    """A GGUF file read directly has a quantization_config its dequantised copy lacks; same weights, same key."""
    from actprune_compiler.recovery.store import model_fingerprint

    model = tiny_model("llama")
    copied = model_fingerprint(model)
    read_from_gguf = copy.deepcopy(model)
    read_from_gguf.config.quantization_config = {"quant_method": "gguf", "gguf_file": "model.gguf", "dequantize": False}
    assert model_fingerprint(read_from_gguf) == copied
    assert read_from_gguf.config.quantization_config["quant_method"] == "gguf"  # the model's own config untouched
    with torch.no_grad():
        read_from_gguf.lm_head.weight[0, 0] += 1
    assert model_fingerprint(read_from_gguf) != copied
