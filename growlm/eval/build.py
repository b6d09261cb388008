"""Build the offline evaluation data from the vendored held-out TEST split (deterministic).

Two lm-eval tasks read these files (YAMLs in `growlm/eval/tasks/`):
- `slimpajama_heldout_ppl`: one row per held-out document, `text` = its first `ppl_max_chars`
  characters, cut back to the last whitespace so no word is split; rolling-loglikelihood perplexity.
- `slimpajama_continuation`: 4-way multiple choice. Each document's whitespace-normalised words are cut
  into consecutive windows of `context_words + continuation_words`; the context is the first part, the
  true answer the next `continuation_words` words, and each of the 3 distractors is a span of the same
  number of words from a different, randomly chosen held-out document. The answer position is random.

GitHub documents are dropped, as in the pretraining recipe (training.md §1). Randomness comes from one
`random.Random(seed)` consumed in a fixed order, so rebuilding gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import zstandard

from growlm.assets import DEFAULT_DATA_DIR

TASKS_DIR = Path(str(resources.files("growlm.eval").joinpath("tasks")))  # package data
PPL_FILENAME = "slimpajama_heldout_ppl.jsonl"
MC_FILENAME = "slimpajama_continuation.jsonl"


@dataclass(frozen=True)
class TaskBuildConfig:
    """How the offline task data is derived from a SlimPajama-layout split."""

    data_dir: Path = DEFAULT_DATA_DIR
    split: str = "test"
    dropped_sets: tuple[str, ...] = ("RedPajamaGithub",)
    ppl_max_chars: int = 2000
    context_words: int = 48
    continuation_words: int = 12
    max_windows_per_document: int = 8
    num_choices: int = 4
    seed: int = 20240523

    def __post_init__(self):
        if self.num_choices < 2:
            raise ValueError(f"num_choices must be at least 2, got {self.num_choices}")
        if min(self.ppl_max_chars, self.context_words, self.continuation_words, self.max_windows_per_document) < 1:
            raise ValueError("ppl_max_chars, context_words, continuation_words and max_windows_per_document must be >= 1")


def read_documents(data_dir: Path, split: str, dropped_sets: tuple[str, ...] = ()) -> list[dict]:
    """Rows of `<data_dir>/<split>/chunk*/*.jsonl.zst` in sorted file order, minus the dropped set names."""
    files = sorted((Path(data_dir) / split).glob("chunk*/*.jsonl.zst"))
    if not files:
        raise ValueError(f"no {split}/chunk*/*.jsonl.zst files under {data_dir}; pass a SlimPajama-layout folder")
    rows = []
    for path in files:
        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                if line.strip():
                    rows.append(json.loads(line))
    return [row for row in rows if row["meta"]["redpajama_set_name"] not in dropped_sets]


def truncate_at_whitespace(text: str, max_chars: int) -> str:
    """`text` if short enough, else its first `max_chars` characters cut back to the last whitespace."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:cut] if cut > 0 else head).rstrip()


def perplexity_rows(documents: list[dict], config: TaskBuildConfig) -> list[dict]:
    """Rows of the held-out perplexity task."""
    return [
        {"source": doc["meta"]["source"], "set": doc["meta"]["redpajama_set_name"],
         "text": truncate_at_whitespace(doc["text"], config.ppl_max_chars)}
        for doc in documents
    ]


def continuation_rows(documents: list[dict], config: TaskBuildConfig) -> list[dict]:
    """Rows of the multiple-choice continuation task (`context`, `choices`, `label`)."""
    rng = random.Random(config.seed)
    words = [doc["text"].split() for doc in documents]
    k, window = config.continuation_words, config.context_words + config.continuation_words
    rows = []
    for index, doc in enumerate(documents):
        others = [j for j in range(len(documents)) if j != index and len(words[j]) >= k]
        if len(others) < config.num_choices - 1:
            raise ValueError(f"need {config.num_choices - 1} other documents with >= {k} words, found {len(others)}")
        starts = range(0, len(words[index]) - window + 1, window)
        for window_index, start in enumerate(list(starts)[: config.max_windows_per_document]):
            context = " ".join(words[index][start : start + config.context_words])
            answer = " ".join(words[index][start + config.context_words : start + window])
            distractors = [_span(words[j], k, rng) for j in rng.sample(others, config.num_choices - 1)]
            label = rng.randrange(config.num_choices)
            rows.append({
                "id": f"{doc['meta']['source']}#{window_index}",
                "context": context,
                "choices": distractors[:label] + [answer] + distractors[label:],
                "label": label,
            })
    return rows


def _span(words: list[str], length: int, rng: random.Random) -> str:
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start : start + length])


def to_jsonl(rows: list[dict]) -> str:
    """Canonical JSON Lines: sorted keys, UTF-8 kept, `\\n` line ends."""
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)


def build_task_files(out_dir: Path = TASKS_DIR, config: TaskBuildConfig = TaskBuildConfig()) -> dict[str, Path]:
    """Write both task data files into `out_dir` (each via a temporary file and a rename)."""
    documents = read_documents(config.data_dir, config.split, config.dropped_sets)
    outputs = {
        PPL_FILENAME: to_jsonl(perplexity_rows(documents, config)),
        MC_FILENAME: to_jsonl(continuation_rows(documents, config)),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in outputs.items():
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8", newline="\n")
        tmp.replace(out_dir / name)
        written[name] = out_dir / name
    return written
