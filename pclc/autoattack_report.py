"""``experiment=autoattack``'s report: the reference AutoAttack's robust accuracy on every model of the result set,
mean ± sd over seeds beside the paper's PGD on the same weights and the paper's own PGD number
(``results/autoattack.{md,csv}``), robust accuracy against eps (``results/figures/autoattack_eps.png``), and
RobustBench's flat record per model (``results/autoattack/<model>.json``).
Every number passes :mod:`pclc.results`' invariant (weights and per-example records agree)."""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pclc.config import resolve_device
from pclc.experiment import entries, eval_cfg, experiment_cells, out_dir, train_cfg
from pclc.files import atomic_savefig, atomic_write_json, atomic_write_text
from pclc.headers import config_block, config_yaml, csv_header, header, trained_on_notes
from pclc.paper_data import paper_tables
from pclc.reports import evaluated_on_notes
from pclc.results import item_results, run_weights
from pclc.store import RunDir, provenance, run_key
from pclc.zoo import zoo_name

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset",
    "model",
    "method",
    "recipe",
    "seed",
    "name",
    "run",
    "weights",
    "eps",
    "n",
    "clean_accuracy",
    "autoattack",
    "pgd_ours",
    "pgd_n",
    "pgd_paper",
    "seconds",
    "device",
]


def _numbers(cell, cfg: DictConfig, suite: str, attack: str | None = None) -> dict[float, dict]:
    """{eps: result} of the cell's run under ``suite`` (only ``attack`` when given), each checked."""
    ec = eval_cfg(cell, cfg, suite)
    run = RunDir(cfg.store, run_key(ec))
    out = {}
    mine = [e for e in entries(ec) if (attack is None or e.config == attack) and e.source == "white"]
    for e, r in item_results(run, ec, mine):
        out[float(e.eps)] = r
    return out


