"""Reports: the run store's per-example results as one DataFrame per experiment, the paper's tables in the
paper's layout (ours beside the paper's), and the provenance header every results file opens with.

Rows are (attack, param) in the paper's order; columns are (dataset, method) in the paper's order.
A cell shows ``ours (paper, diff)``, over several seeds ``mean ± sd [lo, hi] n=N (paper, diff ✓|✗)``: [lo, hi] is
the 95% prediction interval for one more seed (:func:`seed_interval`), ✓ when the paper's number lies inside it;
a cell we have not run says so, it is never blank or filled.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy import stats as scipy_stats

from pclc.config import resolve_device
from pclc.derived import substitute_cfg
from pclc.experiment import entries, eval_cfg, experiment_cells, out_dir, train_cfg
from pclc.files import atomic_write_text
from pclc.headers import config_block, config_yaml, csv_header, csv_provenance, header, trained_on_notes
from pclc.paper_data import param_eps, table_rows
from pclc.results import item_results, run_weights
from pclc.store import RunDir, provenance, run_key

log = logging.getLogger(__name__)

NOT_RUN = "not run"
KEPT = "kept"  # a cell this command did not compute, kept from the results file it rewrites


def mean_interval(values: list[float]) -> float | None:
    """Half-width of the 95% t interval of the mean of ``values``, ``t(0.975, n-1) sd / sqrt(n)`` (None under two)."""
    if len(values) < 2:
        return None
    return float(scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def seed_interval(values: list[float]) -> float | None:
    """Half-width of the 95% prediction interval for one more seed's number, ``t(0.975, n-1) sd sqrt(1 + 1/n)``
    (None under two seeds). The paper reports one run per cell, so its number is judged as one more draw from
    our seeds' distribution, not as their mean: the t interval of the mean (``ci95``) is narrower by sqrt(n + 1)
    and would call seed noise a deviation."""
    if len(values) < 2:
        return None
    n = len(values)
    return float(scipy_stats.t.ppf(0.975, n - 1) * statistics.stdev(values) * (1 + 1 / n) ** 0.5)


def combine(paper: pd.DataFrame, ours: dict[tuple[str, str, str, str], float | list[float]]) -> pd.DataFrame:
    """Add ``ours`` (keyed by dataset, method, attack, param: a number, or one per seed) and the difference to
    the paper's rows. Over several seeds a cell is their mean, with ``sd``, ``n_seeds``, ``ci95`` (the half-width
    of the t interval of the mean) and ``pi95`` (of the prediction interval for one more seed,
    :func:`seed_interval`); ``in_pi95`` says whether the paper's number lies in the latter."""
    out = paper.rename(columns={"accuracy": "paper"}).copy()
    vals = [ours.get((r.dataset, r.method, r.attack, r.param)) for r in out.itertuples()]
    vals = [None if v is None else [float(x) for x in (v if isinstance(v, list) else [v])] for v in vals]
    # a float column (cells not run are NaN, so test status from vals, not the column), in points of accuracy
    # to 2 decimals: 0.01 is one example in 10,000, the finest a test set here resolves
    means = [None if v is None else round(statistics.fmean(v), 2) for v in vals]
    out["ours"] = means
    out["diff"] = [None if o is None else round(o - p, 2) for o, p in zip(means, out.paper)]
    out["status"] = ["run" if o is not None else NOT_RUN for o in means]
    out["n_seeds"] = [0 if v is None else len(v) for v in vals]
    out["sd"] = [round(statistics.stdev(v), 2) if v is not None and len(v) > 1 else None for v in vals]
    out["ci95"] = [round(mean_interval(v), 2) if v is not None and len(v) > 1 else None for v in vals]
    pi = [None if v is None else seed_interval(v) for v in vals]
    out["pi95"] = [None if w is None else round(w, 2) for w in pi]
    out["in_pi95"] = [None if w is None else bool(abs(d) <= w) for w, d in zip(pi, out["diff"])]
    # every seed's own number, in the cells' order (seed 0 first): what a claim "at every seed" is checked against
    out["per_seed"] = [";".join(f"{x:.2f}" for x in v) if v is not None and len(v) > 1 else None for v in vals]
    return out


def _order(values) -> list:
    return list(dict.fromkeys(values))


def _row_label(attack: str, param: str) -> str:
    if attack == "clean":
        return "clean"
    if attack == "cw":
        return "cw"
    return f"{attack} ε={param}"


