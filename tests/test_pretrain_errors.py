"""`scripts/pretrain.py` keeps users' data and survives damage: bad inputs end as one `error:` line (exit 2, nothing
written), a fresh run refuses a used output folder unless --overwrite, checkpoints are bound to their run, and
`--resume auto` falls back past a damaged checkpoint to the newest one that verifies, resuming bit-exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from growlm.cli.pretrain import main
from growlm.train.checkpoint import COMPLETE_MARKER, REPLACED_PREFIX, RUN_RECORD, SAVE_HOOK_ENV, checkpoint_problem
from growlm.train.metrics import MetricsLog, read_metrics
from tests.conftest import save_tiny_llama
from tests.test_pretrain import TINY, pretrain_cmd, reference, run, step_losses  # noqa: F401 (fixture)

STEP2, STEP4 = "step-00000002", "step-00000004"


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# ---- bad inputs: one error line, exit 2, nothing written ----------------------------------------------------------


def _model(tmp: Path) -> Path:
    return save_tiny_llama(tmp / "model", with_tokenizer=True)


def _yaml(tmp: Path, text: str) -> str:
    (tmp / "bad.yaml").write_text(text)
    return str(tmp / "bad.yaml")


def _empty(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


def _file(tmp: Path, name: str) -> str:
    (tmp / name).write_text("not a folder\n")
    return str(tmp / name)


OUT = "{out}"  # replaced by the test's output folder
BAD_INPUTS = [
    ("negative-lr", lambda tmp: ["--lr", "-1"], "optim.lr=-1.0 must be a positive number"),
    ("nan-lr", lambda tmp: ["--lr", "nan"], "optim.lr=nan must be a positive number"),
    ("inf-lr", lambda tmp: ["--lr", "inf"], "optim.lr=inf must be a positive number"),
    ("beta1-1", lambda tmp: ["--beta1", "1"], "optim.beta1=1.0 must be in [0, 1)"),
    ("beta2-negative", lambda tmp: ["--beta2", "-0.1"], "optim.beta2=-0.1 must be in [0, 1)"),
    ("eps-0", lambda tmp: ["--eps", "0"], "optim.eps=0.0 must be a positive number"),
    ("grad-clip-negative", lambda tmp: ["--grad-clip", "-1"], "optim.grad_clip=-1.0 must be a positive number"),
    ("weight-decay-negative", lambda tmp: ["--weight-decay", "-1"], "optim.weight_decay=-1.0 must be >= 0"),
    ("indivisible-batch", lambda tmp: ["--global-batch-tokens", "96"],
     "= 3 sequences of 32 does not split into micro-batches of train.micro_batch_size=2"),
    ("batch-not-multiple-of-seq", lambda tmp: ["--global-batch-tokens", "100"],
     "train.global_batch_tokens=100 is not a multiple of data.seq_len=32"),
    ("missing-data-folder", lambda tmp: ["--source", str(tmp / "no-data")], "no-data: no such folder"),
    ("data-folder-without-shards", lambda tmp: ["--source", _empty(tmp, "empty-data")],
     "No *.jsonl.zst or *.jsonl shards under"),
    ("token-shards-missing", lambda tmp: ["--format", "shards", "--source", _empty(tmp, "no-shards")],
     "(manifest.json missing); write them with scripts/tokenize_data.py"),
    ("missing-tokenizer", lambda tmp: ["--tokenizer", str(tmp / "no-tok")], "no-tok: no such tokenizer folder"),
    ("tokenizer-folder-without-files", lambda tmp: ["--tokenizer", _empty(tmp, "empty-tok")],
     "holds no tokenizer files"),
    ("unknown-shape", lambda tmp: ["--shape", "tiny-99L"], "model.shape='tiny-99L' is unknown"),
    ("freeze-syntax", lambda tmp: ["--freeze", "a-b"], "train.freeze='a-b': cannot parse 'a-b'"),
    ("freeze-out-of-range", lambda tmp: ["--freeze", "0-7"], "model.shape='tiny-2L' has layers 0-1"),
    ("freeze-grown-without-init", lambda tmp: ["--freeze", "grown"], "train.freeze=grown needs --init-from"),
    ("output-dir-is-a-file", lambda tmp: ["--output-dir", _file(tmp, "out-file")], "is a file, not a folder"),
    ("yaml-syntax", lambda tmp: ["--config", _yaml(tmp, "optim:\n  lr: [1\n")], "bad.yaml is not valid YAML"),
    ("yaml-unknown-key", lambda tmp: ["--config", _yaml(tmp, "optim:\n  lrate: 1\n")], "unknown key(s) ['lrate']"),
    ("eval-every-negative", lambda tmp: ["--eval-every", "-1"], "log.eval_every=-1 must be >= 0"),
    ("log-every-negative", lambda tmp: ["--log-every", "-1"], "log.log_every=-1 must be >= 0"),
    ("seed-text", lambda tmp: ["--seed", "abc"], "train.seed: expected an integer, got 'abc'"),
    ("max-steps-0", lambda tmp: ["--max-steps", "0"], "train.max_steps=0 must be positive"),
    ("save-every-0", lambda tmp: ["--save-every", "0"], "checkpoint.save_every and checkpoint.keep_last must be"),
    ("warmup-negative", lambda tmp: ["--warmup-steps", "-1"], "schedule.warmup_steps be >= 0"),
    ("min-lr-ratio", lambda tmp: ["--min-lr-ratio", "2"], "schedule.min_lr_ratio must lie in [0, 1]"),
    ("lora-rank-negative", lambda tmp: ["--lora-rank", "-1"], "train.lora_rank=-1 must be >= 0"),
    ("peak-tflops-0", lambda tmp: ["--peak-tflops", "0"], "log.peak_tflops=0.0 must be a positive number"),
    ("vocab-0", lambda tmp: ["--vocab-size", "0"], "model.vocab_size=0 must be positive"),
    ("unknown-option", lambda tmp: ["--lrate", "1"], "unknown option --lrate 1"),
    ("resume-missing", lambda tmp: ["--resume", str(tmp / "nope")], "nope: no such checkpoint folder"),
    ("overwrite-and-resume", lambda tmp: ["--overwrite", "--resume", "auto"],
     "checkpoint.overwrite starts a fresh run and checkpoint.resume continues one"),
    ("init-from-missing", lambda tmp: ["--init-from", str(tmp / "no-model")], "no-model: no such model folder"),
    ("data-from-missing", lambda tmp: ["--data-from", str(tmp / "no-final")], "no-final: no such folder or file"),
    ("output-is-init", lambda tmp: ["--init-from", str(_model(tmp)), "--output-dir", str(tmp / "model")],
     "model is checkpoint.init_from="),
    ("output-inside-init", lambda tmp: ["--init-from", str(_model(tmp)), "--output-dir", str(tmp / "model" / "run")],
     "run is inside checkpoint.init_from="),
    ("output-contains-init", lambda tmp: ["--init-from", str(_model(tmp)), "--output-dir", str(tmp)],
     "contains checkpoint.init_from="),
    ("output-is-init-spelled-differently", lambda tmp: ["--init-from", str(_model(tmp)) + "/",
                                                        "--output-dir", str(tmp / "x" / ".." / "model")],
     "is checkpoint.init_from="),
]


@pytest.mark.parametrize(("make_argv", "message"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_writes_nothing(capsys, tmp_path, make_argv, message):
    extra = make_argv(tmp_path)
    argv = [*TINY, "--output-dir", str(tmp_path / "out"), *extra]  # a later --output-dir in `extra` wins
    before = tree(tmp_path)
    capsys.readouterr()  # what setting up the case printed
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err and not captured.out
    assert tree(tmp_path) == before  # nothing created, nothing changed


def test_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) >= 20


# ---- damage: fall back to the newest checkpoint that verifies ------------------------------------------------------


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """A run of the reference config that crashed while saving step 6: complete checkpoints 2 and 4."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    result = run(pretrain_cmd(out), **{SAVE_HOOK_ENV: "crash@6"})
    assert result.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [STEP2, STEP4, "step-00000006.tmp"]
    return out


