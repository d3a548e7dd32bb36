"""The deviations study (configs/experiment/deviations.yaml): every committed cell of the chosen datasets in
Tables 1, 3 and 5 outside tolerance of the paper, the studies that claim it, their arms' numbers (from the run
store: nothing here trains or attacks) and a verdict computed from the numbers; :mod:`pclc.deviation_saturation`
measures the float32 saturation of every trained arm over seeds (and of transfer substitutes).
:mod:`pclc.deviation_report` writes them
(``<out_dir>/deviations.{md,csv}``); :mod:`pclc.deviation_figures` draws ``figures/deviations_cw_lr.png`` (C&W
accuracy against its learning rate) and ``figures/deviations_saturation.png`` (PGD survival against saturation).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pclc.config import compose
from pclc.experiment import (
    cell_suites,
    chosen_studies,
    entries,
    eval_cfg,
    experiment_cells,
    train_cfg,
)
from pclc.headers import csv_provenance
from pclc.paper_data import paper_tables, param_eps
from pclc.reports import seed_interval
from pclc.results import item_results, run_weights
from pclc.store import RunDir, run_key

log = logging.getLogger(__name__)

RANK = {"explained": 3, "partly": 2, "not explained": 1, "not run": 0, "baseline": -1}


def committed_cells(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """Our committed cells of the experiment's tables (``<out_dir>/<table>.csv``) for its datasets, with the
    tolerance and whether each is outside it; and one provenance line per table file."""
    exp, frames, notes = cfg.experiment, [], []
    datasets = list(cfg.datasets) if cfg.get("datasets") else list(exp.datasets)
    for table in exp.tables:
        path = Path(cfg.out_dir) / f"{table}.csv"
        if not path.exists():
            notes.append(f"{table}: no committed {path} (make {table}); its cells are not listed")
            continue
        df = pd.read_csv(path, comment="#", dtype={"param": str})
        df = df[df.dataset.isin(datasets) & df.status.isin(["run", "kept"])].assign(table=table, ours_from="seed 0")
        p = csv_provenance(path)
        notes.append(f"{table}: `{path}` (commit `{p.get('commit', '?')}`, {p.get('date', '?')})")
        seeds = Path(cfg.out_dir) / "seeds" / f"{table}.csv"
        if seeds.exists():  # "ours" is the mean over seeds wherever the cell has seeds (issue 29)
            df = _with_seed_means(df, pd.read_csv(seeds, comment="#", dtype={"param": str}))
            p = csv_provenance(seeds)
            notes.append(f"{table} over seeds: `{seeds}` (commit `{p.get('commit', '?')}`, {p.get('date', '?')})")
        frames.append(df)
    if not frames:
        return pd.DataFrame(
            columns=[
                "table",
                "dataset",
                "model",
                "attack",
                "param",
                "method",
                "paper",
                "ours",
                "diff",
                "tolerance",
                "outside",
                "ours_from",
            ]
        ), notes
    df = pd.concat(frames, ignore_index=True)
    tol = exp.tolerance
    df["tolerance"] = [float(tol.clean if a == "clean" else tol.attacked) for a in df.attack]
    df["outside"] = df["diff"].abs() > df.tolerance
    return df, notes


def _with_seed_means(df: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """``df``'s cells with ours, diff, n and the prediction interval from the seeds table where it has two or more
    seeds for the cell (``ours_from`` says which)."""
    key = ["dataset", "model", "method", "attack", "param"]
    have = {
        tuple(r[k] for k in key): r
        for r in seeds.to_dict("records")
        if r.get("status") in ("run", "kept") and (r.get("n_seeds") or 0) > 1
    }
    out = []
    for r in df.to_dict("records"):
        m = have.get(tuple(r[k] for k in key))
        if m is not None:
            r = {
                **r,
                "ours": float(m["ours"]),
                "diff": round(float(m["ours"]) - float(r["paper"]), 2),
                "n_seeds": int(m["n_seeds"]),
                "pi95": m.get("pi95"),
                "ours_from": f"mean of {int(m['n_seeds'])} seeds",
            }
        out.append(r)
    return pd.DataFrame(out, columns=list(dict.fromkeys([*df.columns, "n_seeds", "pi95", "ours_from"])))


def claim_matches(claim, row) -> bool:
    for key in ("table", "method", "attack"):
        want = claim.get(key)
        if want is not None and getattr(row, key) not in ([want] if isinstance(want, str) else list(want)):
            return False
    return True


def table_row_specs(table: str) -> dict:
    return OmegaConf.to_container(compose("reproduce", [f"experiment={table}"]).experiment.rows)


def arm_results(cfg: DictConfig) -> pd.DataFrame:
    """One row per finished evaluation (and per trained run: its clean accuracy) of the chosen arms."""
    rows = []
    for cell in experiment_cells(cfg):
        study, arm = cell.arm.split(".", 1)
        run = RunDir(cfg.store, run_key(train_cfg(cell, cfg)))
        if run_weights(run) is None:  # not finished, or not the weights it was trained to
            continue
        base = {
            "study": study,
            "arm": arm,
            "dataset": cell.dataset,
            "method": cell.method,
            "seed": cell.seed,
            "run": run.key,
        }
        rows.append(
            {
                **base,
                "attack": "clean",
                "source": "white",
                "eps": None,
                "n": None,
                "accuracy": run.read_summary()["test_accuracy"],
                "max_linf": None,
                "device": None,
                "seconds": None,
                "file": None,
            }
        )
        for ec in [eval_cfg(cell, cfg, suite) for suite in cell_suites(cell, cfg)]:
            for e, r in item_results(run, ec, entries(ec)):
                rows.append(
                    {
                        **base,
                        "attack": e.config,
                        "source": e.source,
                        "eps": e.eps,
                        "n": r["n"],
                        "accuracy": r["accuracy"],
                        "max_linf": r["max_linf"],
                        "device": r["device"],  # the machine that computed it (the report names each)
                        "seconds": r["seconds"],
                        "file": r["file"],
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "study",
            "arm",
            "dataset",
            "method",
            "seed",
            "run",
            "attack",
            "source",
            "eps",
            "n",
            "accuracy",
            "max_linf",
            "device",
            "seconds",
            "file",
        ],
    )


def _row_attack(arm, cell, table_rows: dict) -> tuple[str, str]:
    """The attack config and source standing for the cell's row in this arm (its ``rows`` may substitute one)."""
    spec = table_rows.get(cell.attack) or {}
    return (arm.get("rows") or {}).get(cell.attack) or spec.get("attack"), spec.get("source", "white")


