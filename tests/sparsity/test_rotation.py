"""The PCA rotation before the mask: Q from calibration inputs, W Q folded, x @ Q in the graph."""

import copy
import random

import numpy as np
import pytest
import torch
from conftest import char_tokenizer, tiny_model, token_ids
from reference import masked_input, selected

import actprune_compiler
from actprune_compiler import SparsityConfig
from actprune_compiler.artifact.folder import load_program, save_artifact
from actprune_compiler.sparsity.rotation import interleaved_positions, rotation_matrix

# Random printable characters: 95 distinct token embeddings (more than the 64 hidden features) and 512
# tokens, so no layer's second moment has a repeated eigenvalue whose directions would be arbitrary.
CALIB_TEXT = "".join(random.Random(0).choices([chr(i) for i in range(32, 127)], k=2000))
SAMPLES, SEQLEN = 8, 64


def config(**kw):
    defaults = {"pattern": "8:16", "rotation": "pca", "calib_samples": SAMPLES, "calib_seqlen": SEQLEN}
    return SparsityConfig(**{**defaults, **kw})


def sparsified(family="llama", **kw):
    model = copy.deepcopy(tiny_model(family)).double()
    return model, actprune_compiler.sparsify(model, config(**kw), tokenizer=char_tokenizer(), calib_text=CALIB_TEXT)


