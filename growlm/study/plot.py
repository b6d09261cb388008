"""The study's figure: validation loss against full training FLOPs, one band (min-max over seeds) per arm."""

from __future__ import annotations

from pathlib import Path

from growlm.pipeline.plot import finish_loss_vs_flops, plt


def plot_study(series: list[dict], out: Path, *, title: str, unigram: float | None) -> Path:
    """`series`: {"label", "flops": [...], "losses": [[per seed] ...] per point, "growth_flops": float | None,
    "style": "solid" | "dashed"}; each becomes a mean line with a min-max band and its growth point marked."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, item in enumerate(series):
        color = "tab:gray" if item["label"].startswith("scratch") else colors[index % len(colors)]
        points = [(f, ls) for f, ls in zip(item["flops"], item["losses"]) if f > 0]
        flops = [f for f, _ in points]
        mean = [sum(ls) / len(ls) for _, ls in points]
        ax.plot(flops, mean, color=color, linestyle=item.get("style", "solid"), linewidth=1.4, label=item["label"])
        ax.fill_between(flops, [min(ls) for _, ls in points], [max(ls) for _, ls in points], color=color, alpha=0.2)
        if item.get("growth_flops"):
            ax.axvline(item["growth_flops"], color=color, linestyle=":", linewidth=1)
    if unigram is not None:
        ax.axhline(unigram, color="black", linestyle="--", linewidth=0.8, label=f"unigram entropy {unigram:.2f}")
    return finish_loss_vs_flops(fig, ax, out, title=title, legend_size=7)