def arm_value(res: pd.DataFrame, arm, cell, table_rows: dict) -> list[float]:
    """The arm's numbers (one per seed) at a paper cell: its attack standing for the cell's row."""
    if cell.attack == "clean":
        hit = res[(res.method == cell.method) & (res.attack == "clean")]
        return [float(v) for v in hit.accuracy]
    attack, source = _row_attack(arm, cell, table_rows)
    eps = param_eps(cell.param)
    hit = res[
        (res.method == cell.method)
        & (res.attack == attack)
        & (res.source == source)
        & (res.eps.isna() if eps is None else res.eps == eps)
    ]
    return [float(v) for v in hit.accuracy]


def applies(arm, cell, table_rows: dict) -> bool:
    """Whether an arm has a number for the cell: it runs the cell's method, and an attack of its entries stands
    for the cell's row, from the same source (white-box or transfer; the clean row: any arm that trains)."""
    if arm.get("methods") is not None and cell.method not in list(arm.methods):
        return False
    if cell.attack == "clean":
        return True
    return not arm.get("entries") or _row_attack(arm, cell, table_rows) in {
        (e["attack"], e.get("source", "white")) for e in OmegaConf.to_container(arm.entries)
    }


def verdict(
    paper: float,
    ours: float,
    values: list[float],
    tolerance: float,
    seeds: bool = False,
    primary: bool = True,
    near_zero: dict | None = None,
) -> str:
    """explained / partly / not explained / not run (the rules in configs/experiment/deviations.yaml): an
    exploratory (not ``primary``) arm is at most "partly"; where the paper is near zero (``near_zero``) ours must
    be too to lie "within tolerance"."""
    if len(values) < (2 if seeds else 1):
        return "not run"
    v = statistics.fmean(values)
    close = abs(v - paper) <= (seed_interval(values) if seeds else tolerance)
    if near_zero and paper <= float(near_zero["paper_at_most"]) and v > float(near_zero["ours_at_most"]):
        close = False  # 9% is not 0% for robustness
    if close:
        return "explained" if primary else "partly"
    if seeds:
        return "not explained"
    return "partly" if abs(v - paper) <= abs(ours - paper) / 2 else "not explained"


