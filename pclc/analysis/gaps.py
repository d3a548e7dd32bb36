"""Probability gaps ``p_y - max_{k != y} p_k`` of a model on a data set (paper Introduction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pclc.files import atomic_savefig
from pclc.metrics import probability_gap

BINS, RANGE = 40, (-1.0, 1.0)
FIG_SIZE = (6.0, 4.0)
DPI = 150


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> floats in [0, 1]; float inputs unchanged."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def probability_gaps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Per-example probability gap of ``model`` (in eval mode) on ``(x, y)``."""
    dev = _device(model)
    out = [
        probability_gap(model(as_input(x[i : i + batch_size]).to(dev)), y[i : i + batch_size].to(dev)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()


def gap_stats(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Mean, median, std (population), share of negative gaps, and a 40-bin histogram over [-1, 1]."""
    g = probability_gaps(model, x, y, batch_size).astype(np.float64)
    counts, edges = np.histogram(g, bins=BINS, range=RANGE)
    return {
        "n": int(g.size),
        "mean": float(g.mean()),
        "median": float(np.median(g)),
        "std": float(g.std()),
        "negative_share": float((g < 0).mean()),
        "hist": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def plot_gaps(series: dict[str, np.ndarray], path, title: str) -> Path:
    """Overlaid gap histograms, one per model, with each mean in the legend and as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIG_SIZE)
    edges = np.linspace(*RANGE, BINS + 1)
    for i, (name, g) in enumerate(series.items()):
        g = np.asarray(g, dtype=np.float64)
        color = f"C{i}"
        ax.hist(g, bins=edges, alpha=0.45, color=color, label=f"{name} (mean {g.mean():.3f})")
        ax.axvline(g.mean(), color=color, linestyle="--", linewidth=1)
    ax.set(xlim=RANGE, xlabel=r"probability gap $p_y - \max_{k \neq y} p_k$", ylabel="# examples", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=DPI)
    plt.close(fig)
    return Path(path)
