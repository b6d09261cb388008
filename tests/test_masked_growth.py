"""G_random, masked growth (growth.md §3.4, §4.4; §10 tests 5 and 9): the grown model under its masks at t = 0
computes the source's function, the masks follow the spec's schedule, the model is a plain Llama after the ramp,
an export mid-ramp folds the masks away, and a pretraining run resumes mid-ramp bit-exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, save_tiny_llama, tiny_llama
from safetensors.torch import load_file
from test_depth_ops import load_grown, logits, random_ids
from test_pretrain import step_losses
from test_width_ops import WIDER, grow
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from growlm.cli.stack import main as stack_main
from growlm.growth.masked import MaskedGrowth, masked_growth_of
from growlm.growth.operators import GrowthOptions, plan_growth
from growlm.growth.prts_config import project_to_job, prts_to_job
from growlm.train.config import UsageError, parse_args
from growlm.train.loop import train
from growlm.train.ramp import Ramp

CPU = torch.device("cpu")


def ramp_of(plan, model: LlamaForCausalLM, step: int = 0) -> Ramp:
    return Ramp(model, MaskedGrowth.from_dict(masked_growth_of(plan.record), "plan"), device=CPU, step=step)


def plain_copy(plan, model: LlamaForCausalLM, state_dict: dict | None = None) -> LlamaForCausalLM:
    """A fresh, never-hooked LlamaForCausalLM holding `state_dict` (default: the model's weights)."""
    state_dict = model.state_dict() if state_dict is None else state_dict
    return load_grown(plan.config, {name: state_dict[name] for name in plan.tensors})


def no_hooks(model: LlamaForCausalLM) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("layer_map", "new_layers"), [(None, [3, 4, 5]), ([0, None, 1, None, 2, None], [1, 3, 5])])
def test_depth_ramp_starts_at_the_source_and_ends_as_a_plain_llama(layer_map, new_layers, tied):
    src = tiny_llama(tied=tied, bias=True)
    G = 3
    plan, model = grow(src, depth_op="random", num_layers=6, layer_map=layer_map, ramp_steps=G)
    assert plan.record["depth"]["new_layers"] == new_layers and plan.record["function_preserving"] is True
    new = model.model.layers[new_layers[0]]
    assert torch.equal(new.mlp.down_proj.bias, torch.zeros(64)) and torch.equal(new.input_layernorm.weight,
                                                                                 torch.ones(64))
    assert new.mlp.up_proj.weight.std().item() == pytest.approx((2 / (5 * 64)) ** 0.5, rel=0.1)  # target init
    old = [i for i in range(6) if i not in new_layers]
    assert torch.equal(model.model.layers[old[1]].self_attn.q_proj.weight, src.model.layers[1].self_attn.q_proj.weight)
    ramp = ramp_of(plan, model)
    ids = random_ids()
    assert torch.equal(logits(model, ids).logits, logits(src, ids).logits)  # t = 0: bitwise the source
    x, y = torch.randn(2, 5, 64), torch.randn(2, 5, 176)
    for k in range(1, G):
        ramp.set_step(k)
        with torch.no_grad():  # forward() bypasses the hooks: the gated output is k/G times the plain one
            assert torch.equal(new.self_attn.o_proj(x), new.self_attn.o_proj.forward(x) * torch.tensor(k / G))
            assert torch.equal(new.mlp.down_proj(y), new.mlp.down_proj.forward(y) * torch.tensor(k / G))
    ramp.set_step(1)
    hooked = logits(model, ids).logits
    folded = plain_copy(plan, model, ramp.fold(model.state_dict()))
    assert (logits(folded, ids).logits - hooked).abs().max() <= 1e-5  # a mid-ramp export computes the gated model
    assert not torch.equal(hooked, logits(plain_copy(plan, model), ids).logits)
    ramp.set_step(G)
    assert not ramp.active and no_hooks(model) and type(model) is LlamaForCausalLM
    assert torch.equal(logits(model, ids).logits, logits(plain_copy(plan, model), ids).logits)
    assert ramp.fold(model.state_dict()).keys() == model.state_dict().keys()


