"""Grow a Llama checkpoint folder into a new one, streaming tensors from a lazy reader to a sharded writer.

Everything is validated (source, tokenizer, plan) before any tensor is built; the output is assembled
in a temporary folder next to `out` and renamed into place only when complete, so a failure leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaConfig

import growlm
from growlm.atomic import atomic_dir, check_apart, recover, write_json
from growlm.completep import growth as completep_growth
from growlm.growth.lit import convert_lit_checkpoint
from growlm.growth.masked import MaskedGrowth, masked_growth_of
from growlm.growth.operators import GrowthOptions, GrowthPlan, plan_growth, target_config
from growlm.growth.safetensors_io import ZEROS, LazySafetensorsReader, OutputTensor, write_safetensors
from growlm.growth.target import check_source_shapes
from growlm.hub_push import check_push_target
from growlm.growth.types import Builder, Copy, Zeros
from growlm.modeling import count_parameters, layer_tensor_shapes, tensor_shapes
from growlm.source import TOKENIZER_FILES, ResolvedSource, has_tokenizer, resolve_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROBE_MAX_PARAMETERS = 200_000_000
PROBE_SHAPE = (2, 16)
PROBE_SEED = 1234


def grow_checkpoint(
    src: str | Path,
    out: str | Path,
    options: GrowthOptions,
    *,
    revision: str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    command: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Grow `src` (local folder or Hub repo id) into the folder `out` and return `out`.

    `dtype` casts every output tensor (default: keep the source's); `command` is recorded in
    `growth.json`; `provenance` ({"path", "format"}) names the original source when `src` is a conversion.
    """
    out = Path(out)
    recover(out)
    if out.exists() and not overwrite:
        raise ValueError(f"output folder {out} already exists; pass --overwrite to replace it or choose another --out")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {list(DTYPES)}")
    if push_to_hub:  # fail before the (long) growth, not after it
        check_push_target(push_to_hub, "--push-to-hub")
    source = resolve_source(src, revision)
    check_apart(out, source.path, out_flag="--out", source_flag="--src")
    src_config = AutoConfig.from_pretrained(source.path, trust_remote_code=False)
    src_config, completep = completep_growth.read_source(source.path, src_config)
    check_tokenizer(source.path, src_config)
    reader = LazySafetensorsReader(source.path)
    check_source_shapes(src_config, {name: reader.shape(name) for name in reader.names})
    itemsize = DTYPES[dtype].itemsize if dtype else max(reader.dtype(name).itemsize for name in reader.names)
    check_disk_space(out, weight_bytes(target_config(src_config, options), itemsize))
    plan = plan_growth(src_config, reader.names, options)
    if completep is not None and masked_growth_of(plan.record) is not None:
        raise ValueError(f"{source.path} is a CompleteP model; masked growth (operator 'random') supports plain "
                         "Llama sources only; use 'stack', 'zero' or 'split'")
    if "learn" in plan.record and (completep is not None or provenance):
        raise ValueError("G_learn trains its operator from the source folder when pretraining starts, so the source "
                         "must be a plain Hugging Face Llama (not a lit checkpoint or a CompleteP model); convert it "
                         "first, or use another operator")
    if completep is not None:  # CompleteP source: new depth bookkeeping and the chosen correction
        plan = completep_growth.correct_plan(plan, src_config, completep, options.completep_correction)
    with disk_full_as_error(out), atomic_dir(out) as temp:
        with reader, ThreadPoolExecutor(1) as pool:
            hashing = pool.submit(reader.content_sha256)  # reads the source while it is copied (hashlib frees the GIL)
            write_weights(plan, reader, temp, dtype=DTYPES.get(dtype), max_shard_size=max_shard_size)
            source_sha256 = hashing.result()
            dtype_name = dtype or str(reader.dtype(reader.names[0])).removeprefix("torch.")
        write_config(plan.config, temp, dtype=dtype_name)
        write_generation_config(source.path, plan.config, temp)
        completep_growth.write_target(temp, plan)
        copy_tokenizer(source.path, temp)
        record = growth_record(source, options, plan, source_sha256=source_sha256, command=command,
                               provenance=provenance, dtype=dtype_name)
        record["max_abs_logit_delta"] = probe_logit_delta(source.path, temp, plan)
        write_json(temp / "growth.json", record)
        _write_card(temp, record, load_id=push_to_hub or str(out))
    if push_to_hub:
        from growlm.hub_push import push_folder  # lazy: only needed when publishing

        push_folder(out, push_to_hub)
    return out


