"""CompleteP (completep.md §7): the group table, init, forward equivalence (Granite oracle), export to a plain Llama,
CompleteP-aware growth, coordinate-check direction, and pretraining (resume, --init-from) with the table's groups."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GraniteConfig, GraniteForCausalLM, LlamaForCausalLM

from growlm.completep.coord_check import depth_sweep
from growlm.completep.model import (
    CompletePLlamaForCausalLM,
    Parametrization,
    build,
    completep_config,
    from_plain,
    save_plain,
    to_plain,
)
from growlm.completep.optim import group_of, group_rules, param_groups
from growlm.growth.grow import grow_checkpoint
from growlm.growth.types import GrowthOptions
from growlm.modeling import Shape, llama_config
from tests.test_pretrain import pretrain_cmd, run, step_losses


def tiny_config(layers=2, width=64, **overrides):
    return llama_config(Shape(layers, width, width // 16, width // 16, 4 * width, head_dim=16,
                              max_position_embeddings=64), vocab_size=96, **overrides)


def tiny(layers=2, width=64, *, seed=0, tie=False, **settings):
    settings = {"base_width": 32, "base_depth": 1, **settings}
    return build(tiny_config(layers, width, tie_word_embeddings=tie), Parametrization(**settings), seed=seed).eval()


IDS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("m_n,m_l,alpha", list(itertools.product([1, 2, 4], [1, 4, 16], [0.5, 1.0])))
def test_group_table(m_n, m_l, alpha):
    config = completep_config(tiny_config(2 * m_l, 32 * m_n),
                              Parametrization(alpha=alpha, base_width=32, base_depth=2))
    with torch.device("meta"):
        model = CompletePLlamaForCausalLM(config)
    lr, wd, eps = 1e-3, 0.1, 1e-8
    groups = {g["name"]: g for g in param_groups(model, lr=lr, weight_decay=wd, eps=eps)}
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    d = m_l ** (alpha - 1)
    expected = {"embedding": (1, wd, eps / m_n), "block_norms": (d, 0, eps / m_n / m_l ** alpha),
                "hidden_weights": (d / m_n, wd * m_n, eps / m_n / m_l ** alpha),
                "final_norm": (1, 0, eps / m_n), "unembedding": (1, wd, eps / m_n)}
    for name, (scale, decay, e) in expected.items():
        assert groups[name]["lr_scale"] == pytest.approx(scale) and groups[name]["lr"] == pytest.approx(lr * scale)
        assert groups[name]["weight_decay"] == pytest.approx(decay) and groups[name]["eps"] == pytest.approx(e)
    p = Parametrization(alpha=alpha, base_width=32, base_depth=2, eps_mode="global")
    global_eps = [r["eps"] for r in group_rules(p, config, lr=lr, weight_decay=wd, eps=eps).values()]
    assert global_eps == pytest.approx([eps / m_n / m_l ** alpha] * 6)
    if m_l == 1:  # no depth scaling left: the groups are μP's
        mup = group_rules(Parametrization("mup", base_width=32, base_depth=2), config, lr=lr, weight_decay=wd, eps=eps)
        assert mup == group_rules(Parametrization(alpha=alpha, base_width=32, base_depth=2), config, lr=lr,
                                  weight_decay=wd, eps=eps)


def test_unknown_parameter_and_bad_settings_raise():
    with pytest.raises(ValueError, match="matches no CompleteP group"):
        group_of("model.layers.0.mlp.extra.weight")
    with pytest.raises(ValueError, match="parametrization"):
        Parametrization("sp")


def test_init_follows_the_table():
    model = tiny(4, 256, base_width=64, base_depth=2, init_std=0.02)
    for name, param in model.named_parameters():
        if "norm" in name:
            assert torch.equal(param, torch.ones_like(param))
        elif name.startswith("model.layers."):
            assert param.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.05)
        else:
            assert param.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.config.completep["branch_scale"] is None
    assert Parametrization(**model.config.completep).branch_scales(model.config) == [0.5] * 4


def test_forward_matches_granite_and_survives_save_load(tmp_path):
    model = tiny(4, 64, alpha_in=2.0, alpha_out=3.0, attn_scale="inverse")
    logits = model(input_ids=IDS).logits
    c = model.config
    granite = GraniteForCausalLM(GraniteConfig(
        vocab_size=96, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, rms_norm_eps=c.rms_norm_eps, rope_theta=10000.0, max_position_embeddings=64,
        embedding_multiplier=2.0, residual_multiplier=0.25, attention_multiplier=1 / 16, logits_scaling=2 / 3,
        tie_word_embeddings=False)).eval()
    granite.load_state_dict(model.state_dict())
    assert (granite(input_ids=IDS).logits - logits).abs().max() < 1e-5
    model.save_pretrained(tmp_path / "cp")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cp")
    assert isinstance(loaded, CompletePLlamaForCausalLM) and torch.equal(loaded(input_ids=IDS).logits, logits)
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 64))


@pytest.mark.parametrize("tie", [False, True])
def test_export_is_a_plain_llama_with_the_same_logits(tmp_path, tie):
    model = tiny(8, 64, tie=tie, alpha=0.5, alpha_in=1.5, alpha_out=3.0)
    for param in model.parameters():  # trained-looking norms, so the tied norm fold is exercised
        if param.dim() == 1:
            param.data.uniform_(0.5, 1.5)
    save_plain(model, tmp_path / "plain")
    fields = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert fields["model_type"] == "llama" and "completep" not in fields
    plain = LlamaForCausalLM.from_pretrained(tmp_path / "plain").eval()
    assert (plain(input_ids=IDS).logits - model(input_ids=IDS).logits).abs().max() < 1e-5
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(plain.generate(IDS[:1], **kw), model.generate(IDS[:1], **kw))


def test_power_of_two_factors_fold_bitwise():
    model = tiny(4, 64, alpha_in=2.0, alpha_out=4.0)  # r = 1/4, alpha_out/m_N = 2
    assert torch.equal(to_plain(model).eval()(input_ids=IDS).logits, model(input_ids=IDS).logits)


def grown_logits(tmp_path, src, name, **options):
    out = grow_checkpoint(src, tmp_path / name, GrowthOptions(**options))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    return model(input_ids=IDS).logits, json.loads((out / "parameterization.json").read_text()), model


@pytest.mark.filterwarnings("ignore:source .* has no tokenizer files")
@pytest.mark.parametrize("alpha,g", [(1.0, 2), (0.5, 4)])
def test_growth_corrections(tmp_path, alpha, g):
    src = tmp_path / "src"
    save_plain(tiny(2, 64, alpha=alpha, alpha_in=2.0, base_depth=2), src)
    naive, p_naive, _ = grown_logits(tmp_path, src, "naive", g=g, completep_correction="naive")
    assert p_naive["base_depth"] == 2 * g and p_naive["branch_scale"] == [1.0] * (2 * g)
    r_t = g ** -alpha
    for correction in ("fold", "gauge"):
        logits, p, model = grown_logits(tmp_path, src, correction, g=g, completep_correction=correction)
        assert (logits - naive).abs().max() < 1e-5, correction
        assert p["base_depth"] == 2 and p["branch_scale"] == pytest.approx([r_t] * (2 * g))
        grown = from_plain(model, Parametrization(**p))
        groups = {x["name"]: x for x in param_groups(grown, lr=1e-3, weight_decay=0.1, eps=1e-8)}
        assert groups["hidden_weights"]["lr_scale"] == pytest.approx(g ** (alpha - 1) / 2)  # m_N = 2, m_L = g
        assert groups["block_norms"]["eps"] == pytest.approx(1e-8 / 2 / g ** alpha)
    assert model.config.rms_norm_eps == pytest.approx(1e-5 * g ** (-2 * alpha))  # gauge
    rescaled, _, _ = grown_logits(tmp_path, src, "rescale", g=g, completep_correction="rescale")
    assert (rescaled - naive).abs().max() > 1e-3
    zero, _, _ = grown_logits(tmp_path, src, "zero", g=g, depth_op="zero", completep_correction="fold")
    source = AutoModelForCausalLM.from_pretrained(src).eval()(input_ids=IDS).logits
    assert (zero - source).abs().max() < 1e-5


def test_coord_check_completep_flat_sp_drifts():
    verdict = depth_sweep([2, 8, 32], ("completep", "sp"), steps=6)["verdict"]
    assert verdict["completep"]["pass"] and abs(verdict["completep"]["slope"]) <= 0.3, verdict["completep"]
    assert verdict["sp"]["min_slope"] > 0.7 and verdict["sp"]["max_ratio"] > 10, verdict["sp"]


CP = ["--parametrization", "completep", "--base-width", "32", "--base-depth", "1", "--alpha-in", "2", "--max-steps",
      "4"]


def test_completep_pretrain_resumes_bit_exactly_and_continues_grown(tmp_path):
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    result = run(pretrain_cmd(ref, *CP))
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(ref / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    shutil.copy(ref / "run.json", resumed / "run.json")  # the checkpoint belongs to the reference's run
    result = run(pretrain_cmd(resumed, *CP, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {s: v for s, v in step_losses(ref).items() if s > 2} == step_losses(resumed)
    a, b = (AutoModelForCausalLM.from_pretrained(d / "final") for d in (ref, resumed))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert json.loads((ref / "final" / "parameterization.json").read_text())["base_depth"] == 1
    grown = grow_checkpoint(ref / "final", tmp_path / "grown", GrowthOptions(g=2))
    result = run(pretrain_cmd(tmp_path / "cont", "--parametrization", "completep", "--init-from", str(grown),
                              "--max-steps", "1", "--lr", "1e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "cont" / "final" / "parameterization.json").read_text())
    assert saved["branch_scale"] == [0.25] * 4 and saved["base_width"] == 32
    bad = run(pretrain_cmd(tmp_path / "bad", "--parametrization", "completep", "--init-from", str(grown),
                           "--base-depth", "3", "--max-steps", "1"))
    assert bad.returncode != 0 and "other CompleteP settings" in bad.stderr
