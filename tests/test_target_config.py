"""Target config and every invalid combination of growth.md §2 / §7: each raises ValueError naming the field."""

from __future__ import annotations

import pytest
from conftest import tiny_llama

from growlm.growth.operators import DEPTH_OPERATORS, GrowthOptions, plan_growth
from growlm.growth.target import build_target_config, check_target_config

WIDER = dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=352)


@pytest.fixture(scope="module")
def source():
    model = tiny_llama(bias=False)
    return model.config, list(model.state_dict())


@pytest.fixture(scope="module")
def source_with_bias():
    model = tiny_llama(bias=True)
    return model.config, list(model.state_dict())


def test_target_carries_every_other_field(source):
    config, names = source
    plan = plan_growth(config, names, GrowthOptions(depth_op="stack", num_layers=6))
    src, tgt = config.to_dict(), plan.config.to_dict()
    assert {k for k in src if src[k] != tgt.get(k)} == {"num_hidden_layers"}


@pytest.mark.parametrize(("options", "message"), [
    (dict(depth_op="stack", g=2, hidden_size=128), "hidden_size changes from 64 to 128 but no width operator"),
    (dict(depth_op="stack", g=2, intermediate_size=352), "intermediate_size changes from 176 to 352"),
    (dict(depth_op="stack", g=2, num_attention_heads=8), "num_attention_heads changes from 4 to 8"),
    (dict(width_op="split", num_layers=6, **WIDER), "num_hidden_layers changes from 3 to 6 but no depth operator"),
    (dict(depth_op="stack", num_layers=2), "num_hidden_layers shrinks from 3 to 2"),
    (dict(width_op="zero", hidden_size=32), "hidden_size shrinks from 64 to 32"),
    (dict(width_op="split", hidden_size=128, num_attention_heads=8, num_key_value_heads=2),
     r"num_attention_heads/num_key_value_heads changes from 2 \(4/2\) to 4 \(8/2\).*whole KV groups"),
    (dict(width_op="split", hidden_size=96, num_attention_heads=6, num_key_value_heads=4),
     "num_attention_heads=6 is not a multiple of num_key_value_heads=4; width growth must add whole KV groups"),
    (dict(width_op="split", hidden_size=100, num_attention_heads=6, num_key_value_heads=3),
     r"hidden size \(100\) is not a multiple of the number of attention heads \(6\).*whole KV groups"),
    (dict(depth_op="stack", g=2, tie_word_embeddings=True), "tie_word_embeddings: source False, target True"),
    (dict(depth_op="copy", g=2), r"depth_op='copy' is not a registered operator; "
                                 r"choose one of \['learn', 'random', 'stack', 'zero'\]"),
    (dict(width_op="copy", **WIDER), r"width_op='copy' is not a registered operator; "
                                    r"choose one of \['learn', 'random', 'split', 'zero'\]"),
    (dict(), "give at least one growth operator"),
    (dict(width_op="split", layer_map="stack", **WIDER), "layer_map='stack' is given but depth_op is None"),
    (dict(depth_op="stack", g=2, num_layers=5), "num_layers=5 contradicts g=2"),
    (dict(depth_op="stack", g=0), "g=0 must be a positive int"),
    (dict(depth_op="stack", g=True), "g=True must be a positive int"),
    (dict(depth_op="stack", g=2, noise_alpha=1.0), r"noise_alpha=1.0 must be in \[0, 1\)"),
    (dict(depth_op="stack", g=2, noise_alpha=-0.1), r"noise_alpha=-0.1 must be in \[0, 1\)"),
    (dict(depth_op="zero", g=2, noise_alpha=0.2), "noise_alpha=0.2 with depth_op='zero'"),
    (dict(width_op="zero", noise_alpha=0.2, **WIDER), "noise_alpha=0.2 with width_op='zero'"),
    (dict(width_op="split", split="odd", **WIDER), "split='odd' is unknown"),
    (dict(width_op="split", index_rule="sorted", **WIDER), "index_rule='sorted' is unknown"),
    (dict(depth_op="stack", layer_map=[0, True, 1]), r"layer_map\[1\]=True"),
    (dict(depth_op="stack", layer_map=[0, -1, 1]), r"layer_map\[1\]=-1 out of range for source with 3 layers"),
    (dict(depth_op="stack", num_layers=7), "layer_map='stack' needs num_hidden_layers=7"),
])
def test_invalid_options_raise_naming_the_field(source, options, message):
    config, names = source
    with pytest.raises(ValueError, match=message):
        plan_growth(config, names, GrowthOptions(**options))


