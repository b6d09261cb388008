"""Where each stage of a pipeline run writes, under its output directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARMS = ("grown", "scratch")  # the compared, evaluated target-size models
MODELS = ("base", *ARMS)  # every trained model, all published; the base first, so the grown card's base_model exists


@dataclass(frozen=True)
class Layout:
    """The run's directory tree: one folder per stage (each finished when it holds `.done`)."""

    root: Path

    @property
    def base(self) -> Path:
        """The small base model's training run (`final/` is the model)."""
        return self.root / "base"

    @property
    def grow(self) -> Path:
        """The grown model right after G_stack (an HF folder with `growth.json`)."""
        return self.root / "grow"

    def train(self, arm: str) -> Path:
        """A target-size training run: `grown` continues from `grow/`, `scratch` starts from random init."""
        return self.root / arm

    def final_model(self, arm: str) -> Path:
        return self.train(arm) / "final"

    def eval(self, arm: str) -> Path:
        return self.root / "eval" / arm

    def eval_results(self, arm: str) -> Path:
        return self.eval(arm) / "eval_results.json"

    def publish(self, arm: str) -> Path:
        """The card stage's folder; the model to push (final weights + card + eval + plot) is `model/` in it."""
        return self.root / "publish" / arm

    def publish_model(self, arm: str) -> Path:
        return self.publish(arm) / "model"

    def push(self, arm: str) -> Path:
        return self.root / "push" / arm

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def plot(self) -> Path:
        return self.root / "loss_vs_flops.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
