"""The loss-vs-FLOPs figure (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from growlm.atomic import write_bytes  # noqa: E402
from growlm.pipeline.curves import RunCurve  # noqa: E402

# Keyed by a curve label's first word.
STYLES = {"scratch": dict(color="tab:gray"), "grown": dict(color="tab:blue"),
          "base": dict(color="tab:blue", linestyle="--", alpha=0.6)}


def plot_loss_vs_flops(curves: list[RunCurve], out: Path, *, title: str,
                       growth_flops: float | None = None) -> Path:
    """Validation loss against training FLOPs (log x; zero-FLOPs points are left out) with the growth point."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for run in curves:
        points = [(f, loss) for f, loss in zip(run.curve.flops, run.curve.loss) if f > 0]
        ax.plot(*zip(*points), marker="o", markersize=3, label=run.label, **STYLES.get(run.label.split()[0], {}))
    if growth_flops:
        ax.axvline(growth_flops, color="tab:red", linestyle=":", label="growth (base model's FLOPs)")
    return finish_loss_vs_flops(fig, ax, out, title=title)


def label_loss_vs_flops(ax, *, title: str, legend_size: float | None = None) -> None:
    """Axes, labels and legend of a loss-vs-full-FLOPs panel."""
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs, full count (every matmul incl. LM head and attention scores)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig, out: Path) -> Path:
    """Lay out and write `fig` to a temporary sibling of `out`, then rename it into place."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    write_bytes(out, buffer.getvalue())
    return out


def finish_loss_vs_flops(fig, ax, out: Path, *, title: str) -> Path:
    """A one-panel loss-vs-full-FLOPs figure, labelled and written."""
    label_loss_vs_flops(ax, title=title)
    return save_figure(fig, out)
