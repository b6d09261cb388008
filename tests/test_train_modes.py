"""Continue-pretraining modes on a grown model, in-process: `--freeze grown` trains only the new layers;
`--lora-rank` trains adapters and exports plain merged Llama weights; `--data-from` continues the data stream
on the first sample the base run did not consume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.data import PackedStream
from growlm.train.config import parse_args
from growlm.train.export import read_data_position
from growlm.train.loop import train
from tests.conftest import save_tiny_llama

RUN = ["--config", "configs/pretrain/tiny_cpu.yaml", "--seq-len", "32", "--micro-batch-size", "2",
       "--global-batch-tokens", "64", "--validation-blocks", "1", "--warmup-steps", "0", "--max-steps", "2"]


@pytest.fixture
def grown_dir(tmp_path: Path) -> Path:
    """A 4-layer model that claims to be G_stack-grown from 2 layers (layers 2 and 3 are the new copies)."""
    folder = save_tiny_llama(tmp_path / "grown", with_tokenizer=True, layers=4)
    (folder / "growth.json").write_text(json.dumps({"operator": "stack", "layer_map": [0, 1, 0, 1]}))
    return folder


def changed_tensors(before: Path, after: Path) -> set[str]:
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    assert a.keys() == b.keys()
    return {name for name in a if not torch.equal(a[name], b[name])}


def test_freeze_grown_trains_only_new_layers(grown_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    final = train(parse_args([*RUN, "--output-dir", str(tmp_path / "run"), "--init-from", str(grown_dir),
                              "--freeze", "grown"]))
    changed = changed_tensors(grown_dir, final)
    assert changed and all(name.startswith(("model.layers.2.", "model.layers.3.")) for name in changed)
    assert json.loads((final / "training.json").read_text())["trained_layers"] == [2, 3]


def test_lora_exports_merged_plain_weights(grown_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    final = train(parse_args([*RUN, "--output-dir", str(tmp_path / "run"), "--init-from", str(grown_dir),
                              "--lora-rank", "4", "--lr", "1e-2"]))
    changed = changed_tensors(grown_dir, final)  # same tensor names: no lora_ or base_layer keys left
    assert changed and all("proj" in name for name in changed)


def test_data_from_continues_after_the_last_consumed_sample(grown_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    base = train(parse_args([*RUN, "--output-dir", str(tmp_path / "base")]))
    cfg = parse_args([*RUN, "--output-dir", str(tmp_path / "grown-run"), "--init-from", str(grown_dir),
                      "--data-from", str(base), "--max-steps", "1"])
    fresh = iter(PackedStream(cfg.data))
    for _ in range(2 * 2):  # the base run consumed 2 steps x 2 sequences
        next(fresh)
    continued = PackedStream(cfg.data)
    continued.load_state_dict(read_data_position(base))
    assert torch.equal(next(iter(continued)), next(fresh))
    assert train(cfg).is_dir()
    with pytest.raises(ValueError, match="data_state.json"):
        read_data_position(tmp_path)
