"""Every user error of `growth/stack.py`: exit status 2, one clear stderr line, and no output folder left behind."""

from __future__ import annotations

import errno
import json
import os
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


def test_prts_ligo_needs_a_converted_source(capsys, workdir):
    path = workdir / "prts.json"
    path.write_text(json.dumps(PRTS_EXAMPLE))
    _fails(capsys, workdir, ["--config", str(path), "--prts-method", "ligo", "--out", str(workdir / "out")],
           "prts method 'ligo' grows a lit checkpoint", keep={"src", "prts.json"})


def test_prts_unknown_registry_name(capsys, workdir):
    path = workdir / "prts.json"
    path.write_text(json.dumps({**PRTS_EXAMPLE, "trg_config_name": "48L9000H"}))
    _fails(capsys, workdir, ["--config", str(path), "--out", str(workdir / "out")],
           "trg_config_name='48L9000H' is not a known registry name", keep={"src", "prts.json"})


def test_push_while_offline_fails_before_growing(capsys, workdir):
    _fails(capsys, workdir, _grow(workdir, "--g", "2", "--push-to-hub", "growlm-test/grown"),
           "--push-to-hub: HF_HUB_OFFLINE is set")


# --- issue 10 §1: a model folder must not reach outside itself, nor run its own code -----------------------------

def _index_to(workdir: Path, file: str) -> None:
    """Replace src/model.safetensors by an index that maps every tensor to `file`."""
    from growlm.growth.safetensors_io import read_safetensors_header

    names = read_safetensors_header(workdir / "src" / "model.safetensors")
    (workdir / "src" / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, file)}
    (workdir / "src" / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(("file", "message"), [
    ("../outside.safetensors", "entry 'lm_head.weight': '../outside.safetensors' reaches outside the "
     "model folder ('..'); a model folder's weights must lie inside it"),
    ("sub/../../outside.safetensors", "reaches outside the model folder ('..')"),
    ("ABSOLUTE", "is an absolute path; a model folder's weights must lie inside it"),
])
def test_index_entry_outside_the_folder(capsys, workdir, file, message):
    shutil.copy(workdir / "src" / "model.safetensors", workdir / "outside.safetensors")
    file = str(workdir / "outside.safetensors") if file == "ABSOLUTE" else file
    _index_to(workdir, file)
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), message, keep={"src", "outside.safetensors"})


@pytest.mark.parametrize("sharded", [False, True])
def test_weights_symlinked_outside_the_folder(capsys, workdir, sharded):
    shutil.move(workdir / "src" / "model.safetensors", workdir / "outside.safetensors")
    name = "model-00001-of-00001.safetensors" if sharded else "model.safetensors"
    if sharded:
        shutil.copy(workdir / "outside.safetensors", workdir / "src" / "model.safetensors")
        _index_to(workdir, name)
    (workdir / "src" / name).symlink_to(workdir / "outside.safetensors")
    _fails(capsys, workdir, _grow(workdir, "--g", "2"),
           f"is a symlink to {workdir / 'outside.safetensors'}, outside the model folder",
           keep={"src", "outside.safetensors"})


def test_safe_member_allows_links_inside_the_folder_and_the_hub_cache_layout(tmp_path):
    from growlm.growth.safetensors_io import safe_member

    repo = tmp_path / "models--o--n"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_bytes(b"x")
    snapshot = repo / "snapshots" / "0123"
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "a.safetensors").symlink_to("../../blobs/abc")
    (snapshot / "sub" / "b.safetensors").symlink_to("../../../blobs/abc")
    (snapshot / "c.safetensors").symlink_to("sub/b.safetensors")
    for name in ("a.safetensors", "sub/b.safetensors", "c.safetensors"):
        assert safe_member(snapshot, name, name) == snapshot / name
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "d").write_bytes(b"x")
    (snapshot / "d.safetensors").symlink_to(tmp_path / "other" / "d")
    with pytest.raises(ValueError, match="outside the model folder"):
        safe_member(snapshot, "d.safetensors", "d.safetensors")
    for bad in (5, "", "/etc/passwd", "../x"):
        with pytest.raises(ValueError, match="weights must lie inside it"):
            safe_member(snapshot, bad, "entry")