@pytest.fixture
def damaged_run(crashed, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(crashed, out)
    return out


def _truncate_weights(folder: Path) -> None:
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(1000)


def _garble_train_state(folder: Path) -> None:
    (folder / "train_state.json").write_text('{"step": 4, "tok')


DAMAGE = [
    ("truncated-weights", _truncate_weights, "model.safetensors has 1000 bytes, "),
    ("missing-optimizer", lambda f: (f / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    ("unreadable-train-state", _garble_train_state,
     "train_state.json has 16 bytes, "),
    ("missing-data-state", lambda f: (f / "data_state_rank0.json").unlink(), "data_state_rank0.json is missing"),
]


def assert_same_as_reference(out: Path, ref: Path) -> None:
    assert step_losses(out) == step_losses(ref)  # bitwise on CPU
    ours, theirs = load_file(out / "final" / "model.safetensors"), load_file(ref / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(("damage", "problem"), [case[1:] for case in DAMAGE], ids=[case[0] for case in DAMAGE])
def test_resume_auto_skips_a_damaged_checkpoint(reference, damaged_run, damage, problem):  # noqa: F811
    out = damaged_run
    damage(out / "checkpoints" / STEP4)
    assert problem in checkpoint_problem(out / "checkpoints" / STEP4)
    if damage is DAMAGE[1][1]:  # and a crash mid-write left a partial last line in metrics.jsonl
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 7, "tokens": 89')
    result = run(pretrain_cmd(out, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "skipping damaged checkpoint" in line]
    assert len(skipped) == 1 and f"{out / 'checkpoints' / STEP4}: {problem}" in skipped[0], skipped
    assert f"resumed from {out / 'checkpoints' / STEP2} at step 2" in result.stderr
    assert_same_as_reference(out, reference)


def test_explicit_resume_of_a_damaged_checkpoint_names_the_file(damaged_run):
    out = damaged_run
    (out / "checkpoints" / STEP4 / "optimizer.bin").unlink()
    before = tree(out)
    result = run(pretrain_cmd(out, "--resume", str(out / "checkpoints" / STEP4)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: --resume {out / 'checkpoints' / STEP4}: damaged checkpoint: optimizer.bin is missing; resume from "
        f"an older step-N folder or use --resume auto, which skips damaged checkpoints"]
    assert tree(out) == before


def test_process_count_mismatch_is_not_blamed_on_a_missing_data_state(damaged_run, tmp_path):
    folder = damaged_run / "checkpoints" / STEP4
    (folder / "data_state_rank0.json").unlink()
    assert checkpoint_problem(folder) == "data_state_rank0.json is missing"
    # A checkpoint written before the manifest (legacy marker): the same answer.
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": 4}))
    assert checkpoint_problem(folder) == "data_state_rank0.json is missing"


# ---- used output folders and run ids -------------------------------------------------------------------------------


def test_fresh_run_in_a_used_folder_is_refused(damaged_run):
    out = damaged_run
    before = tree(out)
    result = run(pretrain_cmd(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {out} already holds a run (2 checkpoint(s) in checkpoints/) that a fresh run would destroy; pass "
        f"--resume auto to continue it, --overwrite to replace it (kept until the new run's first checkpoint is "
        f"complete), or another --output-dir"]
    assert tree(out) == before


def test_overwrite_keeps_the_old_run_until_the_first_new_checkpoint(reference, damaged_run):  # noqa: F811
    out = damaged_run
    old_id = json.loads((out / RUN_RECORD).read_text())["run_id"]
    old = tree(out)
    # The new run dies while saving its first checkpoint: the old run is still there, moved aside.
    result = run(pretrain_cmd(out, "--overwrite"), **{SAVE_HOOK_ENV: "crash@2"})
    assert result.returncode != 0
    [aside] = out.glob(REPLACED_PREFIX + "*")
    assert tree(aside) == old
    assert not list((out / "checkpoints").glob("step-????????"))
    # Again with --overwrite: once its first checkpoint is complete the old run is deleted; the result is exactly
    # a fresh run's.
    result = run(pretrain_cmd(out, "--overwrite"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.glob(REPLACED_PREFIX + "*")) and f"deleted the replaced run {aside}" in result.stderr
    assert json.loads((out / RUN_RECORD).read_text())["run_id"] != old_id
    assert_same_as_reference(out, reference)


def test_another_runs_checkpoints_are_neither_resumed_nor_pruned(reference, damaged_run):  # noqa: F811
    out = damaged_run
    ckpts = out / "checkpoints"
    foreign = {}
    for source, name in ((STEP4, "step-00000008"), (STEP2, "step-00000001")):  # newer and older than ours
        shutil.copytree(ckpts / source, ckpts / name)
        marker = json.loads((ckpts / name / COMPLETE_MARKER).read_text())
        (ckpts / name / COMPLETE_MARKER).write_text(json.dumps({**marker, "run_id": "f" * 32}))
        foreign[name] = tree(ckpts / name)
    result = run(pretrain_cmd(out, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ignoring checkpoint {ckpts / 'step-00000008'}: it belongs to run {'f' * 32}" in result.stderr
    assert f"resumed from {ckpts / STEP4} at step 4" in result.stderr
    assert_same_as_reference(out, reference)
    assert {name: tree(ckpts / name) for name in foreign} == foreign  # untouched, although keep_last is 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001", STEP4, "step-00000006", "step-00000008"]


def test_checkpoints_from_before_run_ids_are_adopted(reference, damaged_run):  # noqa: F811
    out = damaged_run
    (out / RUN_RECORD).unlink()
    for name in (STEP2, STEP4):  # markers as written before the manifest and run ids
        (out / "checkpoints" / name / COMPLETE_MARKER).write_text(json.dumps({"step": int(name[5:])}))
    result = run(pretrain_cmd(out, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / STEP4} at step 4" in result.stderr
    assert json.loads((out / RUN_RECORD).read_text())["adopted_unnamed_checkpoints"] is True
    assert_same_as_reference(out, reference)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [STEP4, "step-00000006"]  # step 2 pruned


# ---- metrics.jsonl after a crash mid-write -------------------------------------------------------------------------


def test_partial_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    MetricsLog(path, resumed_step=1).write({"step": 2, "loss": 1.25})
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.25}]
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl, line 2: not a JSON metrics record"):
        read_metrics(path)  # only the last line can be partial
