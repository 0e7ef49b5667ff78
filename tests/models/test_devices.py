"""Devices and dtypes: every tensor actprune makes lives on the model's device, and bf16/fp16 run
end to end (export, passes, Inductor) against the independent eager reference."""

import copy

import pytest
import torch
from conftest import char_tokenizer, tiny_model, token_ids
from reference import reference_logits

from actprune_compiler import SparsityConfig, compile_program, export_causal_lm, sparsify
from actprune_compiler.artifact.check import check_program
from actprune_compiler.backends.dynamo import _require_device, compile_model, parse_options
from actprune_compiler.models.devices import default_dtype, placement, resolve_device
from actprune_compiler.models.load import load_model

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def test_default_device_and_dtype_follow_the_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    assert default_dtype(torch.device("cuda")) == "bfloat16" and default_dtype(torch.device("cpu")) == "float32"


@pytest.mark.parametrize("spec, says", [("mps", "is not supported; use cpu, cuda or cuda:N"),
                                        ("banana", "is not a device name"),
                                        ("cuda:99", "cuda")])
def test_bad_devices_are_one_sentence(spec, says):
    with pytest.raises(ValueError, match=says):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_on_a_machine_without_one_says_so():
    with pytest.raises(ValueError, match="this machine has no CUDA GPU; use --device cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("criterion, correction", [("magnitude", "none"), ("clact_static", "bias")])
def test_every_graph_constant_and_example_input_is_on_the_model_device(device, criterion, correction):
    model = copy.deepcopy(tiny_model("llama")).to(device)
    config = SparsityConfig("8:16", criterion=criterion, correction=correction, calib_samples=2, calib_seqlen=32)
    result = sparsify(model, config, tokenizer=char_tokenizer(), calib_text=TEXT)
    program = result.program
    tensors = {**program.state_dict, **program.constants}
    assert any("corrected_bias" in name or "score_scale" in name for name in tensors) == (criterion != "magnitude")
    wrong = {name: str(t.device) for name, t in tensors.items() if t.device.type != device}
    assert not wrong
    args, kwargs = program.example_inputs
    assert all(t.device.type == device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
    assert check_program(result)["passed"]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_end_to_end_against_the_eager_reference(dtype):
    model = copy.deepcopy(tiny_model("llama")).to(dtype)
    ids = token_ids(2, 24)
    result = sparsify(model, SparsityConfig("8:16"))
    want = reference_logits(model, ids, 8, 16)
    with torch.no_grad():
        eager_dense = model(input_ids=ids, use_cache=False).logits
        # Inductor keeps a fused producer's output in float32 where eager rounds it to `dtype`, and
        # one rounding can flip which of two near-equal features a group keeps. With eager's
        # roundings emulated, the compiled program must reproduce the reference up to the error the
        # dense model itself shows compiled (GEMM accumulation order).
        with torch._inductor.config.patch(emulate_precision_casts=True):
            got = compile_program(result.program)(ids)
            dense_error = _relative(compile_program(export_causal_lm(model))(ids), eager_dense)
        plain = compile_program(result.program)(ids)
    assert got.dtype == dtype
    assert _relative(got, want) <= 5 * dense_error, (_relative(got, want), dense_error)
    assert float((plain.argmax(-1) == want.argmax(-1)).float().mean()) > 0.9


def test_backend_device_option_moves_the_model_and_refuses_inputs_elsewhere():
    model = copy.deepcopy(tiny_model("llama"))
    compile_model(model, {"pattern": "8:16"}, device="cpu")
    assert placement(model)["device"] == "cpu"
    assert parse_options({"pattern": "8:16", "device": "cpu"}).device == torch.device("cpu")
    with pytest.raises(ValueError, match="asked for device cpu, but graph inputs are on meta"):
        _require_device([torch.empty(2, device="meta")], torch.device("cpu"))


def test_load_model_auto_dtype_keeps_the_checkpoint_dtype(tmp_path):
    copy.deepcopy(tiny_model("llama")).to(torch.bfloat16).save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), "auto", "cpu")
    assert placement(model) == {"device": "cpu", "dtype": "bfloat16"}
    model, _ = load_model(str(tmp_path), "default", "cpu")
    assert placement(model)["dtype"] == "float32"
