"""Data pipeline: filter, tokenize, pack, per-rank split, exact resume, validation blocks (training.md §1, §10, §11)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import zstandard
from torch.utils.data import DataLoader

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR
from growlm.data import (
    DataConfig,
    PackedStream,
    data_manifest,
    encode_documents,
    load_tokenizer,
    pack_documents,
    tokenizer_sha256,
    validation_blocks,
)
from growlm.data.sources import load_split

SMALL = ["RedPajamaStackExchange"]  # 6 train documents: epochs end after a few blocks


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(DEFAULT_TOKENIZER_DIR))


def take(stream: PackedStream, n: int) -> list[torch.Tensor]:
    return list(itertools.islice(iter(stream), n))


def raw_set_names(split: str) -> Counter:
    """Set-name counts read straight from the shards, without `datasets`."""
    counts: Counter = Counter()
    for path in sorted((DEFAULT_DATA_DIR / split).rglob("*.jsonl.zst")):
        with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as reader:
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                counts[json.loads(line)["meta"]["redpajama_set_name"]] += 1
    return counts


def test_pack_documents_keeps_every_token_in_order_without_padding():
    docs = [(i, list(range(100 * i, 100 * i + n))) for i, n in enumerate([5, 1, 13, 2, 7, 30])]
    packed = list(pack_documents(docs, 8))
    flat = [t for _, ids in docs for t in ids]
    assert all(len(block) == 8 for block, _, _ in packed)
    assert [t for block, _, _ in packed for t in block] == flat[: len(flat) // 8 * 8]
    # each block reports where it ends: (document key, tokens of it used)
    for n, (_, key, used) in enumerate(packed, start=1):
        assert sum(len(ids) for k, ids in docs if k < key) + used == 8 * n
    _, key, used = packed[1]  # resume after block 2 from the position it reports
    assert list(pack_documents(docs[key:], 8, skip_tokens=used)) == packed[2:]


def test_stream_packs_filtered_documents_with_eos_and_no_bos(tokenizer):
    cfg = DataConfig(seq_len=255)
    stream = PackedStream(cfg, tokenizer=tokenizer)
    texts = [ex["text"] for ex in stream.epoch_documents(0)]
    docs = encode_documents(tokenizer, texts)
    assert all(ids[-1] == tokenizer.eos_token_id and ids[0] != tokenizer.bos_token_id for ids in docs)
    flat = torch.tensor([t for ids in docs for t in ids])
    n_blocks = len(flat) // cfg.block_len
    blocks = torch.stack(take(stream, n_blocks))  # exactly epoch 0's full blocks
    assert blocks.shape == (n_blocks, 256) and blocks.dtype == torch.long
    assert torch.equal(blocks.flatten(), flat[: n_blocks * cfg.block_len])
    assert (blocks == tokenizer.bos_token_id).sum() == 0  # the reference's pad id never appears
    inputs, labels = blocks[:, :-1], blocks[:, 1:]
    assert inputs.shape[1] == labels.shape[1] == cfg.seq_len and torch.equal(inputs[:, 1:], labels[:, :-1])


def test_github_filter_and_configurable_sets():
    raw = raw_set_names("train")
    assert raw["RedPajamaGithub"] > 0
    kept = Counter(ex["meta"]["redpajama_set_name"] for ex in load_split(DataConfig(), "train"))
    assert kept == Counter({name: n for name, n in raw.items() if name != "RedPajamaGithub"})
    books = Counter(ex["meta"]["redpajama_set_name"]
                    for ex in load_split(DataConfig(include_sets=["RedPajamaBook"]), "train"))
    assert books == Counter({"RedPajamaBook": raw["RedPajamaBook"]})
    everything = Counter(ex["meta"]["redpajama_set_name"] for ex in load_split(DataConfig(exclude_sets=[]), "train"))
    assert everything == raw
    with pytest.raises(ValueError, match="both included and excluded"):
        DataConfig(include_sets=["RedPajamaGithub"])


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_streams_are_disjoint_and_complete(tokenizer, world_size):
    cfg = DataConfig(seq_len=63, include_sets=SMALL)
    per_rank = 40
    whole = take(PackedStream(cfg, tokenizer=tokenizer), per_rank * world_size)
    ranks = [take(PackedStream(cfg, rank=r, world_size=world_size, tokenizer=tokenizer), per_rank)
             for r in range(world_size)]
    interleaved = [ranks[i % world_size][i // world_size] for i in range(per_rank * world_size)]
    assert all(torch.equal(a, b) for a, b in zip(interleaved, whole, strict=True))
    with pytest.raises(ValueError, match="rank"):
        PackedStream(cfg, rank=world_size, world_size=world_size, tokenizer=tokenizer)


@pytest.mark.parametrize("world_size,k", [(1, 3), (1, 25), (2, 11)])
def test_resume_is_exact_including_across_epochs(tokenizer, world_size, k):
    cfg = DataConfig(seq_len=2047, include_sets=SMALL)  # about 20 blocks per epoch
    later = 30
    uninterrupted = take(PackedStream(cfg, rank=world_size - 1, world_size=world_size, tokenizer=tokenizer),
                         k + later)
    first = PackedStream(cfg, rank=world_size - 1, world_size=world_size, tokenizer=tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(take(first, k), uninterrupted))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PackedStream(cfg, rank=world_size - 1, world_size=world_size, tokenizer=tokenizer)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, later), uninterrupted[k:], strict=True))
    assert resumed.state_dict()["epoch"] > state["epoch"]  # the resumed part crossed an epoch boundary


def test_last_rank_state_is_the_global_position_and_order_is_checked(tokenizer):
    cfg = DataConfig(seq_len=63, include_sets=SMALL)
    last_rank = PackedStream(cfg, rank=2, world_size=3, tokenizer=tokenizer)
    take(last_rank, 4)  # global blocks 2, 5, 8, 11
    single = PackedStream(cfg, tokenizer=tokenizer)
    single.load_state_dict(last_rank.state_dict())
    expected = take(PackedStream(cfg, tokenizer=tokenizer), 15)[12:]
    assert all(torch.equal(a, b) for a, b in zip(take(single, 3), expected, strict=True))
    other_seed = PackedStream(DataConfig(seq_len=63, include_sets=SMALL, seed=1), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(last_rank.state_dict())


def test_dataloader_batches_resume_exactly(tokenizer):
    cfg = DataConfig(seq_len=63, include_sets=SMALL)
    stream = PackedStream(cfg, tokenizer=tokenizer)
    batches = iter(DataLoader(stream, batch_size=4, num_workers=0))
    first = [next(batches) for _ in range(2)]
    resumed = PackedStream(cfg, tokenizer=tokenizer)
    resumed.load_state_dict(stream.state_dict())
    assert torch.equal(next(iter(DataLoader(resumed, batch_size=4))), next(batches))
    assert torch.equal(torch.cat(first), torch.stack(take(PackedStream(cfg, tokenizer=tokenizer), 8)))


def test_shuffle_is_seeded_and_reshuffled_per_epoch(tokenizer):
    def order(seed: int, epoch: int) -> list[str]:
        stream = PackedStream(DataConfig(seed=seed), tokenizer=tokenizer)
        return [ex["meta"]["source"] for ex in stream.epoch_documents(epoch)]

    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0)) == sorted(order(2, 0)) and order(1, 0) != order(2, 0)
    assert order(1, 1) != order(1, 0)
    a, b, c = (take(PackedStream(DataConfig(seq_len=63, seed=s, include_sets=SMALL), tokenizer=tokenizer), 3)
               for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_validation_blocks_are_fixed(tokenizer):
    cfg = DataConfig(seq_len=127, validation_blocks=16)
    first = validation_blocks(cfg, tokenizer=tokenizer)
    second = validation_blocks(cfg, tokenizer=load_tokenizer(str(DEFAULT_TOKENIZER_DIR)))
    assert first.shape == (16, 128)
    assert hashlib.sha256(first.numpy().tobytes()).hexdigest() == hashlib.sha256(second.numpy().tobytes()).hexdigest()
    with pytest.warns(UserWarning, match="holds only"):
        few = validation_blocks(DataConfig(seq_len=2047, include_sets=SMALL, validation_blocks=64), tokenizer=tokenizer)
    assert 0 < len(few) < 64


def test_glob_source_and_missing_sources(tokenizer, tmp_path: Path):
    folder = take(PackedStream(DataConfig(seq_len=63), tokenizer=tokenizer), 4)
    train_glob = str(DEFAULT_DATA_DIR / "train" / "chunk*" / "*.jsonl.zst")
    globbed = take(PackedStream(DataConfig(source=train_glob, seq_len=63), tokenizer=tokenizer), 4)
    assert all(torch.equal(a, b) for a, b in zip(folder, globbed, strict=True))
    with pytest.raises(ValueError, match="placeholder"):
        validation_blocks(DataConfig(source=train_glob), tokenizer=tokenizer)
    split_glob = str(DEFAULT_DATA_DIR / "{split}" / "chunk*" / "*.jsonl.zst")
    cfg = DataConfig(source=split_glob, seq_len=127, validation_blocks=4)
    assert torch.equal(validation_blocks(cfg, tokenizer=tokenizer),
                       validation_blocks(DataConfig(seq_len=127, validation_blocks=4), tokenizer=tokenizer))
    with pytest.raises(ValueError, match="not found"):
        PackedStream(DataConfig(source=str(tmp_path / "missing")), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="matches no"):
        PackedStream(DataConfig(source=str(tmp_path / "*.jsonl.zst")), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="SlimPajama's"):
        PackedStream(DataConfig(source=str(tmp_path)), tokenizer=tokenizer)


def test_tokenizer_hash_is_recorded_and_splits_literal_specials(tokenizer):
    assert tokenizer.growlm_sha256 == tokenizer_sha256(DEFAULT_TOKENIZER_DIR)
    assert len(tokenizer.growlm_sha256) == 64
    assert encode_documents(tokenizer, ["a <s> b"])[0].count(tokenizer.bos_token_id) == 0
    with pytest.raises(ValueError, match="not found"):
        load_tokenizer("./no-such-tokenizer")


def test_manifest_matches_the_vendored_shard_hashes():
    expected = {shard["path"]: shard["zst_sha256"]
                for shard in json.loads((DEFAULT_DATA_DIR / "manifest.json").read_text())["shards"]}
    manifest = data_manifest(DataConfig())
    assert manifest["config"]["exclude_sets"] == ["RedPajamaGithub"]
    listed = {str(Path(entry["path"]).relative_to(DEFAULT_DATA_DIR)): entry["sha256"]
              for entry in manifest["shards"]["train"] + manifest["shards"]["validation"]}
    assert listed == {path: sha for path, sha in expected.items() if not path.startswith("test/")}


def test_block_shuffle_is_a_resumable_world_size_independent_permutation(tokenizer):
    """Window-shuffled blocks: a permutation of the packed blocks within each window, the same global order on any
    world size, and exact after a resume from any position (also mid-window)."""
    plain = DataConfig(seq_len=31, shuffle_buffer=1)
    shuffled = DataConfig(seq_len=31, shuffle_buffer=1, block_shuffle=8)
    unshuffled = [b.tolist() for b in itertools.islice(iter(PackedStream(plain, tokenizer=tokenizer)), 24)]
    stream = PackedStream(shuffled, tokenizer=tokenizer)
    order = [b.tolist() for b in itertools.islice(iter(stream), 24)]
    for w in range(3):
        assert sorted(order[8 * w:8 * w + 8]) == sorted(unshuffled[8 * w:8 * w + 8])
    assert order != unshuffled
    ranks = [[b.tolist() for b in itertools.islice(iter(PackedStream(shuffled, rank=r, world_size=3,
                                                                     tokenizer=tokenizer)), 8)] for r in range(3)]
    assert [ranks[i % 3][i // 3] for i in range(24)] == order
    for cut in (5, 8, 13):
        first = PackedStream(shuffled, tokenizer=tokenizer)
        it = iter(first)
        head = [next(it).tolist() for _ in range(cut)]
        resumed = PackedStream(shuffled, tokenizer=tokenizer)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert head + [b.tolist() for b in itertools.islice(iter(resumed), 24 - cut)] == order


def test_validation_blocks_spread_over_the_split(tokenizer):
    every = validation_blocks(DataConfig(seq_len=127, validation_blocks=10_000), tokenizer=tokenizer)
    some = validation_blocks(DataConfig(seq_len=127, validation_blocks=4), tokenizer=tokenizer)
    n = len(every)
    assert torch.equal(some, every[[i * n // 4 for i in range(4)]])
