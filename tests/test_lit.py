"""prts / lit-gpt conversion and prts growth JSON (growth.md §8, §10 test 13)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from growlm.growth.lit import (
    convert_lit_checkpoint,
    hf_to_lit_state_dict,
    lit_to_hf_state_dict,
    load_lit_state_dict,
    split_fused_qkv,
)
from growlm.growth.prts_config import read_growth_config
from growlm.modeling import build_model
from tests.conftest import tiny_llama

PRTS_EXAMPLE = {  # the reference's prts_configs/stacking_6L_24L.json
    "src_config_name": "6L2048H", "trg_config_name": "24L2048H",
    "src_init_path": "/path/to/your/base_model/check_point_dir/iter-005000-ckpt.pth",
    "stacking_list": [0, 1, 2, 3, 4, 5] * 4,
    "embd_name": "wte", "ln_name": "ln_f", "head_name": "lm_head", "layer_name": "h",
}


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_fused_qkv_is_interleaved_per_group():
    model = tiny_llama(gqa=True)  # n_q=4, n_kv=2 -> r=2, d_h=16
    config = model.config
    # Rows of a synthetic fused weight labelled by (group, slot, dim): slot < r is a query head of the group.
    n_kv, r, d_h, H = 2, 2, 16, config.hidden_size
    labels = torch.arange(n_kv * (r + 2) * d_h, dtype=torch.float32)[:, None].expand(-1, H).contiguous()
    q, k, v = split_fused_qkv(labels, config)
    row = lambda group, slot, dim: (group * (r + 2) + slot) * d_h + dim  # noqa: E731
    assert q[(1 * r + 1) * d_h + 3, 0] == row(1, 1, 3)  # query head 3 = group 1's second query head
    assert k[1 * d_h + 5, 0] == row(1, r, 5) and v[0 * d_h + 7, 0] == row(0, r + 1, 7)
    assert q.shape == (4 * d_h, H) and k.shape == v.shape == (2 * d_h, H)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_lit_round_trip_is_exact(tied):
    model = tiny_llama(gqa=True, tied=tied)
    hf = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    lit = hf_to_lit_state_dict(hf, model.config)
    assert lit["transformer.h.0.attn.attn.weight"].shape == ((4 + 2 * 2) * 16, 64)
    assert "transformer.h.2.mlp.swiglu.w3.weight" in lit and "lm_head.weight" in lit
    back = lit_to_hf_state_dict(lit, model.config)
    assert back.keys() == hf.keys()
    for name, tensor in hf.items():
        assert torch.equal(back[name], tensor), name


def test_load_lit_checkpoint_strips_prefixes_and_converts(tmp_path):
    model = build_model("tiny-2L", seed=3)
    lit = hf_to_lit_state_dict(model.state_dict(), model.config)
    path = tmp_path / "iter-000010-ckpt.pth"
    torch.save({"model": {f"module.{k}": v for k, v in lit.items()}, "iter_num": 10}, path)
    assert load_lit_state_dict(path).keys() == lit.keys()
    out = convert_lit_checkpoint(path, model.config, tmp_path / "hf")
    converted = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 7, 300, 9]])
    assert torch.equal(converted(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="unexpected key 'transformer.h.0.attn.rope'"):
        lit_to_hf_state_dict({**lit, "transformer.h.0.attn.rope": torch.ones(1)}, model.config)


def test_prts_example_json_maps_to_stacking(tmp_path):
    job = read_growth_config(_write_json(tmp_path / "stacking_6L_24L.json", PRTS_EXAMPLE))
    assert job.options.depth_op == "stack" and job.options.layer_map == [0, 1, 2, 3, 4, 5] * 4
    assert job.options.num_layers == 24 and job.source_format == "lit"
    assert job.lit_config.num_hidden_layers == 6 and job.lit_config.hidden_size == 2048
    assert job.source == PRTS_EXAMPLE["src_init_path"]


def test_prts_b2b_maps_to_even_split(tmp_path):
    data = {**PRTS_EXAMPLE, "src_config_name": "24L1024H", "trg_config_name": "24L2048H", "from_left": True}
    del data["stacking_list"]
    job = read_growth_config(_write_json(tmp_path / "b2b.json", data), prts_method="b2b")
    options = job.options
    resolved = (options.width_op, options.split, options.norm_aware, options.index_rule)
    assert resolved == ("split", "even", False, "cyclic")
    assert options.hidden_size == 2048 and options.num_attention_heads == 32 and options.depth_op is None


def test_prts_unknown_keys_warn(tmp_path):
    path = _write_json(tmp_path / "extra.json", {**PRTS_EXAMPLE, "learning_rate": 3e-4})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_growth_config(path)
    assert any("unknown prts keys ['learning_rate']" in str(w.message) for w in caught)
