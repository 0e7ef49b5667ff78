import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actprune_compiler import SparsityConfig, parse_pattern
from actprune_compiler.sparsity.config import DEFAULT_MODULES


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("8:16", 8, 16), ("16:32", 16, 32),
                                      (" 1 : 256 ", 1, 256)])
def test_nm_patterns_parse(text, n, m):
    p = parse_pattern(text)
    assert (p.n, p.m, p.is_nm) == (n, m, True)
    assert p.group(1024) == (n, m)


@pytest.mark.parametrize("value", ["50%", 0.5, "50.0%"])
def test_unstructured_ratio_keeps_the_rest_of_the_row(value):
    p = parse_pattern(value)
    assert not p.is_nm and str(p) == "50%"
    assert p.group(576) == (288, 576)


@pytest.mark.parametrize("bad", ["3:2", "4:4", "0:4", "2:512", "2-4", "abc", "", "0%", "100%", 1.5, 0, None, True])
def test_bad_patterns_name_the_value_and_the_allowed_forms(bad):
    with pytest.raises(ValueError, match=r"pattern .*allowed: 'N:M'"):
        parse_pattern(bad)


@pytest.mark.parametrize("field,value,match", [
    ("target", "bias", r"target 'bias' is unknown; allowed: activation, weight"),
    ("criterion", "random", r"criterion for target 'activation' 'random' is unknown; allowed: magnitude"),
    ("correction", "magic", r"correction 'magic' is unknown; allowed: none"),
    ("modules", [""], r"modules .* contains an empty name"),
    ("calib_samples", 0, r"calib_samples must be a positive integer"),
])
def test_bad_fields_name_field_value_and_allowed(field, value, match):
    with pytest.raises(ValueError, match=match):
        SparsityConfig(**{field: value})


def test_weight_target_rejects_activation_corrections():
    with pytest.raises(ValueError, match="applies to activation pruning only"):
        SparsityConfig(target="weight", correction="variance")
    with pytest.raises(ValueError, match="criterion for target 'weight' 'clact' is unknown"):
        SparsityConfig(target="weight", criterion="clact")


def test_defaults_are_the_seven_projections_without_lm_head():
    config = SparsityConfig()
    assert config.modules == DEFAULT_MODULES and "lm_head" not in config.modules
    assert config.pattern == "8:16" and config.target == "activation"


def test_frozen():
    with pytest.raises(AttributeError):
        SparsityConfig().pattern = "2:4"


configs = st.builds(
    SparsityConfig,
    pattern=st.sampled_from(["2:4", "4:8", "8:16", "16:32", "50%", "3:7"]),
    target=st.just("activation"),
    criterion=st.sampled_from(["magnitude", "clact", "clact_static", "amber", "wina"]),
    correction=st.sampled_from(["none", "variance", "shift_mean", "scaling", "bias"]),
    modules=st.lists(st.sampled_from(DEFAULT_MODULES + ("lm_head", "model.layers.*.mlp.*")), min_size=1,
                     max_size=4).map(tuple),
    exclude=st.lists(st.sampled_from(["*.0.*", "q_proj"]), max_size=2).map(tuple),
)


@given(configs)
def test_json_round_trip(config):
    text = config.to_json()
    assert SparsityConfig.from_json(text) == config
    assert json.loads(text)["pattern"] == config.pattern


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown SparsityConfig fields \['sparsity'\]"):
        SparsityConfig.from_dict({"sparsity": 0.5})


def test_comma_separated_modules_and_float_pattern_normalise():
    assert SparsityConfig(modules="q_proj, k_proj").modules == ("q_proj", "k_proj")
    assert SparsityConfig(pattern=0.5) == SparsityConfig(pattern="50%")


def test_skip_sensitive_is_refused_for_weight_pruning():
    with pytest.raises(ValueError, match="skip_sensitive ranks layers by their activation-pruning error; it applies "
                                         "to target 'activation' only"):
        SparsityConfig("2:4", target="weight", skip_sensitive=2)
