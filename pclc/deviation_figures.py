"""The deviations report's figures: C&W accuracy against its learning rate, and PGD survival against float32
saturation, one point per trained run (both from :mod:`pclc.deviations`' tables of the run store's numbers)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pclc.config import compose
from pclc.experiment import chosen_studies
from pclc.files import atomic_savefig


def _save(fig, path: Path) -> Path:
    """Lay out, write atomically and close a report figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def cw_lr_figure(cfg: DictConfig, cells: pd.DataFrame, res: pd.DataFrame, path: Path) -> Path | None:
    """C&W accuracy against its learning rate, per method (the committed lr 0.001 cell and the cw_lr arms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {a.name: a for a in cfg.experiment.studies.cw_lr.arms} if "cw_lr" in chosen_studies(cfg) else {}
    pts = res[(res.study == "cw_lr") & (res.attack == "cw")]
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    default = float(compose("evaluate", []).suite.attacks.cw.learning_rate)  # the paper's 0.001
    for meth, g in pts.groupby("method"):
        lr = [float(((arms[a].get("params") or {}).get("cw") or {}).get("learning_rate", default)) for a in g.arm]
        order = sorted(range(len(lr)), key=lr.__getitem__)
        ax.plot([lr[i] for i in order], [list(g.accuracy)[i] for i in order], "o-", label=f"{meth} (ours)")
        base = cells[(cells.table == "table1") & (cells.attack == "cw") & (cells.method == meth)]
        if len(base):
            ax.axhline(
                float(base.paper.iloc[0]),
                ls="--",
                lw=0.8,
                color=ax.lines[-1].get_color(),
                label=f"{meth} (paper)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("C&W learning rate (100 iterations)")
    ax.set_ylabel("accuracy under C&W (%)")
    ax.legend(fontsize=7)
    ax.set_title("C&W vs learning rate (lr 0.001, 0.01: 10k images; others: 1k)", fontsize=8)
    return _save(fig, path)


def saturation_figure(cfg: DictConfig, sat: pd.DataFrame, res: pd.DataFrame, path: Path) -> Path | None:
    """PGD-40 accuracy at eps 0.1 (the paper's attack: arms without parameter overrides or a subset) against
    the share of test images with p_y == 1.0 in float32, one point per trained run (every seed and training
    arm): is the CE row's survival the saturation, seed after seed?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = cfg.experiment.studies
    plain = {
        (n, a.name)
        for n in studies
        for a in studies[n].get("arms") or []
        if not a.get("params") and not a.get("subset")
    }
    pgd = res[
        (res.attack == "pgd")
        & (res.source == "white")
        & (res.eps == 0.1)
        & pd.Series([(s, a) in plain for s, a in zip(res.study, res.arm)], index=res.index, dtype=bool)
    ].drop_duplicates("run")
    pts = sat.merge(pgd[["run", "accuracy"]], on="run")  # targets only: a substitute is never attacked white-box
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (training, meth), g in pts.groupby(["training", "method"], sort=False):
        ax.plot(
            g.share_p_y_one,
            g.accuracy,
            "o" if training == "the paper's protocol" else "s",
            ls="none",
            label=f"{meth}, {training} (n={len(g)})",
        )
    ax.set_xlabel("test images with p_y == 1.0 in float32 (%)")
    ax.set_ylabel("accuracy under PGD-40, eps 0.1 (%)")
    ax.legend(fontsize=6)
    ax.set_title("Saturation and PGD survival per trained run (full test set)", fontsize=8)
    return _save(fig, path)
