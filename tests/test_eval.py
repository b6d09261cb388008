"""lm-eval evaluation on the offline held-out tasks, and the task files themselves (training.md §11 test 10)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from growlm.assets import DEFAULT_DATA_DIR
from growlm.eval.build import MC_FILENAME, PPL_FILENAME, TASKS_DIR, TaskBuildConfig, build_task_files, read_documents
from growlm.eval.results import standard_error
from growlm.eval.run import EvalConfig, evaluate_model
from growlm.eval.task_sets import OFFLINE_TASKS, PAPER_TASKS, materialize_offline_tasks, select_tasks
from scripts.evaluate import main as evaluate_main
from tests.conftest import save_tiny_llama

LIMIT = 6


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Two offline evaluations of one tiny model: via the script (default output) and via the library."""
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("eval") / "tiny", with_tokenizer=True)
    evaluate_main(["--model", str(model_dir), "--tasks", "offline", "--limit", str(LIMIT), "--batch-size", "8"])
    first = json.loads((model_dir / "eval_results.json").read_text())
    second, _ = evaluate_model(EvalConfig(model=str(model_dir), tasks="offline", limit=LIMIT, batch_size=8,
                                          output=model_dir / "again.json"))
    return first, second, model_dir


def test_offline_evaluation_gives_finite_numbers_with_standard_errors(evaluated):
    import lm_eval

    record, _, _ = evaluated
    assert record["harness_version"] == lm_eval.__version__
    assert (record["dtype"], record["batch_size"], record["num_fewshot"], record["limit"]) == ("float32", 8, 0, LIMIT)
    assert set(record["tasks"]) == set(OFFLINE_TASKS)
    mc = record["tasks"]["slimpajama_continuation"]
    assert mc["n"] == LIMIT
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= mc[metric] <= 1.0
        assert mc[f"{metric}_se"] == pytest.approx(math.sqrt(mc[metric] * (1 - mc[metric]) / LIMIT), rel=1e-12)
    ppl = record["tasks"]["slimpajama_heldout_ppl"]
    # An untrained 32k-vocab model is near uniform: bits per byte far above 1, but finite.
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert math.isfinite(ppl[metric]) and ppl[metric] > 1.0
    assert ppl["bits_per_byte"] == pytest.approx(math.log2(ppl["byte_perplexity"]), rel=1e-9)


def test_offline_evaluation_is_reproducible(evaluated):
    first, second, _ = evaluated
    assert first["tasks"] == second["tasks"]


def test_model_card_reports_the_written_results(evaluated):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from growlm.cards import write_model_card

    record, _, model_dir = evaluated
    card = ModelCard.load(write_model_card(model_dir))
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    reported = {(r.dataset_name, r.metric_type): r.metric_value for r in results}
    acc = record["tasks"]["slimpajama_continuation"]["acc"]
    assert reported[("slimpajama_continuation", "acc")] == pytest.approx(acc, abs=1e-6)
    assert len(reported) == 5
    assert f"lm-evaluation-harness {record['harness_version']}, 0-shot" in card.text


def test_shipped_task_files_rebuild_identically(tmp_path):
    written = build_task_files(tmp_path)
    assert set(written) == {PPL_FILENAME, MC_FILENAME}
    for name, path in written.items():
        assert path.read_bytes() == (TASKS_DIR / name).read_bytes(), f"{name} differs; run scripts/build_eval_tasks.py"


def test_task_yamls_parse_and_point_at_existing_data(tmp_path):
    for name in OFFLINE_TASKS:
        config = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
        assert config["task"] == name and config["dataset_path"] == "json"
        assert (TASKS_DIR / config["dataset_kwargs"]["data_files"]["test"]).is_file()
    materialized = materialize_offline_tasks(tmp_path)
    for name in OFFLINE_TASKS:
        path = yaml.safe_load((materialized / f"{name}.yaml").read_text())["dataset_kwargs"]["data_files"]["test"]
        assert path.startswith("/") and path.endswith(".jsonl")