def numpy_rotations(model, m: int = 16) -> dict[str, np.ndarray]:
    """Independently: E[x xᵀ] of each selected linear's input on the calibration tokens, its eigenvectors
    by descending eigenvalue, the rank-r direction placed in group r % G, slot r // G."""
    ids = torch.tensor(char_tokenizer()(CALIB_TEXT, add_special_tokens=False).input_ids[: SAMPLES * SEQLEN])
    sums: dict[str, np.ndarray] = {}

    def observe(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, mod.in_features).double().numpy()
            sums[name] = sums.get(name, 0) + x.T @ x
        return hook

    handles = [mod.register_forward_pre_hook(observe(name)) for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and selected(name)]
    with torch.no_grad():
        for row in ids.view(SAMPLES, SEQLEN):
            model(input_ids=row[None], use_cache=False)
    for h in handles:
        h.remove()
    out = {}
    for name, total in sums.items():
        k = total.shape[0]
        q = np.zeros((k, k))
        values, vectors = np.linalg.eigh(total)
        for rank, column in enumerate(np.argsort(-values)):
            q[:, (rank % (k // m)) * m + rank // (k // m)] = vectors[:, column]
        out[name] = q
    return out


def rotated_reference(model, rotations, ids):
    """Eager logits with every selected linear computing (W Q) · mask(x @ Q) + b (numpy mask)."""
    ref = copy.deepcopy(model)
    for name, module in ref.named_modules():
        if name in rotations:
            q = torch.from_numpy(rotations[name])
            with torch.no_grad():
                module.weight.copy_(module.weight @ q)
            module.register_forward_pre_hook(lambda mod, args, q=q: (masked_input(args[0] @ q, 8, 16),))
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


def test_interleaving_gives_every_group_one_direction_of_each_rank_tier():
    m, width = 4, 16
    positions = interleaved_positions(width, m)
    assert sorted(positions.tolist()) == list(range(width))
    # ranks 0..3 (the four largest) land in groups 0..3, one each; ranks 4..7 in the second slot of each
    assert [int(p) // m for p in positions[:4]] == [0, 1, 2, 3]
    assert [int(p) % m for p in positions[4:8]] == [1, 1, 1, 1]
    # a diagonal second moment: the direction of rank r is the unit vector of the r-th largest channel
    variances = torch.randperm(width).double() + 1
    q = rotation_matrix(torch.diag(variances), m, interleave=True)
    torch.testing.assert_close(q.T @ q, torch.eye(width, dtype=torch.float64))
    for rank, channel in enumerate(torch.argsort(variances, descending=True).tolist()):
        assert abs(float(q[channel, positions[rank]])) == 1.0


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_program_matches_an_independent_numpy_rotation(family):
    model, result = sparsified(family)
    ids = token_ids()
    expected = rotated_reference(model, numpy_rotations(model), ids)
    with torch.no_grad():
        torch.testing.assert_close(result.module()(ids), expected, rtol=1e-7, atol=1e-7)
    dense = model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(dense, expected, atol=1e-3)  # the mask does act


def test_shared_inputs_share_one_rotation_and_the_cost_is_counted_once():
    _, result = sparsified()
    graph = result.program.graph
    matmuls = [n for n in graph.nodes if n.target == torch.ops.aten.matmul.default]
    # per layer: one for q/k/v (the attention input), o_proj, gate/up (the MLP input), down_proj
    assert len(matmuls) == 4 * 2
    q_shapes = sorted(tuple(result.program.constants[n.args[1].target].shape) if n.args[1].op == "get_attr" else
                      tuple(n.args[1].meta["val"].shape) for n in matmuls)
    assert q_shapes == [(64, 64)] * 6 + [(128, 128)] * 2  # the dense K x K products the cost counts
    for node in matmuls:  # each sits in its layer, where inspect and regional compilation look for it
        assert any("layers." in str(path) for path in node.meta["nn_module_stack"].values())
        assert node.meta["val"].shape == node.args[0].meta["val"].shape
    assert sum(n.target == torch.ops.actprune.nm_linear.default for n in graph.nodes) == 7 * 2
    cost = result.report["rotation"]
    hidden, inter = 64, 128
    assert cost["rotations"] == 8 and cost["rotated_layers"] == 14
    assert cost["macs_per_token"] == cost["constant_values"] == 2 * (3 * hidden * hidden + inter * inter)
    # q, k, v: 64->64, 64->32, 64->32; o: 64->64; gate, up: 64->128; down: 128->64
    gemm = 2 * (hidden * (64 + 32 + 32) + hidden * 64 + 2 * hidden * inter + inter * hidden)
    assert cost["gemm_macs_per_token"] == gemm
    assert cost["extra_flops_fraction"] == round(cost["macs_per_token"] / gemm, 4)


def test_rotation_constants_round_trip_through_program_pt2(tmp_path):
    model, result = sparsified()
    save_artifact(tmp_path / "art", result.program, result.report)
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(load_program(tmp_path / "art").module()(ids), result.module()(ids))


def test_the_compiled_program_matches_the_eager_reference():
    model, result = sparsified()
    ids = token_ids()
    compiled = actprune_compiler.compile_program(result.program)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), rotated_reference(model, numpy_rotations(model), ids),
                                   rtol=1e-6, atol=1e-6)


def test_the_contiguous_ablation_differs_from_the_interleaved_rotation():
    model, interleaved = sparsified()
    _, contiguous = sparsified(rotation="pca_contiguous")
    ids = token_ids()
    with torch.no_grad():
        assert not torch.allclose(interleaved.module()(ids), contiguous.module()(ids))


@pytest.mark.parametrize("changes, match", [
    ({"recovery": "finetune", "recovery_steps": 1}, "recovery 'finetune' is calibrated or applied in the original"),
    ({"correction": "bias"}, "correction 'bias'"),
    ({"criterion": "clact_static"}, "criterion 'clact_static'"),
    ({"pattern": "50%"}, "use it with an N:M pattern, not '50%'"),
    ({"rotation": "hadamard"}, "rotation 'hadamard' is unknown; allowed: none, pca, pca_contiguous"),
    ({"target": "weight"}, "a weight target"),
])
def test_bad_rotation_configs_are_refused_in_one_sentence(changes, match):
    with pytest.raises(ValueError, match=match):
        config(**changes)


def test_skip_sensitive_ranks_layers_in_the_rotated_basis():
    from actprune_compiler.calibration.sensitivity import layer_sensitivity

    model = copy.deepcopy(tiny_model("llama")).double()
    rows = {r["module"]: r["relative_error"] for r in layer_sensitivity(model, char_tokenizer(), config(), CALIB_TEXT)}
    plain = {r["module"]: r["relative_error"]
             for r in layer_sensitivity(model, char_tokenizer(), config(rotation="none"), CALIB_TEXT)}
    assert rows.keys() == plain.keys() and rows != plain
    _, result = sparsified(skip_sensitive=3)
    assert result.replaced == 14 - 3 and result.report["rotation"]["rotated_layers"] == 11


def test_the_torch_compile_backend_rotates_like_the_exported_program():
    from actprune_compiler import compile_model

    model, reference = sparsified()
    options = {"pattern": "8:16", "rotation": "pca", "calib_samples": SAMPLES, "calib_seqlen": SEQLEN}
    compile_model(model, options, tokenizer=char_tokenizer(), calib_text=CALIB_TEXT)
    ids = token_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, reference.module()(ids),
                                   rtol=1e-6, atol=1e-6)