@pytest.mark.parametrize("width_op", ["split", "zero"])
def test_biases_with_a_width_operator_raise(source_with_bias, width_op):
    config, names = source_with_bias
    with pytest.raises(ValueError, match="attention_bias=True is not supported by width operators"):
        plan_growth(config, names, GrowthOptions(width_op=width_op, **WIDER))


def test_biases_with_depth_growth_are_accepted(source_with_bias):
    config, names = source_with_bias
    plan = plan_growth(config, names, GrowthOptions(depth_op="stack", g=2))
    assert "model.layers.5.mlp.down_proj.bias" in plan.tensors


@pytest.mark.parametrize(("field", "value", "message"), [
    ("vocab_size", 256, "vocab_size differs: source 128, target 256"),
    ("hidden_act", "gelu", "hidden_act differs: source 'silu', target 'gelu'"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 500000.0}, "rope settings differs: source"),
    ("head_dim", 32, "head_dim differs: source 16, target 32"),
    ("rms_norm_eps", 1e-6, "rms_norm_eps differs: source 1e-05, target 1e-06"),
    ("attention_bias", True, "attention_bias differs: source False, target True"),
    ("mlp_bias", True, "mlp_bias differs: source False, target True"),
    ("num_key_value_heads", 1, "num_key_value_heads shrinks from 2 to 1"),
])
def test_config_mismatches_raise(source, field, value, message):
    config, _ = source
    target = build_target_config(config, {field: value, "num_hidden_layers": 6})
    with pytest.raises(ValueError, match=message):
        check_target_config(config, target, depth_op="stack", width_op="split")


def test_tied_to_untied_allowed_and_max_position_change_only_warns():
    model = tiny_llama(tied=True)
    names = [n for n in model.state_dict() if n != "lm_head.weight"]
    plan = plan_growth(model.config, names, GrowthOptions(depth_op="stack", g=2, tie_word_embeddings=False))
    assert plan.config.tie_word_embeddings is False and "lm_head.weight" in plan.tensors
    with pytest.warns(UserWarning, match="max_position_embeddings changes from 256 to 512"):
        plan_growth(model.config, names, GrowthOptions(depth_op="stack", g=2, max_position_embeddings=512))


def test_source_names_must_match_the_config(source):
    config, names = source
    with pytest.raises(ValueError, match=r"missing \['model.layers.2.mlp.up_proj.weight'\]"):
        plan_growth(config, [n for n in names if n != "model.layers.2.mlp.up_proj.weight"],
                    GrowthOptions(depth_op="stack", g=2))


def test_registry_accepts_new_operators(source, monkeypatch):
    config, names = source
    monkeypatch.setitem(DEPTH_OPERATORS, "stack_copy", DEPTH_OPERATORS["stack"])
    plan = plan_growth(config, names, GrowthOptions(depth_op="stack_copy", g=2))
    assert plan.record["depth"]["op"] == "stack_copy"


@pytest.mark.parametrize(("data", "message"), [
    ({"depth": {"op": "stack", "stride": 2}},
     r"g.json: depth: unknown key\(s\) \['stride'\]; allowed: \['allow_non_fp', 'gate_mode', 'layer_map'"),
    ({"target": {"overrides": {"vocab_size": 64000}}}, r"g.json: target.overrides: unknown key\(s\) \['vocab_size'\]"),
    ({"noise": {"alpha": "big"}}, r"g.json: noise.alpha: expected a number, got 'big'"),
    ({"source": {"format": "gguf"}}, r"g.json: source.format: 'gguf' is not allowed; choose one of \['hf', 'lit'\]"),
    ({"depth": {"op": "stack", "ramp_steps": 10}}, r"depth keys \['ramp_steps'\] do not apply to depth.op='stack'"),
    ({"depth": {"op": "stack", "learn": {"steps": 5}}}, "depth.learn sets up G_learn; set depth.op and/or width.op"),
    ({"depth": {"op": "learn", "learn": {"step": 5}}}, r"depth.learn: unknown key\(s\) \['step'\]"),
    ({"width": {"op": "split", "head_structured": True}}, "width.head_structured applies to width.op='learn' only"),
])
def test_project_growth_json_is_checked_against_its_schema(data, message):
    from growlm.growth.prts_config import project_to_job

    with pytest.raises(ValueError, match=message):
        project_to_job(data, origin="g.json")


def test_project_growth_json_to_options():
    from growlm.growth.prts_config import project_to_job

    job = project_to_job({"source": {"path": "src"}, "depth": {"op": "stack", "layer_map": [0, 1, 0, 1]},
                          "width": None, "target": {"overrides": {"num_hidden_layers": 4}}, "seed": 7})
    assert job.source == "src" and job.source_format == "hf" and job.output is None
    assert job.options == GrowthOptions(depth_op="stack", layer_map=[0, 1, 0, 1], num_layers=4, seed=7)