def collect(cfg: DictConfig) -> pd.DataFrame:
    exp, paper, rows = cfg.experiment, paper_tables(), []
    pgd_paper = paper[paper.attack == exp.reported.attack]
    for cell in experiment_cells(cfg):
        tc = train_cfg(cell, cfg)
        run = RunDir(cfg.store, run_key(tc))
        weights = run_weights(run)
        if weights is None:
            continue
        aa = _numbers(cell, cfg, exp.suite)
        # the paper's PGD as its table evaluates it: without AutoAttack's subset (the table's test set)
        pgd = _numbers(replace(cell, evaluation=""), cfg, exp.reported.suite, exp.reported.attack)
        recipe = cell.arm.rsplit(".", 1)[-1] if cell.arm else "paper"
        for eps, r in sorted(aa.items()):
            p = pgd_paper[
                (pgd_paper.dataset == cell.dataset)
                & (pgd_paper.method == cell.method)
                & (pgd_paper.param.astype(str) == f"{eps:g}")
            ]
            rows.append(
                {
                    "dataset": cell.dataset,
                    "model": cell.model,
                    "method": cell.method,
                    "recipe": recipe,
                    "seed": cell.seed,
                    "run": run.key,
                    "weights": weights,
                    "eps": eps,
                    "n": r["n"],
                    "name": zoo_name(
                        tc.dataset.name,
                        tc.model.name,
                        cell.method,
                        cell.seed,
                        recipe if cell.train_extra else "",
                    ),
                    "clean_accuracy": r["clean_accuracy"],
                    "autoattack": r["accuracy"],
                    "pgd_ours": pgd[eps]["accuracy"] if eps in pgd else None,
                    "pgd_n": pgd[eps]["n"] if eps in pgd else None,
                    "pgd_paper": float(p.accuracy.iloc[0]) if len(p) and recipe == "paper" else None,
                    "seconds": r["seconds"],  # AutoAttack's own time at this eps (the planner's figure to check)
                    "device": r["device"],
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _ms(v: pd.Series) -> str:
    v = [float(x) for x in v.dropna()]
    if not v:
        return "—"
    m = statistics.fmean(v)
    return f"{m:.1f}" + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "") + f" (n={len(v)})"


def to_markdown(df: pd.DataFrame) -> list[str]:
    epss = sorted(df.eps.unique())
    head = "| method | recipe | clean | " + " | ".join(f"AutoAttack ε={e:g} | paper's PGD here | paper" for e in epss)
    lines = [head + " |", "|" + "---|" * (3 + 3 * len(epss))]
    for (meth, recipe), g in df.groupby(["method", "recipe"], sort=False):
        cells = [_ms(g.drop_duplicates("run").clean_accuracy)]
        for e in epss:
            h = g[g.eps == e]
            paper = h.pgd_paper.dropna()
            cells += [_ms(h.autoattack), _ms(h.pgd_ours), f"{paper.iloc[0]:.1f}" if len(paper) else "—"]
        lines.append(f"| {meth} | {recipe} | " + " | ".join(cells) + " |")
    return lines


def _figure(df: pd.DataFrame, path: Path, title: str) -> None:
    """Robust accuracy under AutoAttack against eps: one line per (method, recipe), the mean over seeds, the band
    from the lowest to the highest seed (the paper's PGD on the same weights dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for (meth, recipe), g in df.groupby(["method", "recipe"], sort=False):
        by = g.groupby("eps")
        aa, n = by.autoattack.agg(["mean", "min", "max"]), g.run.nunique()
        label = f"{meth}" + ("" if recipe == "paper" else f" ({recipe})") + f", {n} seed{'s' * (n > 1)}"
        line = ax.plot(aa.index, aa["mean"], marker="o", label=label)[0]
        if n > 1:
            ax.fill_between(aa.index, aa["min"], aa["max"], alpha=0.2, color=line.get_color())
        pgd = by.pgd_ours.mean().dropna()
        if len(pgd):
            ax.plot(pgd.index, pgd.values, linestyle="--", marker=".", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 100)
    ax.set_title(title + "\nsolid: AutoAttack (band: lowest to highest seed); dashed: the paper's PGD", fontsize=7)
    ax.legend(fontsize=6)
    atomic_savefig(fig, path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _num(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)  # JSON has no NaN


def write(cfg: DictConfig, tracker=None) -> list[Path]:
    exp, folder = cfg.experiment, out_dir(cfg)
    df = collect(cfg)
    prov = provenance(resolve_device(cfg.device))
    subset = exp.get("subset")
    notes = [
        f"AutoAttack: pyautoattack 0.2.0, version standard, L-inf, on the "
        f"{'full test set' if subset is None else f'first {subset} test images (class-balanced)'}; "
        "robust accuracy counts an example correct both clean and attacked",
        "the paper's PGD here: its own attack on the same weights, as its table computes it "
        f"(`{exp.reported.suite}` suite, the table's test set); paper: its reported PGD",
        f"models: {df.run.nunique()} of {len(experiment_cells(cfg))} (the rest not trained or not evaluated)",
        *trained_on_notes(cfg.store, list(df.run.unique())),
        *evaluated_on_notes(df),
    ]
    md, csv = folder / f"{exp.name}.md", folder / f"{exp.name}.csv"
    protocol = str(cfg.profile)
    atomic_write_text(
        csv,
        csv_header(exp.title, prov, protocol, {"experiment": exp.name, "subset": subset}, md.name)
        + df.to_csv(index=False),
    )
    body = to_markdown(df) if len(df) else ["No model has an AutoAttack result yet."]
    atomic_write_text(
        md,
        header(exp.title, prov, protocol, notes=notes, cells="accuracy in %, mean ± sd over seeds (n)")
        + "\n".join(body)
        + "\n\n"
        + "\n".join(config_block(config_yaml(cfg)))
        + "\n",
    )
    paths = [md, csv]
    if len(df):
        png = folder / "figures" / f"{exp.name}_eps.png"
        _figure(df, png, f"{exp.title} ({prov['device']})")
        paths.append(png)
    for name, g in df.groupby("name"):  # RobustBench's model-info record, one per model
        path = folder / exp.name / f"{name}.json"
        atomic_write_json(
            path,
            {
                "name": name,
                "run": g.run.iloc[0],
                "weights": g.weights.iloc[0],
                "dataset": g.dataset.iloc[0],
                "threat_model": "Linf",
                "eps": {
                    f"{r.eps:g}": {
                        "clean_acc": r.clean_accuracy,
                        "reported": _num(r.pgd_paper),
                        "pgd_here": _num(r.pgd_ours),
                        "autoattack_acc": r.autoattack,
                        "n": int(r.n),
                    }
                    for r in g.itertuples()
                },
                "provenance": prov,
            },
        )
        paths.append(path)
    if tracker is not None:
        tracker.log_table(exp.name, df)
    log.info("wrote %s and %s", md, csv)
    return paths
