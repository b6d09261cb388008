"""Virtual streams (data.virtual_streams): a disjoint, complete split of the input files, a sample order that does not
depend on the world size, a resume that re-reads at most one file per stream, and a tiny CPU pretrain that resumes
bit-exactly."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from growlm.assets import DEFAULT_DATA_DIR, DEFAULT_TOKENIZER_DIR
from growlm.data import DataConfig, VirtualStreams, build_train_stream, global_data_state, load_tokenizer
from growlm.data import virtual
from growlm.data.sources import load_split
from growlm.data.stream import _tokenized
from growlm.train.checkpoint import SAVE_HOOK_ENV
from tests.test_elastic_resume import assert_close, launch
from tests.test_pretrain import pretrain_cmd, run, step_losses

FILES = 8


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(DEFAULT_TOKENIZER_DIR))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The tiny train split rewritten as 8 files (documents dealt round-robin), its validation split copied."""
    out = tmp_path_factory.mktemp("virtual")
    documents = [dict(d) for d in load_split(DataConfig(exclude_sets=[]), "train")]
    (out / "train").mkdir()
    for i in range(FILES):
        (out / "train" / f"part{i}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents[i::FILES]))
    shutil.copytree(DEFAULT_DATA_DIR / "validation", out / "validation")
    return out


def vcfg(source: Path, **kw) -> DataConfig:
    return DataConfig(source=str(source), **{"virtual_streams": 4, "seq_len": 127, **kw})


def take(stream, n: int) -> list[list[int]]:
    blocks = iter(stream)
    taken = [b.tolist() for b in itertools.islice(blocks, n)]
    blocks.close()  # stops the prefetch thread
    return taken


def test_split_is_disjoint_and_complete(source, tokenizer):
    cfg = vcfg(source)
    stream = VirtualStreams(cfg, tokenizer=tokenizer)
    files = [stream.stream_files(s, epoch=0) for s in range(4)]
    assert sorted(itertools.chain.from_iterable(files)) == stream.files and len(stream.files) == FILES
    documents = []
    for s in range(4):  # epoch 0 of each stream
        documents += [tuple(ids) for key, ids in itertools.takewhile(lambda d: d[0][0] == 0, stream._documents(s, 0, 0, 0))]
    every = [tuple(ids) for _, ids in _tokenized(load_split(cfg, "train"), tokenizer, 0)]
    assert sorted(documents) == sorted(every) and len(set(every)) == len(every)  # each kept document once


def test_sample_order_does_not_depend_on_the_world_size(source, tokenizer):
    cfg = vcfg(source)
    single = take(build_train_stream(cfg, rank=0, world_size=1, tokenizer=tokenizer), 80)
    ranks = [take(build_train_stream(cfg, rank=r, world_size=2, tokenizer=tokenizer), 40) for r in range(2)]
    assert single == [ranks[k % 2][k // 2] for k in range(80)]
    reference = VirtualStreams(cfg, tokenizer=tokenizer)  # sample k is block k // V of stream k % V
    per_stream = [[b for b, _ in itertools.islice(reference.blocks(s, (0, 0, 0, 0)), 20)] for s in range(4)]
    assert single == [per_stream[k % 4][k // 4] for k in range(80)]
    assert len({tuple(b) for b in single}) == 80


def test_bad_settings_are_refused(source, tokenizer):
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        VirtualStreams(vcfg(source, virtual_streams=3), rank=0, world_size=2, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="fewer than virtual_streams=16"):
        VirtualStreams(vcfg(source, virtual_streams=16), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="block_shuffle does not apply"):
        vcfg(source, block_shuffle=8)


def test_resume_continues_identically_and_rereads_at_most_one_file_per_stream(source, tokenizer, monkeypatch):
    """Stopped after 150 samples (one stream already in epoch 1), a new
    stream continues with the same blocks, and each stream reads on from the file of its saved position (no earlier file is re-read)."""
    cfg = vcfg(source, seq_len=4095)
    uninterrupted = take(VirtualStreams(cfg, tokenizer=tokenizer), 200)
    first = VirtualStreams(cfg, tokenizer=tokenizer)
    assert take(first, 150) == uninterrupted[:150]
    state = json.loads(json.dumps(first.state_dict()))
    positions = [state["streams"][str(s)] for s in range(4)]
    assert max(p[0] for p in positions) >= 1 and all(p[1] + p[2] + p[3] for p in positions)
    opened, open_file = [], virtual.file_documents
    monkeypatch.setattr(virtual, "file_documents", lambda path, c: opened.append(path) or open_file(path, c))
    monkeypatch.setattr(virtual, "PREFETCH", 1)
    resumed = VirtualStreams(cfg, tokenizer=tokenizer)
    resumed.load_state_dict(state)
    assert take(resumed, 50) == uninterrupted[150:]
    for s, (epoch, file, _, _) in enumerate(positions):  # each stream reads on from the file of its position
        reads = [path for path in opened if path in resumed.files[s::4]]
        onward = resumed.stream_files(s, epoch)[file:] + resumed.stream_files(s, epoch + 1)
        assert reads == onward[:len(reads)] and reads


def test_two_process_state_resumes_each_rank_and_one_process_state_serves_any_world_size(source, tokenizer):
    cfg = vcfg(source)
    single = VirtualStreams(cfg, tokenizer=tokenizer)
    reference = take(single, 60)
    state = single.state_dict()
    for rank in range(2):  # a 1-process state holds every stream
        stream = VirtualStreams(cfg, rank=rank, world_size=2, tokenizer=tokenizer)
        head = take(stream, 10)
        stream_state = stream.state_dict()
        assert head == reference[rank:20:2]
        continued = VirtualStreams(cfg, rank=rank, world_size=2, tokenizer=tokenizer)
        continued.load_state_dict(stream_state)
        assert take(continued, 20) == reference[20 + rank:60:2]
        from_single = VirtualStreams(cfg, rank=rank, world_size=2, tokenizer=tokenizer)
        from_single.load_state_dict(state)
        assert take(from_single, 1) == take(VirtualStreams(cfg, tokenizer=tokenizer), 61 + rank)[60 + rank:]
    with pytest.raises(ValueError, match="no position for virtual streams"):
        VirtualStreams(cfg, tokenizer=tokenizer).load_state_dict(stream_state)
    states = []
    for rank in range(2):  # merged, the two ranks' states after 30 blocks each are the one-process state after 60
        stream = VirtualStreams(cfg, rank=rank, world_size=2, tokenizer=tokenizer)
        take(stream, 30)
        states.append(stream.state_dict())
    assert global_data_state(states) == state
    with pytest.raises(ValueError, match="different sample order"):
        VirtualStreams(vcfg(source, seed=1), tokenizer=tokenizer).load_state_dict(state)


def flags(source: Path) -> list[str]:
    return ["--source", str(source), "--virtual-streams", "4"]


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    """The uninterrupted one-process run (6 steps of 4 sequences)."""
    out = tmp_path_factory.mktemp("virtual-reference")
    result = run(pretrain_cmd(out, *flags(source)))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_pretrain_with_virtual_streams_resumes_bit_exactly(source, reference, tmp_path):
    """A tiny CPU run with --virtual-streams 4; crashed while saving step 4 and resumed from step 2, it ends with the
    same losses and bitwise the same weights as the uninterrupted run."""
    resumed = tmp_path / "resumed"
    assert run(pretrain_cmd(resumed, *flags(source), "--resume", "auto"), **{SAVE_HOOK_ENV: "crash@4"}).returncode != 0
    state = json.loads((resumed / "checkpoints" / "step-00000002" / "data_state_rank0.json").read_text())
    assert state["next"] == 8 and sorted(state["streams"]) == ["0", "1", "2", "3"]  # 2 steps x 4 sequences
    result = run(pretrain_cmd(resumed, *flags(source), "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_losses(resumed) == step_losses(reference) and len(step_losses(reference)) == 6
    ours, theirs = (folder / "final" / "model.safetensors" for folder in (resumed, reference))
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.slow
def test_a_two_process_run_leaves_positions_any_process_count_resumes(source, reference, tmp_path):
    """Each rank holds only its own streams' positions; the final export (`--data-from`) and a checkpoint resumed on
    another process count merge them over all ranks. The 2-process run's data_state.json is the 1-process run's,
    and its step-4 checkpoint resumed on 1 process trains the reference's steps 5-6 (rel 1e-5: see
    test_elastic_resume)."""
    two = tmp_path / "two"
    result = launch(2, two, 29667, *flags(source))
    assert result.returncode == 0, result.stderr[-3000:]
    position = json.loads((two / "final" / "data_state.json").read_text())
    assert position == json.loads((reference / "final" / "data_state.json").read_text())
    assert sorted(position["streams"]) == ["0", "1", "2", "3"]
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000006")
    shutil.rmtree(resumed / "final")
    result = run(pretrain_cmd(resumed, *flags(source), "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "written by 2 processes, this run has 1" in result.stderr
    assert_close(step_losses(resumed), step_losses(reference))
    assert json.loads((resumed / "final" / "data_state.json").read_text()) == position