@pytest.mark.parametrize(("file", "message"), [
    ("../outside.safetensors", "entry 'lm_head.weight': '../outside.safetensors' reaches outside"),
    ("../../blobs/whatever", "reaches outside the model folder ('..')"),
    ("/etc/hostname", "entry 'lm_head.weight': '/etc/hostname' is an absolute path"),
])
def test_hub_index_entry_outside_the_snapshot(capsys, workdir, hub_server, file, message):
    _index_to(workdir, file)
    repo = f"growlm-test/traversal-{abs(hash(file))}"
    hub_server.add_repo(repo, workdir / "src")
    _fails(capsys, workdir, ["--src", repo, "--out", str(workdir / "out"), "--g", "2"], message)


def test_sharded_hub_source_grows(tmp_path, hub_server, capsys):
    """The Hub cache's snapshot links into blobs/ are not mistaken for an escape."""
    source = save_tiny_llama(tmp_path / "sharded", with_tokenizer=True)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(source).save_pretrained(source, max_shard_size="3MB")
    (source / "model.safetensors").unlink(missing_ok=True)
    assert (source / "model.safetensors.index.json").is_file()
    hub_server.add_repo("growlm-test/sharded-base", source)
    assert main(["--src", "growlm-test/sharded-base", "--out", str(tmp_path / "out"), "--g", "2"]) == 0, \
        capsys.readouterr().err


@pytest.mark.parametrize("content", [b"This is a plain text file, not model weights at all.\n" * 4, b"tiny"])
def test_not_a_safetensors_file(capsys, workdir, content):
    (workdir / "src" / "model.safetensors").write_bytes(content)
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2"),
                    f"model.safetensors is not a safetensors file ({len(content)} bytes")
    assert "claims" not in stderr and "plain text" not in stderr and "tiny" not in stderr.split("/")[-1]


def test_index_naming_a_non_safetensors_file(capsys, workdir):
    shutil.copy(workdir / "src" / "model.safetensors", workdir / "src" / "model-00001-of-00001.safetensors")
    _index_to(workdir, "model-00001-of-00001.safetensors")
    index = json.loads((workdir / "src" / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "tokenizer.json"
    (workdir / "src" / "model.safetensors.index.json").write_text(json.dumps(index))
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2"), "tokenizer.json is not a safetensors file (")
    assert len(stderr.strip().splitlines()) == 1


def _evil_folder(workdir: Path) -> tuple[Path, Path]:
    """The source with remote code in config.json's auto_map; importing it would create `marker`."""
    marker = workdir / "PWNED"
    src = workdir / "src"
    (src / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (src / "config.json").write_text(json.dumps(config))
    return src, marker


AUTO_MAP_MESSAGE = ("config.json has an 'auto_map' (custom model code); growlm never runs code from a model folder "
                    "(trust_remote_code=False)")


def test_remote_code_is_refused(capsys, workdir):
    src, marker = _evil_folder(workdir)
    _fails(capsys, workdir, _grow(workdir, "--g", "2"), AUTO_MAP_MESSAGE)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["stack", "pretrain"])
def test_remote_code_is_refused_even_when_confirmed_on_stdin(workdir, command):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    src, marker = _evil_folder(workdir)
    out = workdir / "out"
    if command == "stack":
        argv = ["growth/stack.py", "--src", str(src), "--out", str(out), "--g", "2"]
    else:
        argv = ["scripts/pretrain.py", "--config", "configs/pretrain/tiny_cpu.yaml", "--max-steps", "1",
                "--init-from", str(src), "--output-dir", str(out)]
    result = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, input="y\n", capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode != 0
    assert AUTO_MAP_MESSAGE in result.stderr, result.stderr
    if command == "stack":
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not out.exists() and {p.name for p in workdir.iterdir()} == {"src"}


# --- issue 10 §4: inputs validated against each other ------------------------------------------------------------

def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "src" / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set(key, value):
    def edit(config):
        if value is _MISSING:
            config.pop(key)
        else:
            config[key] = value
        return config
    return edit


_MISSING = object()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda config: [config], "config.json must hold a JSON object, got a list"),
    (lambda config: "llama", "config.json must hold a JSON object, got a str"),
    (_set("num_attention_heads", 0), "config.json num_attention_heads is 0; it must be a positive integer"),
    (_set("hidden_size", _MISSING), "config.json hidden_size is missing; it must be a positive integer"),
    (_set("intermediate_size", -176), "config.json intermediate_size is -176; it must be a positive integer"),
    (_set("num_hidden_layers", 0), "config.json num_hidden_layers is 0; it must be a positive integer"),
    (_set("vocab_size", "32000"), "config.json vocab_size is '32000'; it must be a positive integer"),
    (_set("num_key_value_heads", 2.5), "config.json num_key_value_heads is 2.5; it must be a positive integer"),
    (_set("num_key_value_heads", 3), "config.json num_key_value_heads is 3; it must divide num_attention_heads=4"),
    (_set("head_dim", True), "config.json head_dim is True; it must be a positive integer"),
    (_set("rms_norm_eps", 0), "config.json rms_norm_eps is 0; it must be a positive number"),
])
def test_malformed_source_config(capsys, workdir, edit, message):
    _edit_config(workdir, edit)
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2"), message)
    assert len(stderr.strip().splitlines()) == 1


