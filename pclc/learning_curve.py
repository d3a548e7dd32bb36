"""Learning curves of trained runs (issue 31 chooses adversarial training's epochs from one): per epoch, the
training loss and accuracy, the test accuracy and, for a run trained with ``monitor.attack`` set, its robust
accuracy, from each run's metrics.json (the zoo keeps it beside the weights, so a curve can be checked without
retraining). Writes ``<out>/learning_curve/<name>.{md,csv}`` and ``<out>/figures/learning_curve_<name>.png``.

    python -m pclc.learning_curve --run fmnist-lenet5-ce-s0-<hash> [--run ...] --name pgd_at
    make learning-curve RUNS=<key>,<key> NAME=pgd_at
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import torch

from pclc.files import atomic_savefig, atomic_write_text
from pclc.headers import csv_header, header, markdown_table, trained_on_notes
from pclc.store import RunDir, provenance, store_path

log = logging.getLogger(__name__)

# Issue 31's declared rule for choosing adversarial training's epochs from a curve (fixed before the PGD-AT curve
# finished): the plateau is the first epoch whose trailing mean over PLATEAU_WINDOW epochs comes within
# PLATEAU_TOLERANCE points of the best such mean of the run. Why these: the monitor's robust accuracy on 1,000
# images has a binomial standard error of ~1.4 points at 70%, so one epoch's value cannot place a plateau; a 5-epoch
# mean has ~0.65, and 1 point is ~1.5 of those. The epochs per phase chosen from it: the plateau rounded up to a
# multiple of PLATEAU_ROUND (a CE baseline then trains twice that, past the plateau; PC+LC warms up on it).
PLATEAU_WINDOW = 5
PLATEAU_TOLERANCE = 1.0
PLATEAU_ROUND = 5

COLUMNS = ["run", "epoch", "phase", "train_loss", "train_accuracy", "test_accuracy", "robust_accuracy", "robust_attack"]


def collect(store: Path | str, keys: list[str]) -> pd.DataFrame:
    """One row per (run, epoch) of each run's metrics.json; a run that is missing is refused in one line."""
    rows = []
    for key in keys:
        run = RunDir(store, key)
        if not run.metrics.exists():
            raise ValueError(f"no metrics.json for run {key} in {store} (train it, or restore it from the zoo)")
        for m in json.loads(run.metrics.read_text()):
            rows.append({"run": key, **{c: m.get(c) for c in COLUMNS[1:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def plateau(epochs: pd.Series, values: pd.Series) -> tuple[int, float] | None:
    """The declared rule (PLATEAU_*): the first epoch whose trailing PLATEAU_WINDOW-epoch mean is within
    PLATEAU_TOLERANCE points of the best trailing mean, and that mean; None for a curve shorter than the window."""
    means = values.reset_index(drop=True).rolling(PLATEAU_WINDOW).mean()
    if means.notna().sum() == 0:
        return None
    first = int((means >= means.max() - PLATEAU_TOLERANCE).idxmax())  # the first True (NaN compares False)
    return int(epochs.iloc[first]), float(means.iloc[first])


def best_epochs(df: pd.DataFrame) -> pd.DataFrame:
    """Per run: the epoch of the highest robust accuracy (else test accuracy), its value, the last epoch's, and the
    plateau by the declared rule with the epochs per phase it chooses (PLATEAU_*)."""
    out = []
    for key, part in df.groupby("run", sort=False):
        col = "robust_accuracy" if part.robust_accuracy.notna().any() else "test_accuracy"
        measured = part[part[col].notna()]
        best = measured.loc[measured[col].idxmax()]
        found = plateau(measured.epoch, measured[col])
        out.append(
            {
                "run": key,
                "measure": col if col == "test_accuracy" else f"robust_accuracy ({best.robust_attack})",
                "best_epoch": int(best.epoch),
                "best": float(best[col]),
                "last_epoch": int(measured.epoch.iloc[-1]),
                "last": float(measured[col].iloc[-1]),
                "plateau_epoch": found[0] if found else None,
                f"plateau_mean_{PLATEAU_WINDOW}": found[1] if found else None,
                "epochs_per_phase": -(-found[0] // PLATEAU_ROUND) * PLATEAU_ROUND if found else None,
            }
        )
    return pd.DataFrame(out)


def _figure(df: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, part in df.groupby("run", sort=False):
        line = ax.plot(part.epoch, part.test_accuracy, label=f"{key} clean")[0]
        robust = part[part.robust_accuracy.notna()]
        if len(robust):
            label = f"{key} {robust.robust_attack.iloc[0]}"
            ax.plot(robust.epoch, robust.robust_accuracy, linestyle="--", color=line.get_color(), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=5)
    atomic_savefig(fig, path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def write(store: Path | str, keys: list[str], out: Path | str, name: str) -> list[Path]:
    df = collect(store, keys)
    out = Path(out)
    prov = provenance(torch.device("cpu"))
    robust = "; dashed: robust accuracy on the monitored subset" if df.robust_accuracy.notna().any() else ""
    title = f"Learning curve: {name} (test accuracy{robust})"
    md, csv = out / "learning_curve" / f"{name}.md", out / "learning_curve" / f"{name}.csv"
    png = out / "figures" / f"learning_curve_{name}.png"
    best = best_epochs(df)
    notes = [
        "per epoch, from each run's metrics.json; robust accuracy: `monitor.attack` on the first `monitor.subset` "
        "test images (see each run's config.yaml), measured in eval mode after the epoch",
        f"plateau (issue 31's rule, declared before the PGD-AT curve finished): the first epoch whose trailing "
        f"{PLATEAU_WINDOW}-epoch mean is within {PLATEAU_TOLERANCE:g} point(s) of the run's best such mean; "
        f"epochs_per_phase: the plateau rounded up to a multiple of {PLATEAU_ROUND}",
        *(machines := trained_on_notes(store, keys)),
    ]
    table = markdown_table(best) if len(best) else ""
    atomic_write_text(
        csv, csv_header(title, prov, "full", {"runs": keys, "name": name}, md.name, machines) + df.to_csv(index=False)
    )
    atomic_write_text(
        md,
        header(title, prov, "full", notes=notes, cells="one row per (run, epoch); accuracies in %")
        + table
        + "\n\n"
        + markdown_table(df)
        + "\n",
    )
    _figure(df, png, title)
    log.info("wrote %s, %s, %s", md, csv, png)
    return [md, csv, png]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m pclc.learning_curve", description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a run key (repeatable)")
    p.add_argument("--name", required=True, help="the curve's file name, e.g. pgd_at")
    p.add_argument("--store", default=None, help="run store (default: $PCLC_RUNS, else runs)")
    p.add_argument("--out", default="results", help="results folder (default results)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = write(store_path(a.store), a.run, a.out, a.name)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