def grow_lit_checkpoint(lit_path: str | Path, lit_config: LlamaConfig, out: str | Path, options: GrowthOptions,
                        **kwargs) -> Path:
    """Convert a prts / lit-gpt `.pth` to a temporary HF folder next to `out`, then grow it like `grow_checkpoint`."""
    out = Path(out)
    recover(out)
    check_apart(out, lit_path, out_flag="--out", source_flag="the lit checkpoint")
    if out.exists() and not kwargs.get("overwrite"):
        raise ValueError(f"output folder {out} already exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.lit-", dir=out.parent) as scratch:
        hf_dir = convert_lit_checkpoint(lit_path, lit_config, Path(scratch) / "hf",
                                        max_shard_size=kwargs.get("max_shard_size", "2GB"))
        provenance = {"path": str(lit_path), "format": "lit"}
        return grow_checkpoint(hf_dir, out, options, provenance=provenance, **kwargs)


def weight_bytes(config: LlamaConfig, itemsize: int) -> int:
    """Bytes of the weights `config` describes (closed form: cheap for any number of layers)."""
    per_layer = sum(math.prod(shape) for shape in layer_tensor_shapes(config).values())
    embeddings = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    return itemsize * (config.num_hidden_layers * per_layer + embeddings + config.hidden_size)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3g} GB ({nbytes} bytes)"


def check_disk_space(out: Path, need: int) -> None:
    """Refuse before writing when the grown weights cannot fit on the disk that will hold `out`."""
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ValueError(f"not enough disk space for {out}: the grown weights need about {_gb(need)} but {folder} "
                         f"has {_gb(free)} free; free some space, choose another --out or grow to a smaller target")


@contextlib.contextmanager
def disk_full_as_error(out: Path):
    """A full disk while writing `out` (its staging folder is already removed) as a one-line ValueError."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise ValueError(f"the disk filled up while writing {out}; nothing was kept. Free some space on "
                         f"{out.absolute().parent} or choose another --out") from None


def check_tokenizer(model_dir: Path, config: LlamaConfig) -> None:
    """The source's tokenizer (if any) must fit its embedding and agree on BOS/EOS ids."""
    if not has_tokenizer(model_dir):
        warnings.warn(f"source {model_dir} has no tokenizer files;"
                      " the grown folder will have none either", stacklevel=3)
        return
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"tokenizer in {model_dir} has {len(tokenizer)} tokens but config vocab_size="
                         f"{config.vocab_size}; the model cannot embed them. Use the model's own tokenizer")
    for role in ("bos", "eos"):
        tok_id, cfg_id = getattr(tokenizer, f"{role}_token_id"), getattr(config, f"{role}_token_id", None)
        if tok_id is not None and cfg_id is not None and tok_id not in _as_list(cfg_id):
            raise ValueError(f"tokenizer {role}_token_id={tok_id} but config {role}_token_id={cfg_id} in {model_dir}; "
                             "the tokenizer does not belong to this model")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def write_weights(plan: GrowthPlan, reader: LazySafetensorsReader, out_dir: Path, *,
                  dtype: torch.dtype | None, max_shard_size: int | str) -> None:
    """Write the target tensors in the plan's order into shards: unchanged source tensors are copied byte for
    byte, zero tensors written without being built, every other tensor built (and cast) only when written."""
    source_dtypes = {reader.dtype(name) for name in reader.names}

    def planned_dtype(name: str, builder: Builder) -> torch.dtype:
        if isinstance(builder, Copy):
            natural = reader.dtype(builder.source)
        elif isinstance(builder, Zeros):
            return planned_dtype(name, builder.like)
        elif len(source_dtypes) == 1:
            natural = next(iter(source_dtypes))  # every operator builds in its source tensor's dtype
        else:  # a mixed-dtype source: build once just to learn the dtype (rare)
            natural = builder(reader.get_tensor).dtype
        return dtype if dtype is not None and natural.is_floating_point else natural

    def content(builder: Builder, out_dtype: torch.dtype):
        if isinstance(builder, Copy) and reader.dtype(builder.source) == out_dtype:
            return reader.byte_range(builder.source)
        if isinstance(builder, Zeros):
            return ZEROS
        return lambda: builder(reader.get_tensor).to(out_dtype)

    shapes = tensor_shapes(plan.config)
    tensors = []
    for name, builder in plan.tensors.items():
        out_dtype = planned_dtype(name, builder)
        tensors.append(OutputTensor(name, out_dtype, tuple(shapes[name]), content(builder, out_dtype)))
    with one_torch_thread():
        write_safetensors(out_dir, tensors, max_shard_size=max_shard_size)


