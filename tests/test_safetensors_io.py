"""Streaming growth I/O: lazy reader, sharded writer and grow_checkpoint's output (growth.md §10 tests 12, 14)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from growlm.growth.safetensors_io import INDEX_FILE, LazySafetensorsReader, OutputTensor, write_safetensors
from growlm.growth.grow import grow_checkpoint
from growlm.growth.operators import GrowthOptions
from tests.conftest import save_tiny_llama

GROWTH_KEYS = {"source", "source_format", "source_revision", "source_commit", "source_sha256", "operator",
               "layer_map", "g", "noise", "seed", "connection_rate", "function_preserving", "dtype",
               "target_shape", "plan", "growlm_version", "command", "max_abs_logit_delta"}


@pytest.fixture(scope="module")
def sharded_source(tmp_path_factory) -> Path:
    """A tiny GQA Llama (vocab 32000 + tokenizer) saved in several safetensors shards."""
    path = tmp_path_factory.mktemp("src") / "tiny-sharded"
    save_tiny_llama(path, with_tokenizer=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    for f in path.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(path, max_shard_size="2MB")
    assert (path / INDEX_FILE).is_file()
    return path


@pytest.fixture(scope="module")
def stacked(sharded_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grown") / "stacked"
    options = GrowthOptions(depth_op="stack", layer_map=[2, 0, 1, 1, 0, 2], num_layers=6)
    return grow_checkpoint(sharded_source, out, options, max_shard_size="3MB", command="test")


def _built(tensors: dict[str, torch.Tensor]) -> list[OutputTensor]:
    return [OutputTensor(name, t.dtype, tuple(t.shape), lambda t=t: t) for name, t in tensors.items()]


def _file_hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.safetensors"))}


def test_writer_shards_and_reader_round_trip(tmp_path):
    tensors = {f"t{i}": torch.randn(64, 64, generator=torch.Generator().manual_seed(i)) for i in range(5)}
    tensors["ints"] = torch.arange(10)
    write_safetensors(tmp_path, _built(tensors), max_shard_size=40_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    with safe_open(str(tmp_path / files[0]), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert not list(tmp_path.glob("*.partial"))
    with LazySafetensorsReader(tmp_path) as reader:
        assert reader.names == sorted(tensors)
        assert reader.dtype("ints") == torch.int64 and reader.shape("t0") == (64, 64)
        for name, tensor in tensors.items():
            assert torch.equal(reader.get_tensor(name), tensor)


def test_single_shard_has_no_index(tmp_path):
    write_safetensors(tmp_path, _built({"a": torch.ones(3)}), max_shard_size="2GB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(ValueError, match="written twice"):
        write_safetensors(tmp_path / "dup", _built({"a": torch.ones(1)}) * 2, max_shard_size="2GB")


def test_stacked_layers_equal_their_source_layers(sharded_source, stacked):
    assert len(_file_hashes(stacked)) > 1 and (stacked / INDEX_FILE).is_file()
    layer_map = [2, 0, 1, 1, 0, 2]
    with LazySafetensorsReader(sharded_source) as src, LazySafetensorsReader(stacked) as out:
        assert {int(n.split(".")[2]) for n in out.names if n.startswith("model.layers.")} == set(range(6))
        for name in out.names:
            if name.startswith("model.layers."):
                _, _, layer, rest = name.split(".", 3)
                expected = src.get_tensor(f"model.layers.{layer_map[int(layer)]}.{rest}")
            else:
                expected = src.get_tensor(name)
            assert torch.equal(out.get_tensor(name), expected), name


def test_output_loads_generates_and_records(sharded_source, stacked):
    model = AutoModelForCausalLM.from_pretrained(stacked)
    assert model.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(6))
    generated = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 6)
    record = json.loads((stacked / "growth.json").read_text())
    assert GROWTH_KEYS <= set(record)
    assert record["source"] == str(sharded_source) and record["operator"] == "G_stack"
    assert record["layer_map"] == [2, 0, 1, 1, 0, 2] and record["g"] == 2
    assert record["connection_rate"] == pytest.approx(1 / 5)
    assert record["function_preserving"] is False and record["max_abs_logit_delta"] is None
    assert record["source_sha256"] == LazySafetensorsReader(sharded_source).content_sha256()
    for name in ("tokenizer.json", "generation_config.json", "README.md"):
        assert (stacked / name).is_file()
    assert "G_stack" in (stacked / "README.md").read_text()


def test_same_seed_gives_identical_bytes(sharded_source, tmp_path):
    options = dict(depth_op="stack", g=2, noise_alpha=0.2)
    first = grow_checkpoint(sharded_source, tmp_path / "a", GrowthOptions(**options, seed=7), max_shard_size="3MB")
    second = grow_checkpoint(sharded_source, tmp_path / "b", GrowthOptions(**options, seed=7), max_shard_size="3MB")
    other = grow_checkpoint(sharded_source, tmp_path / "c", GrowthOptions(**options, seed=8), max_shard_size="3MB")
    assert _file_hashes(first) == _file_hashes(second)
    assert _file_hashes(first) != _file_hashes(other)


def test_function_preserving_growth_records_probe_and_casts(sharded_source, tmp_path):
    out = grow_checkpoint(sharded_source, tmp_path / "zero", GrowthOptions(depth_op="zero", g=2), dtype="bfloat16")
    record = json.loads((out / "growth.json").read_text())
    assert record["function_preserving"] is True and record["operator"] == "G_zero_depth"
    assert record["dtype"] == "bfloat16" and 0 <= record["max_abs_logit_delta"] < 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    with LazySafetensorsReader(out) as reader:
        assert {reader.dtype(name) for name in reader.names} == {torch.bfloat16}


def test_overwrite_replaces_only_when_complete(sharded_source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    grow_checkpoint(sharded_source, out, GrowthOptions(depth_op="stack", g=2))
    with pytest.raises(ValueError, match="out of range"):
        grow_checkpoint(sharded_source, out, GrowthOptions(depth_op="stack", layer_map=[0, 1, 2, 9], num_layers=4),
                        overwrite=True)

    def fail_after_weights(*args):
        raise RuntimeError("simulated failure after the weights were written")

    with monkeypatch.context() as patch:
        patch.setattr("growlm.growth.grow.probe_logit_delta", fail_after_weights)
        with pytest.raises(RuntimeError, match="simulated"):
            grow_checkpoint(sharded_source, out, GrowthOptions(depth_op="stack", g=3), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    grow_checkpoint(sharded_source, out, GrowthOptions(depth_op="stack", g=3), overwrite=True)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
