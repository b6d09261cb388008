"""Every user error of `growth/stack.py`: exit status 2, one clear stderr line, and no output folder left behind."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from growlm.cli.stack import main
from tests.conftest import save_tiny_llama
from tests.test_lit import PRTS_EXAMPLE


@pytest.fixture(scope="module")
def pristine_source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "tiny"
    return save_tiny_llama(path, with_tokenizer=True)


@pytest.fixture
def workdir(tmp_path, pristine_source) -> Path:
    """A fresh folder with a copy of the source as `src/`; outputs go to `out/` in the same folder."""
    shutil.copytree(pristine_source, tmp_path / "src")
    return tmp_path


def _fails(capsys, workdir: Path, argv: list[str], message: str, *, keep: set[str] = frozenset({"src"})) -> str:
    """Run the CLI, expect exit 2 with `message` on stderr and nothing new in `workdir`."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse rejects bad flag values itself
        status = exit_.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert message in stderr, stderr
    assert {p.name for p in workdir.iterdir()} == set(keep)
    return stderr


def _grow(workdir: Path, *extra: str) -> list[str]:
    return ["--src", str(workdir / "src"), "--out", str(workdir / "out"), *extra]


def test_missing_source(capsys, workdir):
    argv = ["--src", str(workdir / "nope"), "--out", str(workdir / "out"), "--g", "2"]
    _fails(capsys, workdir, argv, "does not exist; pass an existing model folder")


def test_not_a_llama(capsys, workdir):
    config = json.loads((workdir / "src" / "config.json").read_text())
    (workdir / "src" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2",
                                                             "architectures": ["GPT2LMHeadModel"]}))
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "is not a Llama model (model_type='gpt2'")


@pytest.mark.parametrize(("stacking_list", "message"), [
    ("0,1,7", "layer_map[2]=7 out of range for source with 3 layers"),
    ("", "layer_map is empty"),
    ("0,x,1", "cannot parse 'x'"),
    ("0-2,2-1", "range '2-1' is decreasing"),
])
def test_bad_stacking_list(capsys, workdir, stacking_list, message):
    _fails(capsys, workdir, _grow(workdir, "--stacking-list", stacking_list), message)


def test_partial_notation_out_of_range(capsys, workdir):
    _fails(capsys, workdir, _grow(workdir, "--partial", "1-24*2"), "layer id 4 out of range for source with 3 layers")


@pytest.mark.parametrize("g", ["0", "-1"])
def test_g_below_one(capsys, workdir, g):
    _fails(capsys, workdir, _grow(workdir, "--g", g), f"--g: {g} must be >= 1")


def test_g_not_matching_stack(capsys, workdir):
    _fails(capsys, workdir, _grow(workdir, "--num-layers", "7"), "needs num_hidden_layers=7 to be a multiple")


def test_width_target_smaller(capsys, workdir):
    _fails(capsys, workdir, _grow(workdir, "--width-operator", "split", "--hidden-size", "32",
                                  "--num-attention-heads", "2", "--num-key-value-heads", "1"),
           "hidden_size shrinks from 64 to 32")


@pytest.mark.parametrize(("flags", "message"), [
    (["--hidden-size", "96", "--num-attention-heads", "6", "--num-key-value-heads", "2"],
     "num_attention_heads/num_key_value_heads changes from 2 (4/2) to 3 (6/2); width growth must add whole KV groups"),
    (["--hidden-size", "128", "--num-attention-heads", "8", "--num-key-value-heads", "3"],
     "num_attention_heads=8 is not a multiple of num_key_value_heads=3"),
    (["--hidden-size", "100", "--num-attention-heads", "8", "--num-key-value-heads", "4"],
     "The hidden size (100) is not a multiple of the number of attention heads (8)"),
])
def test_width_not_divisible_into_heads(capsys, workdir, flags, message):
    stderr = _fails(capsys, workdir, _grow(workdir, "--width-operator", "split", *flags), message)
    assert len(stderr.strip().splitlines()) == 1


