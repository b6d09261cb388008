"""Model cards (`README.md` with Hub metadata) for pretrained and grown models, rendered offline.

The card is built from the model folder's own records: `config.json` (architecture), `growth.json`
(written by growth), `training.json` (written by pretraining) and `eval_results.json` (written by
`growlm.eval`). Any record can be passed in instead. Fields a record lacks are reported as missing in
the card ("not evaluated yet", "not recorded"), never invented.

Keys read from the records (others are shown verbatim in the card's "full record" blocks):
- growth: `operator`, `layer_map`, `g`, `source` (repo id or path), `source_revision`, `source_commit`,
  `source_tokens` (d, tokens the source was trained on before growth; else derived as
  training `total_tokens - tokens`), `noise`, `seed`.
- training: `dataset` (Hub id or local folder), `tokens` (tokens this model was trained on, after growth
  for grown models), `total_tokens` (base included), `flops`, `gpu_hours`, `hardware`,
  `hyperparameters` (a flat dict).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import AutoConfig, PretrainedConfig

from growlm.atomic import write_text
from growlm.eval.results import ACCURACY_METRICS, PERPLEXITY_METRICS, RESULTS_FILENAME
from growlm.modeling import count_parameters, head_dim

TEMPLATES_DIR = Path(str(resources.files("growlm.cards").joinpath("templates")))  # package data; model_cards/ links here
GROWN_TEMPLATE = "grown.md"
PRETRAINED_TEMPLATE = "pretrained.md"
CARD_FILENAME = "README.md"
BASE_TAGS = ["growlm", "llama", "text-generation"]
GROWN_TAGS = ["model-growth"]
HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
# The Hub's relations are adapter, merge, quantized and finetune: a grown model is full weights trained on from
# the base's, which the Hub's model tree lists as a finetune.
BASE_MODEL_RELATION = "finetune"


def write_model_card(
    model_dir: Path,
    *,
    growth: dict | None = None,
    training: dict | None = None,
    eval_results: dict | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    loss_curve: str | None = None,
) -> Path:
    """Render the card for `model_dir` and write it to `model_dir/README.md` (atomically); returns that path.

    Records not passed are read from `growth.json`, `training.json` and `eval_results.json` in
    `model_dir` when present. `base_model` defaults to the growth record's `source`; `loss_curve` is
    an image path relative to the card (or a URL).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} has no config.json; pass a saved Hugging Face model folder")
    growth = growth if growth is not None else _read_optional_json(model_dir / "growth.json")
    training = training if training is not None else _read_optional_json(model_dir / "training.json")
    if eval_results is None:
        eval_results = _read_optional_json(model_dir / RESULTS_FILENAME)
    card = render_model_card(
        AutoConfig.from_pretrained(model_dir, trust_remote_code=False),
        model_name=repo_id.split("/")[-1] if repo_id else model_dir.name,
        load_id=repo_id or str(model_dir),
        growth=growth,
        training=training,
        eval_results=eval_results,
        base_model=base_model,
        loss_curve=loss_curve,
    )
    path = model_dir / CARD_FILENAME
    write_text(path, str(card))
    return path


def render_model_card(
    config: PretrainedConfig,
    *,
    model_name: str,
    load_id: str,
    growth: dict | None = None,
    training: dict | None = None,
    eval_results: dict | None = None,
    base_model: str | None = None,
    loss_curve: str | None = None,
) -> ModelCard:
    """The card as a `ModelCard` (metadata + body); pure apart from reading the template file."""
    training = training or {}
    if growth and base_model is None:
        base_model = growth.get("source")
    hub_base = base_model if _is_hub_id(base_model) else None
    metadata = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=card_tags(growth),
        datasets=[dataset_name(training["dataset"])] if training.get("dataset") else None,
        base_model=hub_base,
        base_model_relation=BASE_MODEL_RELATION if hub_base else None,
        model_name=model_name,
        eval_results=eval_results_for_metadata(eval_results) or None,
    )
    template = TEMPLATES_DIR / (GROWN_TEMPLATE if growth else PRETRAINED_TEMPLATE)
    if not template.is_file():
        raise ValueError(f"model card template {template} is missing; reinstall growlm")
    return ModelCard.from_template(
        metadata,
        template_path=str(template),
        title=model_name,
        load_id=load_id,
        architecture_table=architecture_table(config),
        growth_section=growth_section(growth or {}, training, base_model),
        data_section=data_section(training),
        hyperparameters_section=hyperparameters_section(training),
        loss_curve_section=f"![Training loss]({loss_curve})" if loss_curve else "No loss curve was attached.",
        evaluation_section=evaluation_section(eval_results),
        compute_section=compute_section(training),
    )


