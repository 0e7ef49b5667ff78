import numpy as np
import pytest
import torch
from conftest import tiny_program
from reference import masked_input, numpy_keep_mask

from actprune_compiler import SparsityConfig, sparsify
from actprune_compiler.sparsity.constants import layer_constants
from actprune_compiler.sparsity.criteria import CRITERIA, WEIGHT_CRITERIA, amber_column_score
from actprune_compiler.sparsity.stats import LayerStats

nm_linear = torch.ops.actprune.nm_linear.default
G = torch.Generator().manual_seed(0)
X, W, B = torch.randn(6, 32, generator=G), torch.randn(12, 32, generator=G), torch.randn(12, generator=G)


def stats_of(x: torch.Tensor) -> LayerStats:
    s = LayerStats(x.shape[-1])
    s.update(x)
    return s


def keep_by(scores: np.ndarray, n=4, m=8) -> np.ndarray:
    return numpy_keep_mask(scores, n, m)


def linear_masked(x: np.ndarray, keep: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.linear(torch.from_numpy(np.where(keep, x, 0.0)).float(), W, B)


def test_clact_per_batch_is_the_paper_formula_row_norm_included():
    x = X.double().numpy()
    scores = np.abs(x) * np.linalg.norm(x, axis=0) / np.linalg.norm(x, axis=1, keepdims=True)
    got = nm_linear(X, W, B, 4, 8, criterion="clact")
    torch.testing.assert_close(got, linear_masked(x, keep_by(scores)), rtol=0, atol=1e-5)


def test_clact_per_batch_depends_on_other_rows_and_the_static_form_does_not():
    other = torch.zeros(6, 32)
    other[:, 1::2] = 100.0  # tokens whose large odd features shift every column norm
    dynamic_alone = nm_linear(X[:1], W, B, 4, 8, criterion="clact")
    dynamic_batched = nm_linear(torch.cat([X[:1], other]), W, B, 4, 8, criterion="clact")[:1]
    assert not torch.allclose(dynamic_alone, dynamic_batched)
    scale = layer_constants(SparsityConfig("4:8", criterion="clact_static"), W, B, stats_of(X)).score_scale
    static_alone = nm_linear(X[:1], W, B, 4, 8, criterion="clact_static", score_scale=scale)
    static_batched = nm_linear(torch.cat([X[:1], other]), W, B, 4, 8, criterion="clact_static", score_scale=scale)
    torch.testing.assert_close(static_alone, static_batched[:1], rtol=0, atol=1e-5)  # a mask flip is O(1)


@pytest.mark.parametrize("criterion,column_score", [
    ("clact_static", lambda w, x: np.sqrt((x ** 2).mean(0))),
    ("wina", lambda w, x: np.linalg.norm(w, axis=0)),
    ("var_weight", lambda w, x: w.var(0, ddof=1)),
])
def test_static_criteria_are_magnitude_times_a_column_score(criterion, column_score):
    w, x = W.double().numpy(), X.double().numpy()
    scale = layer_constants(SparsityConfig("4:8", criterion=criterion), W, B, stats_of(X)).score_scale
    np.testing.assert_allclose(scale.numpy(), column_score(w, x), rtol=1e-5)
    got = nm_linear(X, W, B, 4, 8, criterion=criterion, score_scale=scale)
    torch.testing.assert_close(got, linear_masked(x, keep_by(np.abs(x) * column_score(w, x))), rtol=0, atol=1e-5)


def test_amber_column_score_formula():
    w = W.double().numpy()
    low, high = np.quantile(w, [0.005, 0.995])
    clipped = np.clip(w, low, high)
    standardised = (clipped - clipped.mean()) / clipped.std(ddof=1)
    norms = np.linalg.norm(standardised, axis=0)
    np.testing.assert_allclose(amber_column_score(W).numpy(), norms / norms.min(), rtol=1e-4)


def test_variance_correction_formula():
    x = X.double()
    sparse = masked_input(x, 4, 8)
    factor = (x.var(-1, unbiased=False, keepdim=True) / sparse.var(-1, unbiased=False, keepdim=True)).sqrt()
    expected = torch.nn.functional.linear((sparse * factor).float(), W, B)
    torch.testing.assert_close(nm_linear(X, W, B, 4, 8, correction="variance"), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("correction,eta", [("shift_mean", lambda x: x.mean(-1, keepdim=True)),
                                            ("shift_median", lambda x: x.median(-1, keepdim=True).values)])
def test_per_token_shift_prunes_x_minus_eta_and_adds_eta_back(correction, eta):
    x = X.double()
    e = eta(x)
    expected = torch.nn.functional.linear((masked_input(x - e, 4, 8) + e).float(), W, B)
    torch.testing.assert_close(nm_linear(X, W, B, 4, 8, correction=correction), expected, rtol=0, atol=1e-4)


def test_static_shift_folds_w_eta_into_the_bias():
    config = SparsityConfig("4:8", correction="shift_static")
    consts = layer_constants(config, W, B, stats_of(X))
    eta = X.double().mean(0)
    torch.testing.assert_close(consts.shift.double(), eta, rtol=1e-5, atol=1e-6)
    got = nm_linear(X, W, consts.bias, 4, 8, correction="shift_static", shift=consts.shift)
    x = X.double()
    expected = masked_input(x - eta, 4, 8) @ W.double().T + B.double() + W.double() @ eta
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)


def test_smoothquant_scaling_prunes_x_over_s_with_w_times_s():
    config = SparsityConfig("4:8", correction="scaling")
    consts = layer_constants(config, W, B, stats_of(X))
    x, w = X.double(), W.double()
    s = (x.abs().amax(0) / w.abs().amax(0)).sqrt()
    torch.testing.assert_close(consts.score_scale.double(), 1 / s, rtol=1e-5, atol=0)
    expected = masked_input(x / s, 4, 8) @ (w * s).T + B.double()
    got = nm_linear(X, W, B, 4, 8, correction="scaling", score_scale=consts.score_scale)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)


def test_calibrated_bias_adds_w_times_the_mean_pruning_error():
    stats = stats_of(X)
    stats.update_error(X - masked_input(X, 4, 8))
    consts = layer_constants(SparsityConfig("4:8", correction="bias"), W, B, stats)
    expected_bias = B.double() + W.double() @ (X.double() - masked_input(X.double(), 4, 8)).mean(0)
    torch.testing.assert_close(consts.bias.double(), expected_bias, rtol=0, atol=1e-5)
    assert consts.score_scale is None and consts.shift is None


def test_wanda_weight_scores_and_exact_n_per_group():
    from actprune_compiler.sparsity.weights import prune_weight

    stats = stats_of(X)
    pruned = prune_weight(W, 2, 4, "wanda", stats)
    scores = np.abs(W.double().numpy()) * np.sqrt((X.double().numpy() ** 2).mean(0))
    np.testing.assert_array_equal(pruned.numpy() != 0, numpy_keep_mask(scores, 2, 4))
    assert not torch.equal(pruned != 0, prune_weight(W, 2, 4, "magnitude", None) != 0)


def test_registries_name_what_the_cli_offers():
    assert set(CRITERIA) == {"magnitude", "clact", "clact_static", "amber", "wina", "var_weight"}
    assert set(WEIGHT_CRITERIA) == {"magnitude", "wanda"}


def test_missing_calibration_is_an_error_not_a_silent_default():
    with pytest.raises(ValueError, match="needs calibration statistics"):
        sparsify(tiny_program("llama"), SparsityConfig("8:16", criterion="clact_static"))
