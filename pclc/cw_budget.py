"""C&W beside its budget (issue 30): for every checked C&W result of the store that records per-example L2 norms,
the median L2 and L-inf of its successful perturbations and its accuracy against an L2 budget, as
``<out>/cw_budget.{md,csv}`` and ``<out>/figures/cw_l2_budget.png``. ``make cw-budget`` (after the C&W cells of
Tables 1 and 5 are evaluated: ``make table1 ATTACKS=cw``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from pclc.analysis.budget import broken_norms, budget_curve, median
from pclc.files import atomic_savefig, atomic_write_text
from pclc.headers import csv_header, header, markdown_table, trained_on_notes
from pclc.reports import evaluated_on_notes
from pclc.results import read_result, read_store
from pclc.store import RunDir, provenance, store_path

log = logging.getLogger(__name__)

BUDGETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # L2, on [0, 1] pixels (a 28x28 image's diagonal is 28)
TITLE = "C&W beside its budget: successful perturbation norms and accuracy against an L2 budget (beyond the paper)"


def collect(store: Path | str, budgets=BUDGETS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per C&W result with per-example norms: who, the attack's budget, accuracy (the paper's way: the
    adversarial prediction), robust accuracy at each L2 budget, and the median norms of what it broke; and the
    flat records of those results (their machine and seconds)."""
    df = read_store(store)
    rows, used = [], []
    for r in df[(df.kind == "cw") & (df.source == "white")].itertuples():
        full = read_result(Path(r.file), RunDir.at(Path(r.file).parent.parent))
        rec = (full or {}).get("records") or {}
        if "l2" not in rec or len(rec["l2"]) != len(rec["label"]):
            continue  # computed before per-example norms were recorded: rerun the cell to include it
        args = (rec["label"], rec["clean_pred"], rec["adv_pred"])
        l2, linf = broken_norms(*args, rec["l2"]), broken_norms(*args, rec["linf"])
        used.append(r.Index)
        rows.append(
            {
                "run": r.run,
                "dataset": r.dataset,
                "model": r.model,
                "method": r.method,
                "seed": r.seed,
                "attack": r.attack,
                "budget": r.budget,
                "n": r.n,
                "accuracy": r.accuracy,
                "broken": len(l2),
                "median_l2": round(median(l2), 4),
                "median_linf": round(median(linf), 4),
                **{f"acc_l2<={b:g}": c for b, c in zip(budgets, budget_curve(*args, rec["l2"], budgets))},
            }
        )
    return pd.DataFrame(rows), df.loc[used]


def _figure(df: pd.DataFrame, budgets, path: Path, prov: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    cols = [f"acc_l2<={b:g}" for b in budgets]
    for _, r in df.iterrows():
        ax.plot(budgets, [r[c] for c in cols], marker="o", label=f"{r.method} s{r.seed} ({r.attack}, n={r.n})")
    ax.set_xlabel("L2 budget")
    ax.set_ylabel("robust accuracy under C&W (%)")
    ax.set_title(f"C&W accuracy against an L2 budget ({prov['device']})", fontsize=8)
    ax.legend(fontsize=6)
    atomic_savefig(fig, path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def write(store: Path | str, out: Path | str, budgets=BUDGETS) -> list[Path]:
    out = Path(out)
    df, used = collect(store, budgets)
    prov = provenance(torch.device("cpu"))
    md, csv, png = out / "cw_budget.md", out / "cw_budget.csv", out / "figures" / "cw_l2_budget.png"
    notes = [
        "C&W finds the smallest L2 change it can within its step budget; at budget r an example counts as robust when "
        "it is correct clean and C&W found no misclassified point within r. `accuracy`: the tables' number (the "
        "adversarial prediction alone); `broken`: examples correct clean and misclassified after the attack",
        *(machines := [*trained_on_notes(store, list(df.run.unique()) if len(df) else []), *evaluated_on_notes(used)]),
    ]
    config = {"store": str(store), "budgets": list(budgets)}
    atomic_write_text(csv, csv_header(TITLE, prov, "full", config, md.name, machines) + df.to_csv(index=False))
    table = markdown_table(df) if len(df) else "No C&W result with per-example norms in the store yet."
    cells = "one row per C&W result; accuracies in % of the test set (or its subset, n), norms on [0, 1] pixels"
    atomic_write_text(md, header(TITLE, prov, "full", notes=notes, cells=cells) + table + "\n")
    paths = [md, csv]
    if len(df):
        _figure(df, budgets, png, prov)
        paths.append(png)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m pclc.cw_budget", description=__doc__)
    p.add_argument("--store", default=None, help="run store (default: $PCLC_RUNS, else runs)")
    p.add_argument("--out", default="results", help="results folder (default results)")
    p.add_argument(
        "--budgets", default=None, help=f"L2 budgets, comma-separated (default {','.join(map(str, BUDGETS))})"
    )
    a = p.parse_args(argv)
    store = store_path(a.store)
    budgets = BUDGETS if a.budgets is None else tuple(float(b) for b in a.budgets.split(","))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write(store, a.out, budgets):
        print(path)


if __name__ == "__main__":
    main()
