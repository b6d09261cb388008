"""FLOPs bookkeeping: validation-loss curves against training FLOPs for the base, grown and scratch runs.

Primary FLOPs convention (growth.md §9): 6 * N_ne * tokens, N_ne = non-embedding parameters. The grown run's
curve includes the small model's cost: base FLOPs (6 * N_ne_base * d) + 6 * N_ne_target * tokens after growth;
the scratch run's is 6 * N_ne_target * tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from growlm.growth.speedup import LossCurve
from growlm.train.flops import training_flops
from growlm.modeling import count_parameters


@dataclass(frozen=True)
class RunCurve:
    """One run's validation-loss curve: a label, the run's own token counts and the (FLOPs, loss) curve."""

    label: str
    tokens: tuple[int, ...]
    curve: LossCurve


def eval_points(records: list[dict]) -> list[tuple[int, float]]:
    """(tokens, val_loss) of the eval records in token order, one per token count (the last one wins)."""
    by_tokens = {int(r["tokens"]): float(r["val_loss"]) for r in records if r.get("type") == "eval"}
    if len(by_tokens) < 2:
        raise ValueError(f"metrics.jsonl has {len(by_tokens)} eval record(s), need >= 2 for a loss curve; "
                         "evaluate more often (pretrain.py's eval interval) or train longer")
    return sorted(by_tokens.items())


def trained_tokens(records: list[dict]) -> int:
    """Tokens the run consumed: the largest `tokens` of its per-step (non-eval) records."""
    tokens = [int(r["tokens"]) for r in records if r.get("type", "train") != "eval" and "tokens" in r]
    if not tokens:
        raise ValueError("metrics.jsonl has no per-step records with 'tokens'; the run did not train")
    return max(tokens)


def full_per_token(model_dir: Path, seq_len: int) -> int:
    """Full training FLOPs per token (every matmul, `growlm.train.flops.full_flops_per_token`) of a saved model."""
    from growlm.train.flops import full_flops_per_token

    return full_flops_per_token(AutoConfig.from_pretrained(model_dir, trust_remote_code=False), seq_len)


def non_embedding_params(model_dir: Path) -> int:
    """Non-embedding parameter count of a saved Hugging Face model folder."""
    return count_parameters(AutoConfig.from_pretrained(model_dir, trust_remote_code=False))["non_embedding"]


def run_curve(label: str, points: list[tuple[int, float]], *, n_ne: int | None = None,
              per_token: float | None = None, offset_flops: float = 0.0) -> RunCurve:
    """The curve whose FLOPs are `offset_flops + 6 * n_ne * tokens` (or `per_token * tokens`) at each point."""
    if (n_ne is None) == (per_token is None):
        raise ValueError("run_curve takes exactly one of n_ne (paper count) or per_token (any count)")
    tokens = tuple(t for t, _ in points)
    flops = [offset_flops + (training_flops(n_ne, t) if per_token is None else per_token * t) for t in tokens]
    return RunCurve(label, tokens, LossCurve.from_points(flops, [loss for _, loss in points]))
