"""Final export: a plain Hugging Face folder (safetensors, config, generation config, tokenizer, training.json,
model card) that `AutoModelForCausalLM.from_pretrained` and `growth/stack.py --src` accept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from growlm.atomic import atomic_dir, write_json
from growlm.completep.model import is_completep, save_plain

DATA_POSITION = "data_state.json"  # where the data stream stopped; `--data-from` continues from it


def read_data_position(path: str | Path) -> dict:
    """The data position saved with a finished run (`final/` or its `data_state.json`)."""
    path = Path(path)
    path = path / DATA_POSITION if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"--data-from {path}: no {DATA_POSITION} there; pass the final/ folder of a growlm run "
                         "(or its data_state.json), or leave --data-from unset to start at sample 0")
    return json.loads(path.read_text())


def export_final(accelerator, model, tokenizer, out_dir: Path, *, training: dict, lora: bool,
                 data_position: dict, repo_id: str | None = None, fold: Callable[[dict], dict] | None = None) -> Path:
    """Write `out_dir` atomically (collective under FSDP: every rank must call it); `fold` maps the full state dict
    to plain-Llama weights (a masked-growth ramp still running)."""
    state_dict = None if lora else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        if fold is not None:
            state_dict = fold(state_dict)
        from growlm.cards import (
            write_model_card,  # imported late: it pulls in the eval stack
        )

        with atomic_dir(out_dir) as tmp:
            unwrapped = accelerator.unwrap_model(model)
            if lora:
                # Fold the adapters into plain Llama weights, so the export needs no peft to load.
                unwrapped.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
            elif is_completep(unwrapped):  # multipliers folded in: a plain Llama plus parameterization.json
                save_plain(unwrapped, tmp, state_dict=state_dict)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "training.json", training)
            write_json(tmp / DATA_POSITION, data_position)
            write_model_card(tmp, training=training, repo_id=repo_id)
    accelerator.wait_for_everyone()
    return out_dir