def card_tags(growth: dict | None) -> list[str]:
    """Hub tags: always growlm/llama; for grown models also model-growth and the operator (e.g. g_stack)."""
    tags = list(BASE_TAGS)
    if growth:
        tags += GROWN_TAGS
        if growth.get("operator"):  # "G_split+G_stack" -> g_split, g_stack
            tags += [part.lower() for part in str(growth["operator"]).split("+")]
    return tags


def architecture_table(config: PretrainedConfig) -> str:
    """Markdown table of the Llama shape and its parameter counts."""
    counts = count_parameters(config)
    rows = [
        ("layers", config.num_hidden_layers),
        ("hidden size", config.hidden_size),
        ("attention heads (q / kv)", f"{config.num_attention_heads} / {config.num_key_value_heads}"),
        ("head dim", head_dim(config)),
        ("intermediate (SwiGLU)", config.intermediate_size),
        ("vocabulary", config.vocab_size),
        ("context length", config.max_position_embeddings),
        ("tied embeddings", bool(config.tie_word_embeddings)),
        ("parameters (total)", f"{counts['total']:,}"),
        ("parameters (non-embedding)", f"{counts['non_embedding']:,}"),
    ]
    return _table(("", "value"), rows)


def dataset_name(dataset: str) -> str:
    """A Hub dataset id as is; a local folder by its name (e.g. `slimpajama-tiny`)."""
    return dataset if _is_hub_id(dataset) else Path(dataset).name


def growth_timing(growth: dict, training: dict) -> int | float | None:
    """d: tokens the source was trained on before growth, recorded or derived from the training totals."""
    if growth.get("source_tokens") is not None:
        return growth["source_tokens"]
    if training.get("total_tokens") is not None and training.get("tokens") is not None:
        return training["total_tokens"] - training["tokens"]
    return None


def growth_section(growth: dict, training: dict, base_model: str | None) -> str:
    """How the model was grown: source, operator, layer map, g, d, tokens after growth, plus the full record."""
    layer_map = growth.get("layer_map")
    rows = [
        ("source model", base_model or "not recorded"),
        ("source revision", growth.get("source_revision") or "not recorded"),
        ("source commit", growth.get("source_commit") or "not recorded"),
        ("operator", growth.get("operator") or "not recorded"),
        ("growth factor g", growth.get("g") or "not recorded"),
        ("layer map (stacking list)", f"`{layer_map}`" if layer_map is not None else "not recorded"),
        ("growth timing d (source tokens before growth)", _tokens(growth_timing(growth, training))),
        ("tokens trained after growth", _tokens(training.get("tokens"))),
        ("noise", growth.get("noise") if growth.get("noise") is not None else "not recorded"),
        ("seed", growth.get("seed") if growth.get("seed") is not None else "not recorded"),
    ]
    record = json.dumps(growth, indent=1, sort_keys=True, default=str)
    return (
        _table(("", "value"), rows)
        + "\n\n<details><summary>Full growth record (<code>growth.json</code>)</summary>\n\n```json\n"
        + record
        + "\n```\n\n</details>"
    )


def data_section(training: dict) -> str:
    """Training data and token counts."""
    if not training:
        return "Training data and token counts were not recorded for this model."
    rows = [
        ("dataset", training.get("dataset") or "not recorded"),
        ("tokens trained (this model)", _tokens(training.get("tokens"))),
        ("tokens in total (base model included)", _tokens(training.get("total_tokens"))),
    ]
    return _table(("", "value"), rows)


