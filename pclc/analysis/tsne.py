"""t-SNE of penultimate-layer features, clean and with successful adversarial examples (paper Fig. 1, 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pclc.analysis.gaps import as_input
from pclc.files import atomic_savefig

PANEL_SIZE = (5.0, 5.0)  # inches per subplot; figures are saved at DPI without tight cropping
DPI = 150


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``model.features`` of ``x`` (uint8 or [0, 1] floats) in batches, on the CPU."""
    if len(x) == 0:  # e.g. no successful adversarial example
        return torch.empty(0, model.feature_dim)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat(
        [model.features(as_input(x[i : i + batch_size]).to(dev)).flatten(1).cpu() for i in range(0, len(x), batch_size)]
    )
    model.train(was_training)
    return out


def embed(features: np.ndarray, seed: int = 0, perplexity: float = 30) -> np.ndarray:
    """2-D t-SNE (PCA init) of ``features`` (N, D); perplexity is clipped below N."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {n}")
    # one OpenMP thread: sklearn's threaded Barnes-Hut step is 20x slower on busy cores, and barely
    # faster on idle ones for the few thousand points of a figure
    with threadpool_limits(1):
        return TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=float(min(perplexity, n - 1))
        ).fit_transform(features)


def tsne_panels(
    model: torch.nn.Module,
    x_clean: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor | None = None,
    adv_success: torch.Tensor | None = None,
    n: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Panels for ``plot_tsne`` on a seeded random subset of ``n`` examples.

    Without ``x_adv``: one panel of clean points. With it (aligned with ``x_clean``): clean and
    successful adversarial features are embedded jointly, and two panels share those coordinates:
    the clean points only (Fig. 3a) and clean plus adversarial points (Fig. 3b). ``adv_success``
    (bool per example) defaults to ``model(x_adv).argmax(1) != y``.
    """
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    y = y.cpu()[idx]
    feats = penultimate_features(model, x_clean[idx.to(x_clean.device)])
    if x_adv is None:
        return [{"title": "clean", "xy": embed(feats.numpy(), seed), "labels": y.numpy()}]
    if adv_success is None:
        adv_success = _predict(model, x_adv[idx.to(x_adv.device)]).argmax(1) != y
    else:
        adv_success = torch.as_tensor(adv_success, dtype=torch.bool).cpu()[idx]
    adv_feats = penultimate_features(model, x_adv[idx[adv_success].to(x_adv.device)])
    xy = embed(torch.cat([feats, adv_feats]).numpy(), seed)
    labels = torch.cat([y, y[adv_success]]).numpy()
    mask = np.arange(len(labels)) >= len(y)
    return [
        {"title": "clean", "xy": xy[~mask], "labels": labels[~mask]},
        {
            "title": f"clean + {int(mask.sum())} successful attacks (+)",
            "xy": xy,
            "labels": labels,
            "adv_mask": mask,
        },
    ]


@torch.no_grad()
def _predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([model(as_input(x[i : i + batch_size]).to(dev)).cpu() for i in range(0, len(x), batch_size)])


def plot_tsne(panels: list[dict], path, title: str, class_names: list[str] | None = None) -> Path:
    """Clean points as dots, adversarial ones as '+', both coloured by true class (named by ``class_names``
    when given); one subplot per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    k = int(max(np.max(p["labels"]) for p in panels)) + 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "turbo", k)
    norm = plt.Normalize(-0.5, k - 0.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), squeeze=False)
    for ax, p in zip(axes[0], panels):
        xy, labels = np.asarray(p["xy"]), np.asarray(p["labels"])
        adv = np.asarray(p.get("adv_mask", np.zeros(len(labels), bool)), dtype=bool)
        sc = ax.scatter(*xy[~adv].T, c=labels[~adv], cmap=cmap, norm=norm, s=3, linewidths=0)
        if adv.any():
            ax.scatter(*xy[adv].T, c=labels[adv], cmap=cmap, norm=norm, s=25, marker="+", linewidths=0.8)
        ax.set(title=p["title"], xticks=[], yticks=[])
    if k <= 10:
        names = list(class_names or [])
        handles = [
            Line2D([], [], marker="o", linestyle="", color=cmap(c), label=names[c] if c < len(names) else str(c))
            for c in range(k)
        ]
        if any(np.any(p.get("adv_mask", False)) for p in panels):
            handles.append(Line2D([], [], marker="+", linestyle="", color="k", label="adversarial"))
        axes[0, -1].legend(
            handles=handles,
            title="class",
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=7,
            frameon=False,
        )
    else:
        fig.colorbar(sc, ax=axes[0, -1], label="class")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=DPI)
    plt.close(fig)
    return Path(path)