def test_block_gate_blends_the_whole_block_and_refuses_a_mid_ramp_export():
    src = tiny_llama()
    plan, model = grow(src, depth_op="random", g=2, gate_mode="block", ramp_steps=4)
    ramp = ramp_of(plan, model)
    ids = random_ids(1)
    assert torch.equal(logits(model, ids).logits, logits(src, ids).logits)
    ramp.set_step(1)
    h = torch.randn(1, 5, 64)
    embeddings = model.model.rotary_emb(h, torch.arange(5)[None])
    layer = model.model.layers[3]
    with torch.no_grad():
        gate = torch.tensor(0.25)
        expected = gate * layer.forward(h, position_embeddings=embeddings) + (1 - gate) * h
        assert torch.equal(layer(h, position_embeddings=embeddings), expected)
    with pytest.raises(ValueError, match=r"block gates .* do not fold into a plain Llama"):
        ramp.fold(model.state_dict())


def observed_mask(module: torch.nn.Module, x: torch.Tensor, old: int) -> float:
    """The mask a hooked module applies to its new output entries (old entries must pass unchanged)."""
    with torch.no_grad():
        hooked, plain = module(x), module.forward(x)
    assert torch.equal(hooked[..., :old], plain[..., :old])
    ratio = hooked[..., old:] / plain[..., old:]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=0, atol=1e-6)
    return round(ratio.flatten()[0].item(), 6)


