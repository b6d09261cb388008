"""Train a small byte-fallback BPE tokenizer with Llama's conventions (growth studies on small models).

The layout is the vendored 32k Llama tokenizer's: ids 0-2 are `<unk> <s> </s>`, ids 3-258 the byte-fallback
tokens `<0x00>`..`<0xFF>`, then the learned pieces; spaces become `▁` and one `▁` is prepended (SentencePiece's
"legacy" normaliser); decoding is exact. The one difference: the `tokenizers` trainer needs words, so a
pre-tokenizer splits before every `▁`, which is what SentencePiece's `split_by_whitespace` does.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from growlm.atomic import atomic_dir, write_json
from growlm.data.config import DataConfig

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
LIMIT_ALPHABET = 256  # the most frequent characters become base pieces; rarer ones fall back to bytes
SPACE = "\u2581"

# Same as the vendored llama-32k folder: the generic fast class (transformers 5 keeps tokenizer.json as saved).
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "model_input_names": ["input_ids", "attention_mask"],
}
SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
RECORD_FILE = "tokenizer_training.json"


def _pipeline():
    """An untrained tokenizer with Llama's normaliser, decoder and BOS template, plus the word splitter."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SPACE), behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return tokenizer


def base_alphabet(texts: Iterable[str]) -> list[str]:
    """The `LIMIT_ALPHABET` most frequent characters (spaces counted as `▁`), ties broken by code point.

    The trainer's own `limit_alphabet` breaks ties at the cut-off in hash order, which made two runs on the same
    corpus differ; handing it this list (and the same limit) makes training reproducible byte for byte.
    """
    counts = Counter()
    for text in texts:
        counts.update(text.replace(" ", SPACE))
    counts[SPACE] += 1  # always a base piece, even for a corpus without spaces
    return sorted(sorted(counts, key=lambda char: (-counts[char], char))[:LIMIT_ALPHABET])


def check_vocab_size(vocab_size: int) -> None:
    """Raise unless `vocab_size` leaves room for learned pieces after the specials, bytes and base characters."""
    reserved = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    if vocab_size <= reserved + LIMIT_ALPHABET:
        raise ValueError(f"vocab_size {vocab_size} is too small: {reserved} ids are special and byte tokens and "
                         f"{LIMIT_ALPHABET} base characters come next; use at least {reserved + LIMIT_ALPHABET + 1}")


def train_bpe(texts: Iterable[str], *, vocab_size: int):
    """A `tokenizers.Tokenizer` of exactly `vocab_size` ids in the Llama layout, trained on `texts`."""
    from tokenizers import Tokenizer, processors, trainers

    check_vocab_size(vocab_size)
    texts = list(texts)
    tokenizer = _pipeline()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(BYTE_TOKENS), special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=base_alphabet(texts), limit_alphabet=LIMIT_ALPHABET,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Insert the byte-fallback tokens after the specials (the trainer has no notion of them); merges are by
    # string, so renumbering the learned pieces changes nothing else.
    data = json.loads(tokenizer.to_str())
    learned = sorted(data["model"]["vocab"].items(), key=lambda item: item[1])
    pieces = [piece for piece, _ in learned if piece not in SPECIAL_TOKENS]
    vocab = [*SPECIAL_TOKENS, *BYTE_TOKENS, *pieces]
    if len(vocab) != vocab_size:
        raise ValueError(f"the corpus supports only {len(vocab)} distinct pieces, fewer than vocab_size "
                         f"{vocab_size}; train on more text or pick a smaller vocab_size")
    data["model"]["vocab"] = {piece: index for index, piece in enumerate(vocab)}
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    return tokenizer


def _sha256_files(folder: Path, names: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        data = (folder / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def save_tokenizer_folder(tokenizer, out_dir: str | Path, *, record: dict) -> dict:
    """Write `tokenizer.json`, the two config files and `tokenizer_training.json` (with the SHA-256 of the three
    tokenizer files, the same digest `growlm.data.tokenizer.tokenizer_sha256` computes); atomic folder rename."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / RECORD_FILE).is_file():
        raise ValueError(f"{out_dir} exists and is not a tokenizer folder written by this trainer; pass a new --out")
    with atomic_dir(out_dir) as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"), pretty=True)
        for name, obj in (("tokenizer_config.json", TOKENIZER_CONFIG), ("special_tokens_map.json", SPECIAL_TOKENS_MAP)):
            write_json(tmp / name, obj)
        record = {**record, "vocab_size": tokenizer.get_vocab_size(),
                  "sha256": _sha256_files(tmp, ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"))}
        write_json(tmp / RECORD_FILE, record, sort_keys=True)
    return record


def corpus_texts(cfg: DataConfig, split: str) -> Iterator[str]:
    """The text of every document of `split` that the config's set filter keeps, in file order."""
    from growlm.data.sources import load_split

    for example in load_split(cfg, split):
        yield example["text"]
