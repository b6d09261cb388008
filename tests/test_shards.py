"""Pre-tokenized token shards: same tokens as the streaming path, resumable writing, a world-size-independent
sample order with O(1) exact resume, DataLoader workers, validation blocks equal to the streaming ones, and a
tiny CPU pretrain from shards that resumes bit-exactly."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR
from growlm.data import (
    DataConfig,
    ShardStream,
    build_train_stream,
    data_manifest,
    load_tokenizer,
    tokenize_split,
    validation_blocks,
)
from growlm.data.shards import MANIFEST, ShardSamples, TokenShards
from growlm.data.sources import load_split
from growlm.data.stream import PackedStream, _tokenized
from growlm.train.checkpoint import SAVE_HOOK_ENV
from tests.conftest import REPO_ROOT
from tests.test_pretrain import pretrain_cmd, run, step_losses

SOURCE = str(DEFAULT_DATA_DIR)
TOKENIZER = str(DEFAULT_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


def shard_cfg(shards: Path, **kw) -> DataConfig:
    return DataConfig(source=str(shards), format="shards", **{"seq_len": 63, "num_workers": 0, **kw})


def take(stream, n: int) -> list[list[int]]:
    return [b.tolist() for b in itertools.islice(iter(stream), n)]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_shards_hold_exactly_the_streaming_tokens(shards, tokenizer, split):
    documents = [ids for _, ids in _tokenized(load_split(DataConfig(), split), tokenizer, 0)]
    streamed = np.fromiter(itertools.chain.from_iterable(documents), dtype=np.int64)
    manifest = json.loads((shards / split / MANIFEST).read_text())
    stored = np.concatenate([np.memmap(shards / split / s["file"], dtype=manifest["dtype"], mode="r")
                             for s in manifest["shards"]])
    assert manifest["dtype"] == "uint16" and np.array_equal(stored.astype(np.int64), streamed)
    assert manifest["documents"] == len(documents) == int((stored == tokenizer.eos_token_id).sum())
    assert manifest["tokens"] == len(streamed) and manifest["tokenizer_sha256"] == tokenizer.growlm_sha256
    assert manifest["rules"]["exclude_sets"] == ["RedPajamaGithub"] and manifest["datasets_version"]
    assert tokenizer.bos_token_id not in stored[:1]


def test_writing_resumes_skipping_finished_shards_and_ignoring_partial_files(shards, tmp_path):
    out = tmp_path / "out"
    first = tokenize_split(SOURCE, TOKENIZER, out, split="train")
    folder = out / "train"
    kept, redo = (folder / s["file"] for s in first["shards"])
    # A killed run: one shard finished, one lost its marker, a partial temp file left behind.
    redo.with_suffix(".json").unlink()
    (folder / f".{redo.name}.abc123.tmp").write_bytes(b"partial")
    (folder / MANIFEST).unlink()
    before = kept.stat().st_mtime_ns
    again = tokenize_split(SOURCE, TOKENIZER, out, split="train")
    assert kept.stat().st_mtime_ns == before and again["shards"] == first["shards"]
    assert not list(folder.glob(".*.tmp"))
    assert (folder / MANIFEST).read_bytes() == (shards / "train" / MANIFEST).read_bytes().replace(
        str(shards).encode(), str(out).encode())
    with pytest.raises(ValueError, match="other settings"):
        tokenize_split(SOURCE, TOKENIZER, out, split="train", exclude_sets=[])


def test_parallel_writing_gives_the_same_shards(shards, tmp_path):
    manifest = tokenize_split(SOURCE, TOKENIZER, tmp_path, split="train", num_proc=2)
    assert manifest["shards"] == json.loads((shards / "train" / MANIFEST).read_text())["shards"]


def test_samples_are_a_seeded_two_level_permutation_of_the_epoch(shards):
    cfg = shard_cfg(shards, block_shuffle=8)
    samples = ShardSamples(TokenShards(shards, "train"), cfg)
    n = samples.blocks_per_epoch
    for epoch in (0, 1):
        order, ends = samples.epoch_order(epoch)
        blocks = [samples.block_of(epoch * n + i) for i in range(n)]
        assert sorted(b for _, b in blocks) == list(range(n)) and {e for e, _ in blocks} == {epoch}
        assert all(w * 8 <= b < w * 8 + 8 for w, (_, b) in ((i // 8, blocks[i]) for i in range(n)))
        concatenated = np.concatenate([samples.shards.tokens(int(s)) for s in order])
        assert torch.equal(samples[epoch * n + 5], torch.from_numpy(
            concatenated[blocks[5][1] * 64:(blocks[5][1] + 1) * 64].astype(np.int64)))
    assert [samples.block_of(i)[1] for i in range(16)] != list(range(16))
    assert [samples.block_of(i)[1] for i in range(16)] != [samples.block_of(n + i)[1] for i in range(16)]
    other = ShardSamples(TokenShards(shards, "train"), shard_cfg(shards, block_shuffle=8, seed=1))
    assert [other.block_of(i)[1] for i in range(16)] != [samples.block_of(i)[1] for i in range(16)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_interleave_into_the_single_process_sequence_and_resume_exactly(shards, tokenizer, world_size):
    cfg = shard_cfg(shards, block_shuffle=16, seq_len=1023)  # 781 blocks per epoch: the test crosses an epoch
    single = ShardStream(cfg, tokenizer=tokenizer)
    n = single.samples.blocks_per_epoch
    expected = take(single, n + 12)
    ranks = [take(ShardStream(cfg, rank=r, world_size=world_size, tokenizer=tokenizer), (n + 12) // world_size + 1)
             for r in range(world_size)]
    assert [ranks[k % world_size][k // world_size] for k in range(n + 12)] == expected
    for cut in (5, n - 1, n + 3):
        first = ShardStream(cfg, tokenizer=tokenizer)
        head = take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))
        assert (state["epoch"], state["index"]) == divmod(cut, n)
        for rank in range(world_size):  # any world size resumes from the global position
            resumed = ShardStream(cfg, rank=rank, world_size=world_size, tokenizer=tokenizer)
            resumed.load_state_dict(state)
            start = cut + (rank - cut) % world_size
            assert take(resumed, 2) == [expected[start], expected[start + world_size]]
        assert head == expected[:cut]


def test_dataloader_workers_deliver_the_same_samples(shards, tokenizer):
    blocks = {w: take(ShardStream(shard_cfg(shards, block_shuffle=32, num_workers=w), rank=1, world_size=2,
                                  tokenizer=tokenizer), 40) for w in (0, 2)}
    assert blocks[0] == blocks[2]
    stream = ShardStream(shard_cfg(shards, num_workers=2), tokenizer=tokenizer)
    take(stream, 7)  # the workers prefetch further; the state follows the blocks handed out
    assert stream.state_dict()["index"] == 7


def test_state_is_checked_against_format_shards_and_tokenizer(shards, tokenizer, tmp_path):
    cfg = shard_cfg(shards)
    stream = ShardStream(cfg, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="seed"):
        ShardStream(shard_cfg(shards, seed=1), tokenizer=tokenizer).load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="format"):
        stream.load_state_dict(PackedStream(DataConfig(seq_len=63), tokenizer=tokenizer).state_dict())
    with pytest.raises(ValueError, match="format"):
        PackedStream(DataConfig(seq_len=63), tokenizer=tokenizer).load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="another tokenizer"):
        ShardStream(cfg, tokenizer=load_tokenizer(str(DEFAULT_TOKENIZER_DIR.parent / "bpe-4k")))
    with pytest.raises(ValueError, match="exclude_sets"):
        ShardStream(shard_cfg(shards, exclude_sets=[]), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="tokenize_data.py"):
        ShardStream(shard_cfg(tmp_path), tokenizer=tokenizer)
    assert isinstance(build_train_stream(cfg, rank=0, world_size=1, tokenizer=tokenizer), ShardStream)


def test_validation_blocks_from_shards_equal_the_streaming_ones(shards, tokenizer):
    streamed = validation_blocks(DataConfig(seq_len=127, validation_blocks=16), tokenizer=tokenizer)
    assert torch.equal(validation_blocks(shard_cfg(shards, seq_len=127, validation_blocks=16), tokenizer=tokenizer),
                       streamed)


def test_pretrain_from_shards_resumes_bit_exactly(shards, tmp_path):
    """A tiny CPU run with --format shards and 2 loader workers; crashed while saving step 4 and resumed from
    step 2, it ends with the same losses and bitwise the same weights as the uninterrupted run."""
    flags = ["--format", "shards", "--source", str(shards), "--block-shuffle", "64", "--num-workers", "2"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    result = run(pretrain_cmd(reference, *flags))
    assert result.returncode == 0, result.stderr[-3000:]
    assert run(pretrain_cmd(resumed, *flags, "--resume", "auto"), **{SAVE_HOOK_ENV: "crash@4"}).returncode != 0
    state = json.loads((resumed / "checkpoints" / "step-00000002" / "data_state_rank0.json").read_text())
    assert (state["epoch"], state["index"]) == (0, 8)  # 2 steps x 4 sequences
    result = run(pretrain_cmd(resumed, *flags, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_losses(resumed) == step_losses(reference) and len(step_losses(reference)) == 6
    assert (resumed / "final" / "model.safetensors").read_bytes() == (reference / "final" / "model.safetensors").read_bytes()


def test_data_manifest_records_the_shard_manifests(shards):
    manifest = data_manifest(shard_cfg(shards))
    assert manifest["token_shards"]["train"] == json.loads((shards / "train" / MANIFEST).read_text())
    assert manifest["config"]["format"] == "shards"


def test_tokenize_data_reads_a_hub_dataset_pinned_to_its_commit(shards, hub_server, tmp_path):
    """The tiny corpus pushed as a dataset repo to the local Hub (growlm/hub_server.py) and tokenized by id through
    `scripts/tokenize_data.py`: the same shard bytes as from the local folder, with the inputs and the manifest
    pinned to the pushed commit."""
    from huggingface_hub import HfApi

    repo = "growlm-test/slimpajama-tiny"
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    commit = api.upload_folder(folder_path=SOURCE, repo_id=repo, repo_type="dataset",
                               allow_patterns=["validation/**"]).oid
    env = {**os.environ, "HF_DATASETS_OFFLINE": "0"}  # the fixture put HF_ENDPOINT, HF_TOKEN, ... in os.environ
    out = tmp_path / "hub-shards"
    result = subprocess.run([sys.executable, "scripts/tokenize_data.py", "--source", repo, "--out", str(out),
                             "--split", "validation"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    hub, local = (json.loads((folder / "validation" / MANIFEST).read_text()) for folder in (out, shards))
    assert (hub["source"], hub["revision"]) == (repo, commit)
    assert [s["input"] for s in hub["shards"]] == [
        f"hf://datasets/{repo}@{commit}/validation/chunk1/example_holdout_0.jsonl.zst"]
    assert [(s["file"], s["tokens"], s["sha256"]) for s in hub["shards"]] == [
        (s["file"], s["tokens"], s["sha256"]) for s in local["shards"]]
