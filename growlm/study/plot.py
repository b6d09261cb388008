"""The study's figure: validation loss against full training FLOPs, one panel per arm group (depth, width,
ablations, ...), each with scratch, its arms and their bases as mean lines with min-max bands over seeds."""

from __future__ import annotations

from pathlib import Path

from growlm.pipeline.plot import label_loss_vs_flops, plt, save_figure


def plot_study(series: list[dict], out: Path, *, title: str, unigram: float | None) -> Path:
    """`series`: {"label", "flops": [...], "losses": [[per seed] ...] per point, "panels": [group, ...] or None (every
    panel), "style": "solid" | "dashed", "growth_flops": float (grown arms), "base": the label of its base's series}.
    A base is drawn dashed in the colour of its first arm in the panel; each arm's growth point is a dotted line."""
    panels = list(dict.fromkeys(panel for item in series for panel in item["panels"] or [])) or ["scratch"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), dpi=120, sharey=True, squeeze=False)
    palette = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#7f7f7f"]  # gray is scratch's
    for ax, panel in zip(axes[0], panels):
        shown = [item for item in series if item["panels"] is None or panel in item["panels"]]
        colors = {item["label"]: palette[i % len(palette)] for i, item in enumerate(s for s in shown if "base" in s)}
        for item in shown:
            if item["label"] not in colors:
                colors[item["label"]] = next((colors[s["label"]] for s in shown if s.get("base") == item["label"]),
                                             "tab:gray")
        for item in shown:
            color = colors[item["label"]]
            points = [(f, ls) for f, ls in zip(item["flops"], item["losses"]) if f > 0]
            flops = [f for f, _ in points]
            ax.plot(flops, [sum(ls) / len(ls) for _, ls in points], color=color, linestyle=item.get("style", "solid"),
                    linewidth=1.4, label=item["label"])
            ax.fill_between(flops, [min(ls) for _, ls in points], [max(ls) for _, ls in points], color=color,
                            alpha=0.15)
            if item.get("growth_flops"):
                ax.axvline(item["growth_flops"], color=color, linestyle=":", linewidth=1)
        if unigram is not None:
            ax.axhline(unigram, color="black", linestyle="--", linewidth=0.8, label=f"unigram entropy {unigram:.2f}")
        label_loss_vs_flops(ax, title=panel, legend_size=7)
    fig.suptitle(title)
    return save_figure(fig, out)
