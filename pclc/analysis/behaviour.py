"""Predictive behaviour on adversarial examples (paper Fig. 2, "Predictive behavior" section).

Over a grid of perturbation sizes, the *newly successful* attacks at grid step ``m`` are the examples
that are correctly classified when clean, misclassified at ``eps_m`` and correctly classified at
``eps_{m-1}`` (at the first eps: every misclassified one). An example that flips back to correct at
a larger eps and is fooled again later is counted again at that later step. For each step we report
which of the clean top-5 classes the adversarial prediction is (ranks 2-5, or "other").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pclc.files import atomic_savefig

RANKS = (2, 3, 4, 5)
ORDINAL = {2: "2nd", 3: "3rd", 4: "4th", 5: "5th"}
PANEL_SIZE = (5.0, 4.0)  # inches per subplot; figures are saved at DPI without tight cropping
DPI = 150


def newly_successful(label, clean_pred, clean_top5, adv_preds_by_eps: list[tuple[float, list[int]]]) -> list[dict]:
    """Per eps (ascending): count of newly successful attacks and their share in clean ranks 2..5 / other."""
    label, clean_pred = np.asarray(label), np.asarray(clean_pred)
    top5 = np.asarray(clean_top5).reshape(len(label), -1)[:, :5]
    top5 = np.pad(top5, ((0, 0), (0, 5 - top5.shape[1])), constant_values=-1)  # < 5 classes: no such rank
    grid = sorted(adv_preds_by_eps, key=lambda e: e[0])
    eps = [float(e) for e, _ in grid]
    if len(set(eps)) != len(eps):
        raise ValueError(f"duplicate eps values in {eps}")
    adv = np.asarray([p for _, p in grid]).reshape(len(grid), -1)
    if adv.shape[1] != len(label) or len(clean_pred) != len(label):
        raise ValueError(f"{len(label)} labels, {len(clean_pred)} clean and {adv.shape[1]} adversarial predictions")
    ok = clean_pred == label
    label, top5, adv = label[ok], top5[ok], adv[:, ok]
    wrong = adv != label  # (M, n)
    before = np.vstack([np.zeros((1, wrong.shape[1]), bool), wrong[:-1]])
    new = wrong & ~before
    rank = adv[:, :, None] == top5[None, :, 1:]  # (M, n, 4): adv pred is clean rank 2..5
    counts = new.sum(1)
    hits = (rank & new[:, :, None]).sum(1)  # (M, 4)
    shares = hits / np.maximum(counts, 1)[:, None]
    out = []
    for m, e in enumerate(eps):
        row = {"eps": e, "count": int(counts[m])}
        row |= {f"rank{r}": float(s) for r, s in zip(RANKS, shares[m])}
        row["other"] = float(1.0 - shares[m].sum()) if counts[m] else 0.0
        out.append(row)
    return out


def behaviour_from_eval_files(paths) -> list[dict]:
    """``newly_successful`` from eval JSONs (pclc.evaluate) of one run and attack at several eps."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if not runs:
        raise ValueError("no evaluation files given")
    first = runs[0]
    for p, r in zip(paths, runs):
        for key in ("run", "attack", "source", "n"):
            if r[key] != first[key]:
                raise ValueError(f"{p}: {key} is {r[key]!r}, but {paths[0]} has {first[key]!r}")
        if r["eps"] is None:
            raise ValueError(f"{p}: attack {r['attack']} has no eps")
        if r["records"]["label"] != first["records"]["label"]:
            raise ValueError(f"{p}: evaluated on different examples than {paths[0]}")
    rec = first["records"]
    return newly_successful(
        rec["label"],
        rec["clean_pred"],
        rec["clean_top5"],
        [(r["eps"], r["records"]["adv_pred"]) for r in runs],
    )


def plot_behaviour(panels: list[tuple[str, list[dict]]], path, title: str) -> Path:
    """Grouped bars (shares of clean ranks 2-5, left axis, %) and the count line (right axis) per eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), squeeze=False)
    width = 0.8 / len(RANKS)
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(RANKS)))
    for ax, (name, rows) in zip(axes[0], panels):
        x = np.arange(len(rows))
        for i, r in enumerate(RANKS):
            ax.bar(
                x + (i - (len(RANKS) - 1) / 2) * width,
                [100 * row[f"rank{r}"] for row in rows],
                width,
                color=colors[i],
                label=f"{ORDINAL[r]} most probable",
            )
        ax.set(
            xticks=x,
            xticklabels=[f"{row['eps']:g}" for row in rows],
            ylim=(0, 100),
            title=name,
            xlabel="perturbation ε",
            ylabel="newly successful attacks (%)",
        )
        if len(rows) > 8:  # a fine grid: slanted labels stay readable
            ax.tick_params(axis="x", labelrotation=45)
        right = ax.twinx()
        counts = [row["count"] for row in rows]
        right.plot(x, counts, "k-o", markersize=4, label="# newly successful attacks")
        right.set_ylabel("# newly successful attacks")
        right.set_ylim(0, 1.1 * max(max(counts), 1))
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = axes[0, 0].get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        title="adversarial prediction = clean sample's ...",
        title_fontsize=8,
    )
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    atomic_savefig(fig, path, dpi=DPI)
    plt.close(fig)
    return Path(path)