def test_hidden_size_not_divisible_without_head_dim(capsys, workdir):
    _edit_config(workdir, lambda config: {**config, "head_dim": None, "num_attention_heads": 3,
                                          "num_key_value_heads": 1})
    _fails(capsys, workdir, _grow(workdir, "--g", "2"),
           "config.json hidden_size is 64; without a head_dim it must be a multiple of num_attention_heads=3")


@pytest.mark.parametrize("flags", [["--g", "2"], ["--width-operator", "split", "--hidden-size", "128",
                                                  "--num-attention-heads", "8", "--num-key-value-heads", "4"]])
def test_source_tensor_shape_disagrees_with_config(capsys, workdir, flags):
    from safetensors.torch import load_file, save_file

    weights = load_file(workdir / "src" / "model.safetensors")
    weights["model.layers.1.self_attn.q_proj.weight"] = weights["model.layers.1.self_attn.q_proj.weight"][:, :48]
    save_file({k: v.contiguous() for k, v in weights.items()}, workdir / "src" / "model.safetensors",
              metadata={"format": "pt"})
    _fails(capsys, workdir, _grow(workdir, *flags),
           "source tensor model.layers.1.self_attn.q_proj.weight has shape [64, 48] but config.json implies [64, 64]; "
           "pass the checkpoint's own config.json")


def test_huge_g_is_refused_before_writing(capsys, workdir):
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "1000000000"), "not enough disk space for")
    assert "the grown weights need about 5.54e+05 GB (554496016384256 bytes) but" in stderr
    assert "free; free some space, choose another --out or grow to a smaller target" in stderr


def test_disk_estimate_uses_the_output_dtype(capsys, workdir, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2", "--dtype", "bfloat16"), "not enough disk space")
    assert "need about 0.00875 GB (8746624 bytes) but" in stderr and "has 1e-06 GB (1000 bytes) free" in stderr


def test_disk_full_while_writing(capsys, workdir, monkeypatch):
    import growlm.growth.safetensors_io as io

    def full_disk(fd, data):
        os.write(fd, b"\0" * 1000)  # a partial shard that must not be left behind
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io, "_write_all", full_disk)
    stderr = _fails(capsys, workdir, _grow(workdir, "--g", "2"), "the disk filled up while writing")
    assert f"{workdir / 'out'}; nothing was kept. Free some space on {workdir} or choose another --out" in stderr


# --- growth JSON: malformed values are type-checked by growlm/config_io.py ----------------------------------------

@pytest.mark.parametrize(("section", "message"), [
    ({"depth": {"op": ["stack"]}}, "depth.op: expected text, got ['stack']"),
    ({"noise": {"alpha": "a lot"}}, "noise.alpha: expected a number, got 'a lot'"),
    ({"noise": {"alpha": True}}, "noise.alpha: expected a number, got True"),
    ({"source": {"path": ["src"]}}, "source.path: expected text, got ['src']"),
    ({"source": {"path": 5}}, "source 5 does not exist"),
    ({"noise": {"alpha": "1.5"}}, "noise_alpha=1.5 must be in [0, 1)"),
])
def test_malformed_growth_json_values(capsys, workdir, section, message):
    config = {"source": {"path": str(workdir / "src")}, "depth": {"op": "stack", "layer_map": "stack"},
              "target": {"overrides": {"num_hidden_layers": 6}}}
    config.update(section)
    path = workdir / "growth.json"
    path.write_text(json.dumps(config))
    stderr = _fails(capsys, workdir, ["--config", str(path), "--out", str(workdir / "out")], message,
                    keep={"src", "growth.json"})
    assert len(stderr.strip().splitlines()) == 1


def test_growth_json_text_numbers_convert(tmp_path):
    """Text that is unambiguously a number converts (config_io's rule, so a file and a command line agree)."""
    from growlm.growth.prts_config import read_growth_config

    path = tmp_path / "growth.json"
    path.write_text(json.dumps({"source": {"path": "src"}, "depth": {"op": "stack"}, "noise": {"alpha": "0.1"}}))
    assert read_growth_config(path).options.noise_alpha == 0.1
