"""`python growth/stack.py` end to end: subprocess runs, config files, the planner's JSON and a Hub source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM

from growlm.cli.stack import main
from growlm.growth.safetensors_io import LazySafetensorsReader
from growlm.growth.lit import hf_to_lit_state_dict
from growlm.modeling import build_model
from tests.conftest import REPO_ROOT, save_tiny_llama


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("cli-src") / "tiny", with_tokenizer=True)


def _stack_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "growth/stack.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _layer_map(out: Path) -> list[int]:
    return json.loads((out / "growth.json").read_text())["layer_map"]


def test_cli_subprocess_end_to_end(source, tmp_path):
    out = tmp_path / "grown"
    result = _stack_cli("--src", str(source), "--out", str(out), "--g", "2", "--shard-size", "3MB")
    assert result.returncode == 0, result.stderr
    assert f"grown model written to {out}" in result.stdout
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6
    record = json.loads((out / "growth.json").read_text())
    assert record["command"].startswith("growth/stack.py --src") and record["layer_map"] == [0, 1, 2, 0, 1, 2]


def test_partial_plan_and_stacking_list_flags(source, tmp_path):
    assert main(["--src", str(source), "--out", str(tmp_path / "partial"), "--partial", "1-23*2"]) == 0
    assert _layer_map(tmp_path / "partial") == [0, 1, 2, 1, 2]
    assert main(["--src", str(source), "--out", str(tmp_path / "list"), "--stacking-list", "0-2,0-2,1"]) == 0
    assert _layer_map(tmp_path / "list") == [0, 1, 2, 0, 1, 2, 1]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"g": 3, "d": 1e9}))
    assert main(["--src", str(source), "--out", str(tmp_path / "planned"), "--plan", str(plan),
                 "--stacking-list", "interpolate"]) == 0
    assert _layer_map(tmp_path / "planned") == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_project_growth_json(source, tmp_path):
    config = {"source": {"path": str(source), "format": "hf"}, "target": {"overrides": {"num_hidden_layers": 6}},
              "depth": {"op": "zero", "layer_map": "interpolate"}, "width": None,
              "noise": {"alpha": 0.0, "head": True}, "seed": 11, "output": str(tmp_path / "from-json")}
    path = tmp_path / "growth-config.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path)]) == 0
    record = json.loads((tmp_path / "from-json" / "growth.json").read_text())
    assert record["operator"] == "G_zero_depth" and record["seed"] == 11 and record["function_preserving"]


def test_prts_json_with_lit_checkpoint(tmp_path):
    base = build_model("tiny-2L", seed=5)
    lit_path = tmp_path / "iter-005000-ckpt.pth"
    torch.save({"model": hf_to_lit_state_dict(base.state_dict(), base.config)}, lit_path)
    prts = {"src_config_name": "tiny-2L", "trg_config_name": "tiny-8L", "src_init_path": str(lit_path),
            "stacking_list": [0, 1] * 4, "embd_name": "wte", "ln_name": "ln_f", "head_name": "lm_head",
            "layer_name": "h"}
    path = tmp_path / "stacking_2L_8L.json"
    path.write_text(json.dumps(prts))
    out = tmp_path / "grown-8L"
    with pytest.warns(UserWarning, match="no tokenizer files"):
        assert main(["--config", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lit_path.name, path.name, out.name])
    record = json.loads((out / "growth.json").read_text())
    assert record["source"] == str(lit_path) and record["source_format"] == "lit"
    source = base.state_dict()
    with LazySafetensorsReader(out) as reader:
        for layer in range(8):
            name = f"model.layers.{layer}.self_attn.k_proj.weight"
            assert torch.equal(reader.get_tensor(name), source[f"model.layers.{layer % 2}.self_attn.k_proj.weight"])


def test_hub_repo_as_source(source, tmp_path, hub_server, capsys):
    commit = hub_server.add_repo("growlm-test/tiny-base", source)
    out = tmp_path / "grown-from-hub"
    result = _stack_cli("--src", "growlm-test/tiny-base", "--revision", "main", "--out", str(out), "--g", "2",
                        env=hub_server.client_env())
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "growth.json").read_text())
    assert (record["source"], record["source_revision"], record["source_commit"]) == (
        "growlm-test/tiny-base", "main", commit)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 6
    # In-process from here: the fixture points this process's huggingface_hub at the test server too.
    capsys.readouterr()
    assert main(["--src", "growlm-test/no-such-model", "--out", str(tmp_path / "x"), "--g", "2"]) == 2
    assert not (tmp_path / "x").exists()
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(
        "error: source growlm-test/no-such-model is not a local folder and could not be fetched from the Hub: "
        "repository not found, or private")
    assert main(["--src", "growlm-test/tiny-base", "--revision", "no-such-branch", "--out", str(tmp_path / "x"),
                 "--g", "2"]) == 2
    assert "at revision no-such-branch: revision not found" in capsys.readouterr().err
    pushed = tmp_path / "pushed"
    assert main(["--src", str(source), "--out", str(pushed), "--g", "2", "--push-to-hub", "growlm-test/grown"]) == 0
    files = set(HfApi().list_repo_files("growlm-test/grown"))
    assert {"config.json", "growth.json", "README.md", "model.safetensors", "tokenizer.json"} <= files