def to_markdown(df: pd.DataFrame) -> str:
    """The paper's layout: one row per (attack, param), one column per (dataset/model, method)."""
    cols = _order(zip(df.dataset, df.model, df.method))
    rows = _order(zip(df.attack, df.param))
    cell = {(r.dataset, r.model, r.method, r.attack, r.param): r for r in df.itertuples()}
    head = "| attack | " + " | ".join(f"{d}/{m} {meth}" for d, m, meth in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for a, p in rows:
        vals = []
        for d, m, meth in cols:
            r = cell.get((d, m, meth, a, p))
            if r is None:
                vals.append("—")  # the paper has no such cell
            elif r.ours is None or pd.isna(r.ours):
                vals.append(f"{NOT_RUN} (paper {r.paper:.1f})")
            else:
                mark = "†" if getattr(r, "status", "run") == KEPT else ""
                n = getattr(r, "n_seeds", 1)
                if n is not None and not pd.isna(n) and int(n) > 1:  # mean ± sd over seeds, judged by the 95% PI
                    inside = ("✓" if r.in_pi95 else "✗") if int(n) >= 3 else "n<3: no verdict"  # [0, 100] says nothing
                    lo, hi = max(0.0, r.ours - r.pi95), min(100.0, r.ours + r.pi95)  # accuracy's own range
                    vals.append(
                        f"**{r.ours:.1f}** ± {r.sd:.1f} [{lo:.1f}, {hi:.1f}] "
                        f"n={int(n)}{mark} ({r.paper:.1f}, {r.diff:+.1f} {inside})"
                    )
                else:
                    vals.append(f"**{r.ours:.1f}**{mark} ({r.paper:.1f}, {r.diff:+.1f})")
        lines.append(f"| {_row_label(a, p)} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# The store's results as one DataFrame, and the tables built from it
# ------------------------------------------------------------------------------------------
EVAL_COLUMNS = [
    "dataset",
    "model",
    "method",
    "run",
    "attack",
    "source",
    "eps",
    "n",
    "clean_accuracy",
    "adv_accuracy",
    "seconds",
    "device",
    "file",
]


def evaluations(cfg: DictConfig) -> pd.DataFrame:
    """One row per finished evaluation file of the experiment's cells (its suite, its profile): the
    per-example JSON files of the run store, read once."""
    exp, rows = cfg.experiment, []
    for cell in experiment_cells(cfg):
        ec = eval_cfg(cell, cfg, exp.suite)
        run = RunDir(cfg.store, run_key(ec))
        if run_weights(run) is None:  # not finished, or its weights are not those it was trained to
            continue
        for e, r in item_results(run, ec, entries(ec)):
            rows.append(
                {
                    "dataset": cell.dataset,
                    "model": cell.model,
                    "method": cell.method,
                    "run": run.key,
                    "attack": e.config,
                    "source": e.source,
                    "eps": e.eps,
                    "n": r["n"],
                    "clean_accuracy": r["clean_accuracy"],
                    "adv_accuracy": r["accuracy"],
                    "seconds": r["seconds"],
                    "device": r["device"],
                    "file": r["file"],
                }
            )
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def collect_table(cfg: DictConfig, ev: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our numbers for every paper cell of the table, from the store (nothing is run): clean accuracy is the
    run's final test accuracy on the full test set, else the evaluations' (on the subset). ``ev``: the
    experiment's evaluations when the caller has read them already."""
    exp = cfg.experiment
    rows = table_rows(exp.table, list(cfg.datasets) if cfg.get("datasets") else None, exp.get("attacks"))
    ev = evaluations(cfg) if ev is None else ev
    ours: dict[tuple[str, str, str, str], list[float]] = {}
    for cell in experiment_cells(cfg):
        ec = eval_cfg(cell, cfg, exp.suite)
        run = RunDir(cfg.store, run_key(ec))
        mine = ev[(ev.dataset == cell.dataset) & (ev.method == cell.method) & (ev.run == run.key)]
        clean = None
        for r in rows[(rows.dataset == cell.dataset) & (rows.method == cell.method)].itertuples():
            if r.attack == "clean":
                continue
            spec, eps = exp.rows[r.attack], param_eps(r.param)
            hit = mine[
                (mine.source == spec.get("source", "white"))
                & (mine.attack == spec.attack)
                & (mine.eps.isna() if eps is None else mine.eps == eps)
            ]
            if len(hit):
                ours.setdefault((cell.dataset, cell.method, r.attack, r.param), []).append(
                    float(hit.adv_accuracy.iloc[0])
                )
                clean = float(hit.clean_accuracy.iloc[0])
        if ec.eval.subset is None and run_weights(run) is not None:
            clean = run.read_summary()["test_accuracy"]
        if clean is not None:
            ours.setdefault((cell.dataset, cell.method, "clean", "-"), []).append(clean)
    return combine(rows, ours)


def substitute_run(cell, cfg: DictConfig, suite: str) -> tuple[DictConfig, RunDir] | None:
    """The black-box substitute (training config, run) a cell's transfer attacks under ``suite`` are crafted on;
    None when the suite has no transfer attack."""
    ec = eval_cfg(cell, cfg, suite)
    if not any(e.get("source") == "transfer" for e in ec.suite.entries):
        return None
    sc = substitute_cfg(train_cfg(cell, cfg), ec.eval.substitute)
    return sc, RunDir(cfg.store, run_key(sc))


def substitute_keys(cfg: DictConfig) -> list[str]:
    """The run keys of the table's black-box substitutes."""
    return [
        found[1].key
        for cell in experiment_cells(cfg)
        if (found := substitute_run(cell, cfg, cfg.experiment.suite)) is not None
    ]


def substitute_notes(cfg: DictConfig) -> list[str]:
    """One line per black-box substitute the table's transfer attacks come from: its run and clean accuracy."""
    subs: dict[str, str] = {}
    for cell in experiment_cells(cfg):
        found = substitute_run(cell, cfg, cfg.experiment.suite)
        if found is None:
            continue
        sc, run = found
        acc = f"clean test accuracy {run.read_summary()['test_accuracy']:.2f}%" if run.finished else "not trained"
        seed = f"/s{cell.seed}" if cell.seed else ""
        subs[run.key] = (
            f"substitute for `{cell.dataset}/{cell.model}{seed}`: `{cell.dataset}/{sc.model.name}/ce` → run "
            f"`{run.key}` ({acc})"
        )
    return list(subs.values())


def keep_previous(df: pd.DataFrame, csv: Path, table: str, attacks=None) -> tuple[pd.DataFrame, str | None]:
    """``df`` with the cells of the results file it replaces that this command did not compute (other
    datasets, attacks not run here): a restricted or partial run never drops numbers results/ holds. Those
    cells keep their value with status ``kept``; returns the table and a note naming the file's provenance."""
    if not csv.exists():
        return df, None
    old = pd.read_csv(csv, comment="#", dtype={"param": str})
    head = csv_provenance(csv)
    key = ["dataset", "model", "method", "attack", "param"]
    had = {tuple(r[k] for k in key): r for r in old.to_dict("records") if r["status"] in ("run", KEPT)}
    datasets = list(dict.fromkeys([*df.dataset, *old.dataset]))
    rows = table_rows(table, None, attacks)
    rows = rows[rows.dataset.isin(datasets)]
    mine = {tuple(r[k] for k in key): r for r in df.to_dict("records")}
    out, kept = [], 0
    for r in rows.rename(columns={"accuracy": "paper"}).to_dict("records"):
        k = tuple(r[c] for c in key)
        new = mine.get(k)
        if new is not None and new["status"] == "run":
            out.append(new)
        elif k in had:
            kept += 1
            stats = {c: had[k][c] for c in ("n_seeds", "sd", "ci95", "pi95", "in_pi95") if c in had[k]}
            out.append(
                {
                    **r,
                    **stats,
                    "ours": float(had[k]["ours"]),
                    "diff": round(float(had[k]["ours"]) - r["paper"], 2),
                    "status": KEPT,
                }
            )
        else:
            out.append(new if new is not None else {**r, "ours": None, "diff": None, "status": NOT_RUN})
    if not kept:
        return df, None
    note = (
        f"† {kept} cells kept from the file this command rewrote (not computed by it): commit "
        f"`{head.get('commit', '?')}`, {head.get('date', '?')}, `{head.get('command', '?')}`"
    )
    return pd.DataFrame(out, columns=list(df.columns)), note


def protocol_of(cfg: DictConfig) -> str:
    """What a table's numbers were computed under: the profile, and anything that departs from it (a dataset
    map, extra training/evaluation overrides). Two tables of other protocols never share a file."""
    parts = [str(cfg.profile)]
    if cfg.get("dataset_map"):
        parts.append("dataset_map " + json.dumps(OmegaConf.to_container(cfg.dataset_map), sort_keys=True))
    if cfg.get("extra"):
        parts.append("extra " + json.dumps(list(cfg.extra)))
    return "; ".join(parts)


def _file_seeds(config: dict) -> list[int]:
    """A table file's seeds: its config's ``seeds``, else read from its run keys (files before seeds were
    recorded)."""
    import re

    if "seeds" in config:
        return sorted(int(s) for s in config["seeds"])
    return sorted({int(m.group(1)) for k in (config.get("runs") or {}).values() if (m := re.search(r"-s(\d+)-", k))})


def check_table_file(cfg: DictConfig) -> None:
    """Refuse, before any work, to rewrite a table file holding another protocol or another set of seeds:
    its cells would be kept beside ours under one header (or its seeds' statistics lost)."""
    csv = out_dir(cfg) / f"{cfg.experiment.name}.csv"
    if not csv.exists():
        return
    head = csv_provenance(csv)
    ours, theirs = protocol_of(cfg), head.get("protocol", "?")
    if theirs != ours:
        raise ValueError(
            f"{csv} holds protocol '{theirs}', this command's is '{ours}': its cells would mix with "
            f"ours; pass another out_dir="
        )
    config = json.loads(head.get("config", "{}").split(" (resolved config", 1)[0] or "{}")
    seeds, have = sorted(int(s) for s in (cfg.get("seeds") or [0])), _file_seeds(config)
    if have and have != seeds:
        raise ValueError(
            f"{csv} holds seeds {have}, this command's are {seeds}: pass the same seeds (a seed's files "
            f"are reused) or another out_dir="
        )


def evaluated_on_notes(ev: pd.DataFrame) -> list[str]:
    """Which machine computed the table's attacks, and for how long (each evaluation file's own record): the
    time a reader needs to recompute the table from the zoo's weights on such a machine."""
    lines = []
    for device, part in ev.groupby(ev.device.fillna("device not recorded"), sort=True):
        minutes = part.seconds.fillna(0).sum() / 60
        lines.append(
            f"attacks computed on: {device} ({len(part)} result files, {minutes:.1f} min of attack time: wall "
            "clock as each file recorded it, longer where the machine was shared)"
        )
    return lines


def write_table(cfg: DictConfig, tracker=None) -> list[Path]:
    """``<out_dir>/<experiment>.{md,csv}``: the paper's table with ours beside it, headed by provenance. The
    CSV (what a later restricted run keeps cells from) is written before the markdown, under a lock."""
    from pclc.locks import held

    exp = cfg.experiment
    folder = out_dir(cfg)
    md, csv = folder / f"{exp.name}.md", folder / f"{exp.name}.csv"
    check_table_file(cfg)
    with held(folder / f".{exp.name}.lock", f"results table {csv}"):
        ev = evaluations(cfg)  # read once: the table's numbers and the machine line come from the same files
        df, kept = keep_previous(collect_table(cfg, ev), csv, exp.table, exp.get("attacks"))
        prov = provenance(resolve_device(cfg.device))
        protocol = protocol_of(cfg)
        title = f"{exp.title}" + ("" if protocol == "full" else f" — {protocol}, NOT the paper's protocol")
        cells = experiment_cells(cfg)
        runs = {c.label: run_key(train_cfg(c, cfg)) for c in cells}
        head = header(
            title,
            prov,
            protocol,
            notes=[
                f"attack suite: `{exp.suite}`",
                "runs: " + "; ".join(f"`{k}` → run `{v}`" for k, v in runs.items()),
                *substitute_notes(cfg),
                *(
                    machines := [
                        *trained_on_notes(cfg.store, [*runs.values(), *substitute_keys(cfg)]),
                        *evaluated_on_notes(ev),
                    ]
                ),
                *([kept] if kept else []),
                *(
                    [
                        f"seeds {list(cfg.seeds)}: mean ± sd [95% prediction interval for one more seed, "
                        "within 0-100] n; "
                        "✓ / ✗: the paper's number (one run) is inside / outside that interval"
                    ]
                    if (df.n_seeds > 1).any()
                    else []
                ),
            ],
        )
        config = {
            "experiment": exp.name,
            "suite": exp.suite,
            "profile": cfg.profile,
            "seeds": sorted(int(s) for s in (cfg.get("seeds") or [0])),
            "datasets": cfg.get("datasets") and list(cfg.datasets),
            "runs": runs,
        }
        atomic_write_text(csv, csv_header(title, prov, protocol, config, md.name, machines) + df.to_csv(index=False))
        atomic_write_text(md, head + to_markdown(df) + "\n" + "\n".join(config_block(config_yaml(cfg))) + "\n")
    if tracker is not None:
        tracker.log_table(exp.name, df)
    log.info("wrote %s and %s", md, csv)
    return [md, csv]
