"""Noise injection (growth.md §5, §10 test 11) and seeded determinism (test 12)."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import save

from growlm.growth.operators import GrowthOptions, grow_state_dict

SPLIT = dict(width_op="split", hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=352)


def grown(src, **options):
    return grow_state_dict(src.config, src.state_dict(), GrowthOptions(**options))[1]


def test_alpha_zero_is_a_no_op():
    src = tiny_llama()
    plain = grown(src, depth_op="stack", g=2)
    assert all(torch.equal(t, plain[n]) for n, t in grown(src, depth_op="stack", g=2, noise_alpha=0.0).items())


def test_stack_noise_has_the_init_std_of_the_target():
    src = tiny_llama(bias=True)
    alpha = 0.2
    plain = grown(src, depth_op="stack", g=2)
    noisy = grown(src, depth_op="stack", g=2, noise_alpha=alpha)
    hidden, layers = 64, 6
    expected = {"model.embed_tokens.weight": math.sqrt(2 / (5 * hidden)), "lm_head.weight": math.sqrt(2 / (5 * hidden)),
                "model.layers.4.self_attn.q_proj.weight": math.sqrt(2 / (5 * hidden)),
                "model.layers.4.self_attn.o_proj.weight": 1 / (math.sqrt(hidden) * layers),
                "model.layers.1.mlp.up_proj.weight": math.sqrt(2 / (5 * hidden)),
                "model.layers.1.mlp.down_proj.weight": 1 / (math.sqrt(hidden) * layers)}
    for name, std in expected.items():
        eps = (noisy[name] - (1 - alpha) * plain[name]) / alpha
        assert eps.std().item() == pytest.approx(std, rel=0.05), name
    for name, tensor in noisy.items():
        if "norm" in name or name.endswith(".bias"):
            assert torch.equal(tensor, plain[name]), name
    # each stacked copy draws its own noise from (seed, target name)
    first, second = noisy["model.layers.0.mlp.up_proj.weight"], noisy["model.layers.3.mlp.up_proj.weight"]
    assert torch.equal(plain["model.layers.0.mlp.up_proj.weight"], plain["model.layers.3.mlp.up_proj.weight"])
    assert not torch.equal(first, second)


def test_noise_head_false_leaves_lm_head():
    src = tiny_llama()
    plain = grown(src, depth_op="stack", g=2)
    noisy = grown(src, depth_op="stack", g=2, noise_alpha=0.2, noise_head=False)
    assert torch.equal(noisy["lm_head.weight"], plain["lm_head.weight"])
    assert not torch.equal(noisy["model.embed_tokens.weight"], plain["model.embed_tokens.weight"])


def test_split_noise_changes_only_new_entries():
    src = tiny_llama()
    alpha = 0.2
    plain = grown(src, split="even", **SPLIT)
    noisy = grown(src, split="even", noise_alpha=alpha, **SPLIT)
    for name, tensor in noisy.items():
        if tensor.ndim == 1:
            assert torch.equal(tensor, plain[name]), name
            continue
        rows, cols = src.state_dict()[name].shape
        assert torch.equal(tensor[:rows, :cols], plain[name][:rows, :cols]), name
        assert not torch.equal(tensor[:, cols:], plain[name][:, cols:]), name
    up = "model.layers.2.mlp.up_proj.weight"
    eps = (noisy[up][176:] - (1 - alpha) * plain[up][176:]) / alpha
    assert eps.std().item() == pytest.approx(math.sqrt(2 / (5 * 128)), rel=0.05)


@pytest.mark.parametrize("options", [dict(depth_op="stack", g=2, noise_alpha=0.2),
                                     dict(split="uneven", noise_alpha=0.1, **SPLIT),
                                     dict(width_op="zero", depth_op="zero", g=2, hidden_size=128,
                                          num_attention_heads=8, num_key_value_heads=4)])
def test_same_seed_same_bytes(options):
    src = tiny_llama(dtype=torch.bfloat16)

    def digest(seed: int) -> str:
        return hashlib.sha256(save(grown(src, seed=seed, **options))).hexdigest()

    assert digest(5) == digest(5) != digest(6)