@contextlib.contextmanager
def one_torch_thread():
    """Run torch ops on one thread: builders work in small row blocks, where handing each op to a second thread
    costs more than it saves (on a busy 2-core machine, width growth took 8x the CPU time with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_config(config: LlamaConfig, out_dir: Path, *, dtype: str) -> None:
    """config.json for the grown shape; both `dtype` (transformers 5) and `torch_dtype` (4.x) are written."""
    config = LlamaConfig(**config.to_dict())
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(out_dir)
    path = out_dir / "config.json"
    fields = json.loads(path.read_text())
    fields["torch_dtype"] = fields["dtype"]
    path.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def write_generation_config(src_dir: Path, config: LlamaConfig, out_dir: Path) -> None:
    """The source's generation_config.json, else one derived from the config."""
    if (src_dir / "generation_config.json").is_file():
        shutil.copy(src_dir / "generation_config.json", out_dir / "generation_config.json")
    else:
        GenerationConfig.from_model_config(config).save_pretrained(out_dir)


def copy_tokenizer(src_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy(src_dir / name, out_dir / name)


def growth_record(source: ResolvedSource, options: GrowthOptions, plan: GrowthPlan, *, source_sha256: str,
                  command: str | None, provenance: dict | None, dtype: str) -> dict:
    """The `growth.json` record: source identity, operator and resolved options, plan details, tool version."""
    depth = plan.record.get("depth") or {}
    src_layers = plan.record["source_layers"]
    return {
        "source": (provenance or {}).get("path") or source.repo_id or str(source.path),
        "source_format": (provenance or {}).get("format", "hf"),
        "source_revision": source.revision,
        "source_commit": source.commit_sha,
        "source_sha256": source_sha256,
        "operator": operator_name(options),
        "layer_map": depth.get("layer_map"),
        "g": _ratio(plan.config.num_hidden_layers, src_layers),
        "noise": {"alpha": options.noise_alpha, "head": options.noise_head},
        "seed": options.seed,
        "connection_rate": depth.get("connection_rate"),
        "function_preserving": plan.record["function_preserving"],
        "masked_growth": masked_growth_of(plan.record),
        "dtype": dtype,
        "target_shape": {key: getattr(plan.config, key) for key in (
            "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")},
        "plan": plan.record,
        "learn": plan.record.get("learn"),  # G_learn: the operator-training phase `--init-from` runs first
        "growlm_version": growlm.__version__,
        "command": command,
    }


def _ratio(a: int, b: int) -> int | float:
    return a // b if a % b == 0 else a / b


def operator_name(options: GrowthOptions) -> str:
    """The paper's operator names, width first: e.g. "G_stack", "G_split+G_stack", "G_zero_width"."""
    width = {"split": "G_split", "zero": "G_zero_width", "random": "G_random_width", "learn": "G_learn_width"}
    depth = {"stack": "G_stack", "zero": "G_zero_depth", "random": "G_random_depth", "learn": "G_learn"}
    parts = [width.get(options.width_op, options.width_op)] if options.width_op else []
    if options.depth_op:
        parts.append(depth.get(options.depth_op, options.depth_op))
    return "+".join(parts)


@torch.no_grad()
def probe_logit_delta(src_dir: Path, out_dir: Path, plan: GrowthPlan) -> float | None:
    """max |logit_grown - logit_source| on a fixed random batch, for function-preserving growth of small models
    (masked growth: under its masks at t = 0)."""
    if not plan.record.get("function_preserving") or count_parameters(plan.config)["total"] >= PROBE_MAX_PARAMETERS:
        return None
    from transformers import AutoModelForCausalLM  # lazy: the model classes cost a second to import

    generator = torch.Generator().manual_seed(PROBE_SEED)
    ids = torch.randint(0, plan.config.vocab_size, PROBE_SHAPE, generator=generator)
    logits = []
    masked = masked_growth_of(plan.record)
    for folder in (src_dir, out_dir):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False).eval()
        if folder == out_dir and masked is not None:
            from growlm.train.ramp import Ramp  # lazy: the training side of masked growth

            Ramp(model, MaskedGrowth.from_dict(masked, "growth plan"), device=torch.device("cpu"))
        logits.append(model(input_ids=ids, use_cache=False).logits)
    return float((logits[0] - logits[1]).abs().max())


def _write_card(model_dir: Path, record: dict, *, load_id: str) -> None:
    """The model card, named and loadable as the final folder (or Hub repo), not the temporary one."""
    from growlm.cards import (
        write_model_card,  # lazy: the card module pulls in the eval package
    )

    write_model_card(model_dir, growth=record, repo_id=load_id)

