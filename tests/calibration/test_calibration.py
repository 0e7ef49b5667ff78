import pytest
import torch
from conftest import char_tokenizer, tiny_model, tiny_program, token_ids

import actprune_compiler
from actprune_compiler import SparsityConfig
from actprune_compiler.artifact.folder import load_program, save_artifact
from actprune_compiler.calibration import calibrate

nm_linear = torch.ops.actprune.nm_linear.default
CALIB_TEXT = "Calibration text for a tiny model. " * 200


@pytest.mark.parametrize("criterion,correction", [("clact_static", "none"), ("amber", "shift_static"),
                                                  ("magnitude", "scaling"), ("wina", "bias")])
def test_calibrated_constants_round_trip_through_program_pt2(tmp_path, criterion, correction):
    model, tok = tiny_model("llama"), char_tokenizer()
    config = SparsityConfig("8:16", criterion=criterion, correction=correction, calib_samples=4, calib_seqlen=32)
    stats, summary = calibrate(model, tok, config, CALIB_TEXT, "tiny text")
    assert summary["tokens"] == 128 and summary["source"] == "tiny text"
    result = actprune_compiler.sparsify(tiny_program("llama"), config, stats=stats)
    node = next(n for n in result.program.graph.nodes if n.target is nm_linear)
    assert node.kwargs["criterion"] == criterion and node.kwargs["correction"] == correction
    assert any("constants" in row for row in result.layers)
    save_artifact(tmp_path / "art", result.program, {"layers": result.layers})
    loaded = load_program(tmp_path / "art")
    for name, value in result.program.constants.items():
        if name.startswith("actprune."):
            torch.testing.assert_close(loaded.constants[name], value, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(token_ids()), result.module()(token_ids()), rtol=0, atol=0)