def test_corrupt_safetensors_header(capsys, workdir):
    weights = workdir / "src" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "is not a safetensors file (16941952 bytes, or it is corrupt")


def test_truncated_safetensors(capsys, workdir):
    weights = workdir / "src" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "corrupt or truncated safetensors file")


def test_header_longer_than_file(capsys, workdir):
    weights = workdir / "src" / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2"),
                    "is not a safetensors file (10 bytes, or it is truncated: its header does not fit)")
    assert "1000000000" not in stderr  # nothing read from the file is echoed


def test_missing_shard(capsys, workdir):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    shutil.move(workdir / "src" / "model.safetensors", workdir / "src" / "model-00001-of-00002.safetensors")
    (workdir / "src" / "model.safetensors.index.json").write_text(json.dumps(index))
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "missing shard")


def test_missing_weights(capsys, workdir):
    (workdir / "src" / "model.safetensors").unlink()
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "no weights in")


def test_tokenizer_larger_than_vocab(capsys, workdir, pristine_source):
    shutil.rmtree(workdir / "src")
    save_tiny_llama(workdir / "src", vocab_size=128)
    for f in pristine_source.glob("tokenizer*.json"):
        shutil.copy(f, workdir / "src" / f.name)
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "has 32000 tokens but config vocab_size=128")


def test_tokenizer_special_ids_mismatch(capsys, workdir):
    config = json.loads((workdir / "src" / "config.json").read_text())
    (workdir / "src" / "config.json").write_text(json.dumps({**config, "eos_token_id": 5}))
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "tokenizer eos_token_id=2 but config eos_token_id=5")


def test_out_exists(capsys, workdir):
    (workdir / "out").mkdir()
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), "already exists; pass --overwrite",
           keep={"src", "out"})
    assert not any((workdir / "out").iterdir())


def test_unknown_keys_in_project_growth_json(capsys, workdir):
    config = {"source": {"path": str(workdir / "src")}, "depth": {"op": "stack", "layer_map": "stack"},
              "target": {"overrides": {"num_hidden_layers": 6}}, "learning_rate": 3e-4}
    path = workdir / "growth.json"
    path.write_text(json.dumps(config))
    _fails(capsys, workdir, ["--config", str(path), "--out", str(workdir / "out")],
           "unknown key(s) ['learning_rate']; allowed: ['depth', 'noise', 'output'", keep={"src", "growth.json"})


def test_prts_stacking_list_wrong_length(capsys, workdir):
    path = workdir / "prts.json"
    path.write_text(json.dumps({**PRTS_EXAMPLE, "stacking_list": [0, 1, 2]}))
    _fails(capsys, workdir, ["--config", str(path), "--out", str(workdir / "out")],
           "stacking_list has length 3 but 24L2048H has n_layer=24", keep={"src", "prts.json"})


def test_prts_training_loop_methods(capsys, workdir):
    path = workdir / "prts.json"
    path.write_text(json.dumps(PRTS_EXAMPLE))
    _fails(capsys, workdir, ["--config", str(path), "--prts-method", "msg", "--out", str(workdir / "out")],
           "needs the training loop, not yet supported", keep={"src", "prts.json"})


def test_prts_unknown_registry_name(capsys, workdir):
    path = workdir / "prts.json"
    path.write_text(json.dumps({**PRTS_EXAMPLE, "trg_config_name": "48L9000H"}))
    _fails(capsys, workdir, ["--config", str(path), "--out", str(workdir / "out")],
           "trg_config_name='48L9000H' is not a known registry name", keep={"src", "prts.json"})


def test_push_while_offline_fails_before_growing(capsys, workdir):
    _fails(capsys, workdir, _grow(workdir, "--g", "2", "--push-to-hub", "growlm-test/grown"),
           "--push-to-hub: HF_HUB_OFFLINE is set")