def judge(cfg: DictConfig, cells: pd.DataFrame, res: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell outside tolerance, study claiming it, arm): the arm's numbers and verdict. A cell no
    chosen study claims gets one row with study "—" and verdict "not run": no cell is left unlisted."""
    exp, paper, out = cfg.experiment, paper_tables(), []
    rows_of = {t: table_row_specs(t) for t in exp.tables}
    for c in cells[cells.outside].itertuples():
        key = {
            "table": c.table,
            "dataset": c.dataset,
            "model": c.model,
            "attack": c.attack,
            "param": c.param,
            "method": c.method,
            "paper": c.paper,
            "ours": c.ours,
            "diff": c.diff,
            "tolerance": c.tolerance,
            "ours_from": getattr(c, "ours_from", "seed 0"),
        }
        claimed = False
        for name in chosen_studies(cfg):
            st = exp.studies[name]
            if not any(claim_matches(cl, c) for cl in st.get("claims") or []):
                continue
            claimed = True
            if st.get("reference"):
                ref = paper[
                    (paper.table == st.reference.table)
                    & (paper.dataset == c.dataset)
                    & (paper.attack == c.attack)
                    & (paper.param == c.param)
                    & (paper.method == st.reference.method)
                ]
                val = [float(ref.accuracy.iloc[0])] if len(ref) else []
                v = (
                    ("explained" if val and abs(c.ours - val[0]) <= c.tolerance else "not explained")
                    if val
                    else "not run"
                )
                out.append(
                    {
                        **key,
                        "study": name,
                        "arm": f"paper {st.reference.table}",
                        "primary": True,
                        "n_seeds": len(val),
                        "value": val[0] if val else None,
                        "sd": None,
                        "pi95": None,
                        "verdict": v,
                    }
                )
                continue
            arms = [a for a in st.get("arms") or [] if applies(a, c, rows_of[c.table])]
            if not arms:  # claimed, but no arm runs this cell: listed as not run
                out.append(
                    {
                        **key,
                        "study": name,
                        "arm": "—",
                        "n_seeds": 0,
                        "value": None,
                        "sd": None,
                        "pi95": None,
                        "verdict": "not run",
                    }
                )
            got = {}
            for arm in arms:
                mine = res[(res.study == name) & (res.arm == arm.name) & (res.dataset == c.dataset)]
                got[arm.name] = arm_value(mine, arm, c, rows_of[c.table])
            baseline = exp.baseline_arm  # the same runs under the paper's settings
            base = statistics.fmean(got[baseline]) if got.get(baseline) else c.ours
            for arm in arms:
                vals = got[arm.name]
                primary = arm.name == baseline or arm.name in list(st.get("primary") or [])
                v = verdict(
                    c.paper,
                    base,
                    vals,
                    c.tolerance,
                    seeds=st.get("rule") == "seeds",
                    primary=primary,
                    near_zero=exp.get("near_zero"),
                )
                if arm.name == baseline and v != "explained":  # the baseline explains nothing by itself
                    v = "baseline" if vals else "not run"
                out.append(
                    {
                        **key,
                        "study": name,
                        "arm": arm.name,
                        "primary": primary,
                        "n_seeds": len(vals),
                        "value": round(statistics.fmean(vals), 2) if vals else None,
                        "sd": round(statistics.stdev(vals), 2) if len(vals) > 1 else None,
                        "pi95": round(seed_interval(vals), 2) if st.get("rule") == "seeds" and len(vals) > 1 else None,
                        "verdict": v,
                    }
                )
        if not claimed:
            out.append(
                {
                    **key,
                    "study": "—",
                    "arm": "—",
                    "n_seeds": 0,
                    "value": None,
                    "sd": None,
                    "pi95": None,
                    "verdict": "not run",
                }
            )
    return pd.DataFrame(
        out,
        columns=[
            "table",
            "dataset",
            "model",
            "attack",
            "param",
            "method",
            "paper",
            "ours",
            "diff",
            "tolerance",
            "ours_from",
            "study",
            "arm",
            "primary",
            "n_seeds",
            "value",
            "sd",
            "pi95",
            "verdict",
        ],
    )
