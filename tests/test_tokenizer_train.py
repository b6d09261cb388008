"""The small-model tokenizer: the trainer reproduces the vendored folder byte for byte; Llama conventions hold."""

import filecmp
import json

import pytest

from growlm.assets import SMALL_TOKENIZER_DIR
from growlm.cli.train_tokenizer import main
from growlm.data.tokenizer import encode_documents, load_tokenizer, tokenizer_sha256

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer_training.json")


def test_trainer_reproduces_the_vendored_tokenizer_byte_for_byte(tmp_path):
    assert main(["--vocab-size", "4096", "--out", str(tmp_path / "bpe-4k")]) == 0
    for name in FILES:
        assert filecmp.cmp(tmp_path / "bpe-4k" / name, SMALL_TOKENIZER_DIR / name, shallow=False), name
    record = json.loads((SMALL_TOKENIZER_DIR / "tokenizer_training.json").read_text())
    assert record["vocab_size"] == 4096 and record["sha256"] == tokenizer_sha256(SMALL_TOKENIZER_DIR)
    assert record["corpus"]["exclude_sets"] == ["RedPajamaGithub"] and record["corpus"]["documents"] > 1000


def test_llama_conventions_and_exact_round_trip():
    tokenizer = load_tokenizer(str(SMALL_TOKENIZER_DIR))
    assert len(tokenizer) == 4096
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    text = "In the beginning <s> was   the Word.\n\tÜnïcödé 漢字 🙂"
    (ids,) = encode_documents(tokenizer, [text])
    assert ids[-1] == 2 and 1 not in ids  # EOS appended, no BOS, literal "<s>" kept as text
    assert tokenizer.decode(ids[:-1]) == text  # byte fallback: nothing is lost
    assert tokenizer(text)["input_ids"][0] == 1  # users' default call adds BOS, as with the Llama tokenizer


def test_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["--vocab-size", "4096", "--out", str(tmp_path / "mine")]) == 2
    assert "not a tokenizer folder written by this trainer" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_too_small_vocab_is_a_clear_error(capsys):
    assert main(["--vocab-size", "300", "--out", "unused"]) == 2
    assert "vocab_size 300 is too small" in capsys.readouterr().err


@pytest.mark.parametrize("name", FILES)
def test_vendored_files_are_present(name):
    assert (SMALL_TOKENIZER_DIR / name).is_file()