def hyperparameters_section(training: dict) -> str:
    """The training hyperparameters as a key/value table."""
    hyperparameters = training.get("hyperparameters")
    if not hyperparameters:
        return "Hyperparameters were not recorded for this model."
    return _table(("hyperparameter", "value"), sorted((str(k), v) for k, v in hyperparameters.items()))


def compute_section(training: dict) -> str:
    """GPU-hours, FLOPs and hardware, as recorded by training."""
    rows = [
        ("GPU-hours", training.get("gpu_hours")),
        ("training FLOPs (6·N·D, base included)", _flops(training.get("flops"))),
        ("hardware", training.get("hardware")),
    ]
    if all(value is None for _, value in rows):
        return "Compute was not recorded for this model."
    return _table(("", "value"), [(name, "not recorded" if v is None else v) for name, v in rows])


def evaluation_section(eval_results: dict | None) -> str:
    """Per-task table with standard errors, or a plain statement that the model is not evaluated yet."""
    if not eval_results or not eval_results.get("tasks"):
        return "Not evaluated yet."
    rows = []
    for task, entry in sorted(eval_results["tasks"].items()):
        rows.append((
            task,
            entry.get("n", "?"),
            *(_with_se(entry, metric) for metric in ACCURACY_METRICS),
            *(_number(entry.get(metric)) for metric in PERPLEXITY_METRICS),
        ))
    average = eval_results.get("average")
    if average:
        blanks = ("",) * (len(ACCURACY_METRICS) - 1 + len(PERPLEXITY_METRICS))
        rows.append((f"**average acc** ({len(average['tasks'])} tasks)", "", _with_se(average, "acc"), *blanks))
    header = ("task", "n", *(f"{metric} ± SE" for metric in ACCURACY_METRICS), *PERPLEXITY_METRICS)
    settings = (
        f"lm-evaluation-harness {eval_results.get('harness_version', '?')}, "
        f"{eval_results.get('num_fewshot', 0)}-shot, dtype {eval_results.get('dtype', '?')}, "
        f"batch size {eval_results.get('batch_size', '?')}"
    )
    if eval_results.get("limit"):
        settings += f", limited to {eval_results['limit']} samples per task"
    return (
        f"{settings}. SE = sqrt(p(1-p)/n); differences under about 2 SE are not evidence.\n\n"
        + _table(header, rows)
    )


def eval_results_for_metadata(eval_results: dict | None) -> list[EvalResult]:
    """`model-index` entries: one `EvalResult` per task and metric."""
    if not eval_results:
        return []
    source = f"lm-evaluation-harness {eval_results.get('harness_version', '')}".strip()
    results = []
    for task, entry in sorted(eval_results.get("tasks", {}).items()):
        for metric in ACCURACY_METRICS + PERPLEXITY_METRICS:
            if metric not in entry:
                continue
            results.append(EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type=entry.get("dataset") or task,
                dataset_name=task,
                # the task name tells apart tasks built on one dataset (the Hub groups results by dataset+config)
                dataset_config=entry.get("dataset_config") or task,
                dataset_split=entry.get("split"),
                metric_type=metric,
                metric_value=round(float(entry[metric]), 6),
                metric_name=metric,
                source_name=source,
                source_url=HARNESS_URL,
            ))
    return results


def _read_optional_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_hub_id(name: str | None) -> bool:
    """A Hub repo id looks like `org/name` and is not a local path."""
    return bool(name) and name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/"))


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _with_se(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "–"
    return f"{100 * entry[metric]:.2f} ± {100 * entry[f'{metric}_se']:.2f}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _tokens(value: int | float | None) -> str:
    return "not recorded" if value is None else f"{value:,.0f} ({value / 1e9:.3g}B)"


def _flops(value: float | None) -> str | None:
    return None if value is None else f"{value:.3e}"
