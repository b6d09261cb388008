"""Width growth: G_direct-> split and G_zero-> under GQA, tied and untied (growth.md §4, §10 tests 7 and 8)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from test_depth_ops import load_grown, logits, random_ids
from transformers.models.llama import modeling_llama

from growlm.growth.operators import GrowthOptions, grow_state_dict, plan_growth

WIDER = {128: dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=352),
         96: dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=3, intermediate_size=264)}


def _dtype_faithful_rmsnorm(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture
def patched_fp64_norm(monkeypatch):
    """growth.md §1: HF's RMSNorm computes in float32 even in float64 models; compute in the input dtype."""
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _dtype_faithful_rmsnorm)


def grow(src, **options):
    plan = plan_growth(src.config, [n for n in src.state_dict() if not (src.config.tie_word_embeddings
                                                                        and n == "lm_head.weight")],
                       GrowthOptions(**options))
    state = src.state_dict()
    return plan, load_grown(plan.config, {name: build(state.__getitem__) for name, build in plan.tensors.items()})


def stream_scale(sigma: list[int], old: int) -> torch.Tensor:
    """a_i = sqrt((H'/H) / c(sigma(i))), computed independently of the library."""
    sigma_t = torch.tensor(sigma)
    counts = torch.bincount(sigma_t, minlength=old).double()
    return torch.sqrt(len(sigma) / old / counts[sigma_t])


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("hidden", [128, 96])
@pytest.mark.parametrize("split", ["even", "uneven"])
def test_split_is_function_preserving_fp64_and_every_layer_is_scaled_copy(patched_fp64_norm, split, hidden, tied):
    src = tiny_llama(tied=tied, dtype=torch.float64)
    plan, grown = grow(src, width_op="split", split=split, **WIDER[hidden])
    assert plan.record["function_preserving"] is True
    ids = random_ids(3)
    ours, theirs = logits(grown, ids, output_hidden_states=True), logits(src, ids, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-10 * theirs.logits.abs().max()
    sigma = plan.record["width"]["sigma_hidden"]
    a = stream_scale(sigma, 64)
    # hidden_states: embedding output, the first L-1 block outputs, then the final norm's output
    assert len(ours.hidden_states) == 4
    for h_new, h_old in zip(ours.hidden_states[:-1], theirs.hidden_states[:-1]):
        assert torch.allclose(h_new, a * h_old[..., sigma], rtol=0, atol=1e-10)
    final_scale = a / (hidden / 64) if tied else a
    final = theirs.hidden_states[-1][..., sigma]
    assert torch.allclose(ours.hidden_states[-1], final_scale * final, rtol=0, atol=1e-10)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("hidden", [128, 96])
@pytest.mark.parametrize("split", ["even", "uneven"])
def test_split_fp32_logits_within_1e5_relative(split, hidden, tied):
    src = tiny_llama(tied=tied)
    _, grown = grow(src, width_op="split", split=split, **WIDER[hidden])
    ids = random_ids(4)
    ours, theirs = logits(grown, ids).logits, logits(src, ids).logits
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_split_without_norm_awareness_is_not_function_preserving_at_unequal_counts():
    src = tiny_llama()
    plan, grown = grow(src, width_op="split", norm_aware=False, **WIDER[96])
    assert plan.record["function_preserving"] is False
    ids = random_ids(5)
    assert (logits(grown, ids).logits - logits(src, ids).logits).abs().max() > 1e-2


def test_split_index_maps_follow_gqa_groups_and_rules():
    src = tiny_llama()
    names = list(src.state_dict())
    full_record = plan_growth(src.config, names, GrowthOptions(width_op="split", **WIDER[96])).record
    record = json.loads(json.dumps(full_record))["width"]
    assert record["sigma_hidden"][:64] == list(range(64)) and len(record["sigma_hidden"]) == 96
    assert sorted(record["sigma_hidden"][64:]) == sorted(set(record["sigma_hidden"][64:]))  # balanced: no repeats
    assert record["sigma_kv_groups"][:2] == [0, 1] and len(record["sigma_kv_groups"]) == 3
    cyclic = plan_growth(src.config, names, GrowthOptions(width_op="split", index_rule="cyclic", **WIDER[128]))
    assert cyclic.record["width"]["sigma_ffn"] == list(range(176)) * 2
    assert cyclic.record["width"]["sigma_kv_groups"] == [0, 1, 0, 1]


def test_split_copies_query_heads_with_their_kv_group():
    src = tiny_llama()
    plan, grown = grow(src, width_op="split", split="even", index_rule="cyclic", **WIDER[128])
    # cyclic: new group 2 copies group 0, so new query heads 4, 5 copy heads 0, 1 (rows, before the 1/a column scale)
    q_new = grown.model.layers[0].self_attn.q_proj.weight[4 * 16:6 * 16, :64]
    q_old = grown.model.layers[0].self_attn.q_proj.weight[0:2 * 16, :64]
    assert torch.equal(q_new, q_old)


def _adamw_steps(model, steps: int = 5) -> None:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        ids = random_ids(10 + step)
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(("split", "stays_equal"), [("even", True), ("uneven", False)])
def test_even_split_copies_stay_identical_under_adamw(split, stays_equal):
    src = tiny_llama()
    plan, grown = grow(src, width_op="split", split=split, hidden_size=64, intermediate_size=352)
    sigma_ffn = plan.record["width"]["sigma_ffn"]
    _adamw_steps(grown)
    gate = grown.model.layers[1].mlp.gate_proj.weight.detach()
    copies = torch.tensor(sigma_ffn[176:])
    assert not torch.equal(gate[176:], src.model.layers[1].mlp.gate_proj.weight[copies])  # training moved them
    assert torch.equal(gate[176:], gate[copies]) is stays_equal


@pytest.mark.parametrize("tied", [False, True])
def test_zero_width_is_function_preserving_with_eps_correction(patched_fp64_norm, tied):
    src = tiny_llama(tied=tied, dtype=torch.float64)
    plan, grown = grow(src, width_op="zero", **WIDER[96])
    assert plan.config.rms_norm_eps == pytest.approx(1e-5 * 64 / 96)
    ids = random_ids(6)
    ours, theirs = logits(grown, ids, output_hidden_states=True), logits(src, ids, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-10 * theirs.logits.abs().max()
    for h_new, h_old in zip(ours.hidden_states, theirs.hidden_states):
        assert not h_new[..., 64:].any()
        assert torch.allclose(h_new[..., :64], h_old, rtol=0, atol=1e-10)
    q = grown.model.layers[0].self_attn.q_proj.weight
    assert not q[64:, :64].any() and q[64:, 64:].std() > 0


def test_zero_width_without_eps_correction_is_close_but_not_exact(patched_fp64_norm):
    src = tiny_llama(dtype=torch.float64)
    plan, grown = grow(src, width_op="zero", eps_correction=False, **WIDER[96])
    assert plan.record["function_preserving"] is False and plan.config.rms_norm_eps == 1e-5
    ids = random_ids(7)
    reference = logits(src, ids).logits
    error = (logits(grown, ids).logits - reference).abs().max()
    assert 0 < error < 1e-3 * reference.abs().max()


def test_width_then_depth_composes():
    src = tiny_llama()
    plan, grown = grow(src, width_op="zero", depth_op="zero", g=2, **WIDER[128])
    assert plan.config.num_hidden_layers == 6 and plan.config.hidden_size == 128
    assert plan.record["function_preserving"] is True
    ids = random_ids(8)
    reference = logits(src, ids).logits
    assert (logits(grown, ids).logits - reference).abs().max() <= 1e-5 * reference.abs().max()


@pytest.mark.parametrize("width_op", ["split", "zero"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_width_growth_keeps_dtype(width_op, dtype):
    src = tiny_llama(dtype=dtype)
    _, tensors = grow_state_dict(src.config, src.state_dict(), GrowthOptions(width_op=width_op, **WIDER[128]))
    assert {t.dtype for t in tensors.values()} == {dtype}
    assert tensors["model.layers.0.mlp.up_proj.weight"].shape == (352, 128)


@pytest.mark.parametrize(("rows", "cols"), [(7, 3), (33, 5), (100, 17), (1000, 1), (5, 2), (31, 1024), (2, 7), (1, 20)])
def test_row_blocks_draw_the_same_noise_as_one_draw(monkeypatch, rows, cols):
    import growlm.growth.noise as noise

    for block in (1, 16, 50, 1000):
        monkeypatch.setattr(noise, "BLOCK_ELEMENTS", block)
        whole = torch.randn((rows, cols), generator=torch.Generator().manual_seed(5))
        generator = torch.Generator().manual_seed(5)
        blocks = noise.row_blocks(rows, cols)
        assert blocks[0][0] == 0 and blocks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:])), blocks
        parts = torch.cat([torch.randn((stop - start, cols), generator=generator) for start, stop in blocks])
        assert torch.equal(whole, parts), (block, blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("options", [
    dict(width_op="split", hidden_size=96, intermediate_size=256),
    dict(width_op="split", hidden_size=100, intermediate_size=250, split="even", noise_alpha=0.2),
    dict(width_op="split", hidden_size=96, index_rule="random", norm_aware=False, noise_alpha=0.1, noise_head=False),
    dict(width_op="zero", hidden_size=80, intermediate_size=300),
])
def test_builders_in_row_blocks_match_one_block(monkeypatch, options, dtype):
    """Row blocks (width builders and noise) are a memory bound only: any block size gives the same bytes."""
    import growlm.growth.noise as noise

    model = tiny_llama(vocab_size=131)
    state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    grown = []
    for block in (10**9, 37):
        monkeypatch.setattr(noise, "BLOCK_ELEMENTS", block)
        grown.append(grow_state_dict(model.config, state, GrowthOptions(**options))[1])
    for name, tensor in grown[0].items():
        assert tensor.dtype == dtype and torch.equal(tensor.view(torch.uint8), grown[1][name].view(torch.uint8)), name
