"""Depth growth: G_stack against the shared-module reference, G_zero-up function preservation, biases, dtypes,
tied embeddings, streaming builders and determinism (growth.md §3, §10 tests 1, 4, 12)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import save
from transformers import LlamaForCausalLM

from growlm.growth.layer_map import resolve_layer_map
from growlm.growth.operators import GrowthOptions, grow_state_dict, plan_growth

EMBED = "model.embed_tokens.weight"
ZEROED = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def load_grown(config, tensors: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """A plain LlamaForCausalLM holding the grown tensors (strict load; tied heads get the embedding)."""
    model = LlamaForCausalLM(config).to(tensors[EMBED].dtype).eval()
    full = dict(tensors)
    if config.tie_word_embeddings:
        assert "lm_head.weight" not in tensors
        full["lm_head.weight"] = tensors[EMBED]
    model.load_state_dict(full, strict=True)
    return model


def logits(model: LlamaForCausalLM, ids: torch.Tensor, **kwargs):
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs)


def random_ids(seed: int = 0, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(seed))


def shared_module_reference(src: LlamaForCausalLM, layer_map: list[int]) -> LlamaForCausalLM:
    """§3.2's reference: the source's own blocks, reused in layer-map order."""
    reference = copy.deepcopy(src)
    reference.model.layers = torch.nn.ModuleList([reference.model.layers[j] for j in layer_map])
    reference.model.config.num_hidden_layers = len(layer_map)
    return reference


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layer_map", ["stack", "interpolate", [2, 0, 1, 1], [0, 1, 2]])
def test_stack_matches_shared_module_reference_bitwise(tied, layer_map):
    src = tiny_llama(tied=tied, bias=True)
    num_layers = 12 if isinstance(layer_map, str) else len(layer_map)
    config, tensors = grow_state_dict(src.config, src.state_dict(),
                                      GrowthOptions(depth_op="stack", layer_map=layer_map, num_layers=num_layers))
    resolved = resolve_layer_map(layer_map, 3, num_layers)
    grown = load_grown(config, tensors)
    ids = random_ids()
    expected = logits(shared_module_reference(src, resolved), ids).logits
    assert torch.equal(logits(grown, ids).logits, expected)
    if resolved == [0, 1, 2]:
        assert torch.equal(expected, logits(src, ids).logits)
    for target_layer, source_layer in enumerate(resolved):
        for suffix in ("self_attn.q_proj.bias", "self_attn.o_proj.bias", "mlp.down_proj.bias", "mlp.up_proj.bias"):
            assert torch.equal(tensors[f"model.layers.{target_layer}.{suffix}"],
                               src.state_dict()[f"model.layers.{source_layer}.{suffix}"])


def test_stack_record_and_config():
    src = tiny_llama()
    plan = plan_growth(src.config, list(src.state_dict()), GrowthOptions(depth_op="stack", g=4))
    assert plan.config.num_hidden_layers == 12
    assert plan.config.num_key_value_heads == 2 and plan.config.hidden_size == 64
    assert plan.record["depth"]["layer_map"] == [0, 1, 2] * 4
    assert plan.record["depth"]["connection_rate"] == pytest.approx(8 / 11)
    assert plan.record["function_preserving"] is False
    assert json.loads(json.dumps(plan.record))["options"]["g"] == 4
    names = list(plan.tensors)
    assert names[0] == EMBED and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert names.index("model.layers.11.self_attn.q_proj.weight") < names.index("model.norm.weight")


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layer_map", ["interpolate", "stack", [0, 1, 1, 2, 0, 2]])
def test_zero_depth_is_function_preserving(tied, layer_map):
    src = tiny_llama(tied=tied, bias=True)
    config, tensors = grow_state_dict(src.config, src.state_dict(),
                                      GrowthOptions(depth_op="zero", layer_map=layer_map, num_layers=6))
    resolved = resolve_layer_map(layer_map, 3, 6)
    ids = random_ids(1)
    assert torch.equal(logits(load_grown(config, tensors), ids).logits, logits(src, ids).logits)
    for i, j in enumerate(resolved):
        first = resolved.index(j) == i
        for suffix in ZEROED:
            tensor = tensors[f"model.layers.{i}.{suffix}"]
            assert torch.equal(tensor, src.state_dict()[f"model.layers.{j}.{suffix}"]) if first \
                else (not tensor.any())
        assert torch.equal(tensors[f"model.layers.{i}.self_attn.q_proj.bias"],
                           src.state_dict()[f"model.layers.{j}.self_attn.q_proj.bias"])


def test_target_depth_defaults_to_the_layer_map_length():
    src = tiny_llama()
    names = list(src.state_dict())
    partial = plan_growth(src.config, names, GrowthOptions(depth_op="stack", layer_map="1-23*3"))
    assert partial.config.num_hidden_layers == 7 and partial.record["depth"]["layer_map"] == [0, 1, 2, 1, 2, 1, 2]
    explicit = plan_growth(src.config, names, GrowthOptions(depth_op="zero", layer_map=[0, 1, 1, 2]))
    assert explicit.config.num_hidden_layers == 4 and explicit.record["depth"]["zeroed_layers"] == [2]


def test_zero_depth_rejects_order_breaking_maps_unless_allowed():
    src = tiny_llama()
    names = list(src.state_dict())
    with pytest.raises(ValueError, match="G_zero depth map is not function preserving"):
        plan_growth(src.config, names, GrowthOptions(depth_op="zero", layer_map=[2, 0, 1, 1]))
    with pytest.raises(ValueError, match="G_zero depth map is not function preserving"), pytest.warns(UserWarning):
        plan_growth(src.config, names, GrowthOptions(depth_op="zero", layer_map=[0, 1, 1, 0]))
    with pytest.warns(UserWarning, match="does not use source layers"):
        plan = plan_growth(src.config, names, GrowthOptions(depth_op="zero", layer_map=[0, 1, 1, 0],
                                                            allow_non_fp=True))
    assert plan.record["function_preserving"] is False
    assert plan.record["depth"]["zeroed_layers"] == [2, 3]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("depth_op", ["stack", "zero"])
def test_depth_growth_keeps_dtype(dtype, depth_op):
    src = tiny_llama(bias=True, dtype=dtype)
    _, tensors = grow_state_dict(src.config, src.state_dict(), GrowthOptions(depth_op=depth_op, g=2))
    assert {t.dtype for t in tensors.values()} == {dtype}
    assert torch.equal(tensors["model.layers.5.mlp.up_proj.weight"],
                       src.state_dict()["model.layers.2.mlp.up_proj.weight"])


def test_tied_to_untied_copies_the_mapped_embedding():
    src = tiny_llama(tied=True)
    config, tensors = grow_state_dict(src.config, src.state_dict(),
                                      GrowthOptions(depth_op="zero", g=2, tie_word_embeddings=False))
    assert config.tie_word_embeddings is False
    assert torch.equal(tensors["lm_head.weight"], tensors[EMBED])
    assert tensors["lm_head.weight"].data_ptr() != tensors[EMBED].data_ptr()
    ids = random_ids(2)
    assert torch.equal(logits(load_grown(config, tensors), ids).logits, logits(src, ids).logits)


def test_builders_stream_own_storage_and_are_order_independent():
    src = tiny_llama()
    state = src.state_dict()
    plan = plan_growth(src.config, list(state), GrowthOptions(depth_op="stack", layer_map="interpolate", g=2))
    reads: list[str] = []

    def getter(name: str) -> torch.Tensor:
        reads.append(name)
        return state[name]

    built = plan.tensors["model.layers.3.self_attn.k_proj.weight"](getter)
    assert reads == ["model.layers.1.self_attn.k_proj.weight"]
    assert built.is_contiguous() and built.data_ptr() != state[reads[0]].data_ptr()
    forward = {name: build(state.__getitem__) for name, build in plan.tensors.items()}
    backward = {name: plan.tensors[name](state.__getitem__) for name in reversed(plan.tensors)}
    assert all(torch.equal(forward[name], backward[name]) for name in forward)


def test_same_seed_same_safetensors_bytes():
    src = tiny_llama()
    options = GrowthOptions(depth_op="stack", g=2, noise_alpha=0.2, seed=11)
    digests = {hashlib.sha256(save(grow_state_dict(src.config, src.state_dict(), options)[1])).hexdigest()
               for _ in range(2)}
    other = hashlib.sha256(save(grow_state_dict(src.config, src.state_dict(),
                                                GrowthOptions(depth_op="stack", g=2, noise_alpha=0.2, seed=12))[1]))
    assert len(digests) == 1 and other.hexdigest() not in digests