def test_continuation_answer_is_the_real_next_text_and_distractors_come_from_other_documents():
    config = TaskBuildConfig()
    documents = {doc["meta"]["source"]: " ".join(doc["text"].split())
                 for doc in read_documents(DEFAULT_DATA_DIR, "test", config.dropped_sets)}
    rows = _rows(MC_FILENAME)
    assert len(rows) >= 50
    assert len({row["label"] for row in rows}) == config.num_choices  # the answer is not always in one slot
    for row in rows:
        source = documents[row["id"].rsplit("#", 1)[0]]
        choices, label = row["choices"], row["label"]
        assert len(choices) == config.num_choices and len(set(choices)) == config.num_choices
        assert all(len(choice.split()) == config.continuation_words for choice in choices)
        assert len(row["context"].split()) == config.context_words
        assert f"{row['context']} {choices[label]}" in source
        for index, choice in enumerate(choices):
            if index != label:
                assert any(choice in text for key, text in documents.items() if text is not source)


def test_perplexity_rows_are_truncated_held_out_documents_without_github():
    rows = _rows(PPL_FILENAME)
    documents = {doc["meta"]["source"]: doc for doc in read_documents(DEFAULT_DATA_DIR, "test")}
    assert rows and all(row["set"] != "RedPajamaGithub" for row in rows)
    assert len(rows) == sum(doc["meta"]["redpajama_set_name"] != "RedPajamaGithub" for doc in documents.values())
    for row in rows:
        assert len(row["text"]) <= TaskBuildConfig().ppl_max_chars
        assert documents[row["source"]]["text"].startswith(row["text"])


def test_task_selection(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert select_tasks("auto").names == OFFLINE_TASKS
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert select_tasks("auto").names == PAPER_TASKS and len(PAPER_TASKS) == 8
    assert select_tasks("paper").names == PAPER_TASKS
    custom = select_tasks("arc_easy, slimpajama_continuation")
    assert custom.names == ("arc_easy", "slimpajama_continuation")
    assert custom.needs_builtin_tasks and custom.needs_offline_tasks
    with pytest.raises(ValueError, match="--tasks is empty"):
        select_tasks(" , ")


def test_bad_evaluation_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="dtype 'float16'.*batch size"):
        EvalConfig(model="m", dtype="float16", batch_size=0)
    with pytest.raises(ValueError, match="device"):
        EvalConfig(model="m", device="tpu")
    with pytest.raises(ValueError, match="local folder; drop --revision"):
        EvalConfig(model=str(tmp_path), revision="main")
    with pytest.raises(SystemExit):
        evaluate_main(["--model", "m", "--dtype", "int8"])


def test_standard_error():
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert standard_error(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="n > 0"):
        standard_error(0.5, 0)


def test_hub_model_id_and_revision_are_evaluated(hub_server, tmp_path):
    """`--model org/name --revision R` loads through the Hub (a local test server), not a local folder."""
    model_dir = save_tiny_llama(tmp_path / "upload", with_tokenizer=True, seed=3)
    hub_server.add_repo("growlm-test/eval-tiny", model_dir, revision="v1")
    output = tmp_path / "hub.json"
    record, path = evaluate_model(EvalConfig(model="growlm-test/eval-tiny", revision="v1", tasks="slimpajama_continuation",
                                             limit=2, batch_size=8, output=output))
    assert path == output and json.loads(output.read_text()) == record
    assert (record["model"], record["revision"], record["task_set"]) == ("growlm-test/eval-tiny", "v1", "custom")
    assert record["tasks"]["slimpajama_continuation"]["n"] == 2
    with pytest.raises(ValueError, match="revision no-such-branch: revision not found"):
        evaluate_model(EvalConfig(model="growlm-test/eval-tiny", revision="no-such-branch",
                                  tasks="slimpajama_continuation", limit=2, output=tmp_path / "x.json"))