@pytest.mark.parametrize("tied", [False, True])
def test_width_masks_follow_the_phase_table_and_the_model_ends_plain(tied):
    src = tiny_llama(tied=tied)
    G = 4
    plan, model = grow(src, width_op="random", ramp_steps=G, **WIDER[128])
    layer = model.model.layers[1]
    assert torch.equal(layer.mlp.gate_proj.weight[:176, :64], src.model.layers[1].mlp.gate_proj.weight)
    assert torch.equal(layer.post_attention_layernorm.weight[64:], torch.ones(64))
    assert layer.mlp.gate_proj.weight[176:, :64].abs().min() > 0  # new rows read the old units too (random)
    ramp = ramp_of(plan, model)
    ids = random_ids(3)
    assert (logits(model, ids).logits - logits(src, ids).logits).abs().max() <= 1e-4
    x, stream = torch.randn(1, 3, 128), torch.randn(1, 3, 352)
    table = {0: (0, 0, 0), G // 2: (0.5, 0, 0), G: (1, 0, 0), 2 * G: (1, 1, 0), 2 * G + G // 2: (1, 1, 0.5)}
    for t, (m_f, m_h, m_heads) in table.items():
        ramp.set_step(t)
        observed = (observed_mask(layer.mlp.up_proj, x, 176), observed_mask(layer.mlp.down_proj, stream, 64),
                    observed_mask(model.model.embed_tokens, ids, 64), observed_mask(layer.self_attn.q_proj, x, 64),
                    observed_mask(layer.self_attn.v_proj, x, 32))
        assert observed == (m_f, m_h, m_h, m_heads, m_heads), t
    ramp.set_step(G + G // 2)  # the masked norm at m_H = 0.5, against growth.md §4.4's formula
    norm, mask = model.model.norm, torch.cat([torch.ones(64), torch.full((64,), 0.5)])
    expected = mask * norm.weight * x / torch.sqrt((mask * x**2).sum(-1, keepdim=True) / mask.sum() + 1e-5)
    with torch.no_grad():
        assert torch.allclose(norm(x), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="masked RMSNorm .* does not fold"):
        ramp.fold(model.state_dict())
    ramp.set_step(2 * G + 1)  # phase 3: the stream is whole, the new heads fold into q/k/v
    hooked = logits(model, ids).logits
    assert (logits(plain_copy(plan, model, ramp.fold(model.state_dict())), ids).logits - hooked).abs().max() <= 1e-5
    ramp.set_step(3 * G)
    assert no_hooks(model) and all(type(m) is LlamaRMSNorm for m in model.modules() if isinstance(m, LlamaRMSNorm))
    assert torch.equal(logits(model, ids).logits, logits(plain_copy(plan, model), ids).logits)


@pytest.mark.parametrize(("options", "message"), [
    (dict(depth_op="random", num_layers=3), "G_random adds no new layer"),
    (dict(depth_op="random", layer_map=[1, 0, 2, None]), r"non-null entries must be exactly 0..2 in order"),
    (dict(depth_op="random", layer_map=[0, None, 2, None]), r"non-null entries must be exactly 0..2 in order"),
    (dict(depth_op="random", layer_map=[0, 1, 2, True]), r"layer_map\[3\]=True must be an int source layer id"),
    (dict(depth_op="random", g=2, layer_map="stack"), "G_random needs a list with None"),
    (dict(depth_op="random", g=2, ramp_steps=0), "ramp_steps=0 must be a positive int"),
    (dict(width_op="random", ramp_steps=-5, **WIDER[128]), "ramp_steps=-5 must be a positive int"),
    (dict(depth_op="random", g=2, gate_mode="residual"), "gate_mode='residual' is unknown"),
    (dict(depth_op="random", g=2, noise_alpha=0.2), "noise_alpha=0.2 with depth_op='random': noise would break"),
    (dict(width_op="random", noise_alpha=0.1, **WIDER[128]), "noise_alpha=0.1 with width_op='random'"),
    (dict(depth_op="random", width_op="split", g=2, **WIDER[128]), "depth_op='random' with width_op='split'"),
])
def test_invalid_masked_growth_raises(options, message):
    src = tiny_llama()
    with pytest.raises(ValueError, match=message):
        plan_growth(src.config, list(src.state_dict()), GrowthOptions(**options))


def test_config_files_select_masked_growth():
    job = project_to_job({"depth": {"op": "random", "layer_map": [0, None, 1, None], "ramp_steps": 7,
                                    "gate_mode": "block"}})
    assert (job.options.depth_op, job.options.layer_map, job.options.ramp_steps, job.options.gate_mode) == (
        "random", [0, None, 1, None], 7, "block")
    with pytest.raises(ValueError, match=r"depth keys \['gate_mode'\] do not apply to depth.op='stack'"):
        project_to_job({"depth": {"op": "stack", "gate_mode": "block"}})
    prts = prts_to_job({"src_config_name": "6L2048H", "trg_config_name": "24L2048H", "src_init_path": "x.pth",
                        "grow_step": 300}, method="msg")
    assert (prts.options.depth_op, prts.options.width_op, prts.options.ramp_steps) == ("random", None, 300)


# ---- growlm-stack and pretrain.py ---------------------------------------------------------------------------------

RUN = ["--config", "configs/pretrain/tiny_cpu.yaml", "--seq-len", "32", "--micro-batch-size", "2",
       "--global-batch-tokens", "128", "--validation-blocks", "1", "--warmup-steps", "2", "--save-every", "2",
       "--keep-last", "3", "--eval-every", "0"]
WIDE_FLAGS = ["--width-operator", "random", "--hidden-size", "128", "--num-attention-heads", "8",
              "--num-key-value-heads", "4", "--intermediate-size", "352"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("masked") / "src", with_tokenizer=True)


@pytest.fixture(scope="module")
def grown_wide(source) -> Path:
    out = source.parent / "grown-wide"
    assert stack_main(["--src", str(source), "--out", str(out), *WIDE_FLAGS, "--ramp-steps", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def grown_depth(source) -> Path:
    out = source.parent / "grown-depth"
    assert stack_main(["--src", str(source), "--out", str(out), "--operator", "random", "--g", "2",
                       "--ramp-steps", "4"]) == 0
    return out


def test_stack_cli_writes_a_plain_llama_and_the_ramp(grown_depth, grown_wide, source, capsys):
    record = json.loads((grown_depth / "growth.json").read_text())
    assert record["operator"] == "G_random_depth" and record["layer_map"] == [0, 1, 2, None, None, None]
    assert record["masked_growth"] == {"kind": "depth", "ramp_steps": 4, "new_layers": [3, 4, 5],
                                       "gate_mode": "sublayer", "old_sizes": None}
    assert record["max_abs_logit_delta"] == 0.0  # probed under the masks at t = 0
    assert type(AutoModelForCausalLM.from_pretrained(grown_depth)) is LlamaForCausalLM
    record = json.loads((grown_wide / "growth.json").read_text())
    assert record["masked_growth"]["old_sizes"] == {"hidden_size": 64, "intermediate_size": 176,
                                                    "num_attention_heads": 4, "num_key_value_heads": 2}
    assert record["max_abs_logit_delta"] <= 1e-4
    assert stack_main(["--src", str(source), "--out", str(source.parent / "x"), "--g", "2", "--ramp-steps", "4"]) == 2
    assert "--ramp-steps applies to masked growth" in capsys.readouterr().err


def test_pretrain_resumes_mid_ramp_bit_exactly(grown_depth, tmp_path, monkeypatch):
    """Checkpoint at t = 2 of a 4-step ramp; the resumed run must restore the gates to reproduce steps 3-6."""
    monkeypatch.chdir(REPO_ROOT)
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    run = [*RUN, "--max-steps", "6", "--init-from", str(grown_depth)]
    train(parse_args([*run, "--output-dir", str(ref)]))
    shutil.copytree(ref / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    shutil.copy(ref / "run.json", resumed / "run.json")
    train(parse_args([*run, "--output-dir", str(resumed), "--resume", "auto"]))
    assert step_losses(resumed) == {step: loss for step, loss in step_losses(ref).items() if step > 2}
    ours, theirs = load_file(resumed / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    training = json.loads((ref / "final" / "training.json").read_text())
    assert training["masked_growth"]["t"] == 6 and training["masked_growth"]["folded"] is False


def _gated_checkpoint(run: Path, step: int, growth: MaskedGrowth) -> LlamaForCausalLM:
    """The run's model at checkpoint `step` (unfolded weights) under its masks at t = step."""
    config = LlamaConfig.from_pretrained(run / "final")
    model = LlamaForCausalLM(config).eval()
    weights = load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")
    model.load_state_dict(weights)
    Ramp(model, growth, device=CPU, step=step)
    return model


@pytest.mark.parametrize(("kind", "flags", "steps"), [("depth", ["--ramp-steps", "8"], 2), ("width", [], 5)])
def test_export_mid_ramp_is_the_gated_model_as_a_plain_llama(kind, flags, steps, grown_depth, grown_wide, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    grown = grown_depth if kind == "depth" else grown_wide
    out = tmp_path / "run"
    final = train(parse_args([*RUN, "--max-steps", str(steps), "--init-from", str(grown), "--output-dir", str(out),
                              *flags]))
    training = json.loads((final / "training.json").read_text())["masked_growth"]
    assert training["t"] == steps and training["folded"] is True
    exported = AutoModelForCausalLM.from_pretrained(final).eval()
    assert type(exported) is LlamaForCausalLM and no_hooks(exported)
    gated = _gated_checkpoint(out, steps, MaskedGrowth.from_dict(
        {k: v for k, v in training.items() if k not in ("t", "folded")}, "training.json"))
    ids = random_ids(7, vocab=32000)
    assert (logits(exported, ids).logits - logits(gated, ids).logits).abs().max() <= 1e-4


def test_pretrain_refuses_runs_whose_export_cannot_fold(source, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    wide = source.parent / "grown-wide-4"
    assert stack_main(["--src", str(source), "--out", str(wide), *WIDE_FLAGS, "--ramp-steps", "4"]) == 0
    with pytest.raises(UsageError, match=r"the run ends at step 6, inside the masked-growth ramp.*2\*ramp_steps = 8"):
        train(parse_args([*RUN, "--max-steps", "6", "--init-from", str(wide), "--output-dir", str(tmp_path / "a")]))
    with pytest.raises(ValueError, match="train.ramp_steps=4 must be positive and needs --init-from"):
        parse_args([*RUN, "--max-steps", "6", "--ramp-steps", "4", "--output-dir", str(tmp_path / "b")])
    with pytest.raises(UsageError, match="train.ramp_steps=4 needs --init-from a masked-growth folder"):
        train(parse_args([*RUN, "--max-steps", "6", "--init-from", str(source), "--ramp-steps", "4",
                          "--output-dir", str(tmp_path / "c")]))

