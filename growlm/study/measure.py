"""Two reference numbers for a study: the tokenizer's unigram entropy on the train split (the loss of a model
that ignores context) and the standard error of one validation-loss measurement."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path

import torch

from growlm.data import load_tokenizer, validation_blocks
from growlm.data.config import DataConfig
from growlm.data.tokenizer import encode_documents
from growlm.data.tokenizer_train import corpus_texts


def unigram_entropy(cfg: DataConfig) -> float:
    """Entropy (nats) of the token frequencies of the filtered train split, EOS after each document included."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    counts: Counter[int] = Counter()
    texts = list(corpus_texts(cfg, cfg.train_split))
    for start in range(0, len(texts), 64):
        for ids in encode_documents(tokenizer, texts[start:start + 64]):
            counts.update(ids)
    total = sum(counts.values())
    return -sum(n / total * math.log(n / total) for n in counts.values())


def study_blocks(cfg: DataConfig) -> torch.Tensor:
    """The fixed validation blocks `pretrain.py` evaluates on, `[n, seq_len + 1]`."""
    return validation_blocks(cfg, tokenizer=load_tokenizer(cfg.tokenizer))


@torch.no_grad()
def block_losses(model_dir: Path, blocks: torch.Tensor, *, batch_size: int = 32) -> list[float]:
    """Mean token loss of a saved model on each of `blocks` (`study_blocks`), in fp32 on the GPU if there is one."""
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False)
    model = model.to(device).eval()
    losses = []
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size].to(device)
        logits = model(input_ids=chunk[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
        losses += loss.mean(dim=1).tolist()
    return losses


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


def has_weights(model_dir: Path) -> bool:
    """Whether a saved model folder still holds its weights (runs copied from a GPU machine may keep only their
    metrics and configs)."""
    return any(model_dir.glob("*.safetensors")) or any(model_dir.glob("pytorch_model*.bin"))


def validation_loss_se(model_dir: Path, blocks: torch.Tensor) -> dict:
    """Validation loss of a saved model and its standard error over blocks: how far one evaluation may sit from
    the loss on unlimited held-out data."""
    losses = block_losses(model_dir, blocks)
    return {"value": _se(losses), "mean": statistics.fmean(losses), "blocks": len(losses),
            "tokens": len(losses) * (blocks.shape[1] - 1), "model": str(model_dir)}


def paired_difference_se(model_a: Path, model_b: Path, blocks: torch.Tensor) -> dict:
    """Loss difference a - b on the same blocks and its standard error: the noise that matters when two runs are
    compared on one validation set (both see the same blocks, so their block losses move together)."""
    diffs = [a - b for a, b in zip(block_losses(model_a, blocks), block_losses(model_b, blocks))]
    return {"value": _se(diffs), "mean": statistics.fmean(diffs), "blocks": len(diffs),
            "models": [str(model_a), str(model_b)]}
