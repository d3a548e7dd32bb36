"""The deviations study (configs/experiment/deviations.yaml): every committed cell of the chosen datasets in
Tables 1, 3 and 5 outside tolerance of the paper, the studies that claim it, their arms' numbers (from the run
store: nothing here trains or attacks) and a verdict computed from the numbers.

Writes ``<out_dir>/deviations.md`` and ``.csv`` (one row per cell, study and arm), the saturation of every
trained arm over seeds (and of transfer substitutes), ``figures/deviations_cw_lr.png`` (C&W accuracy against its
learning rate) and ``figures/deviations_saturation.png`` (PGD survival against saturation, one point per run), drawn
by :mod:`pclc.deviation_figures`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from pclc.config import compose, resolve_device
from pclc.experiment import cell_suites, chosen_studies, entries, eval_cfg, eval_name, experiment_cells, out_dir, train_cfg
from pclc.io import atomic_write_json, atomic_write_text
from pclc.paper_data import paper_tables
from pclc.reports import (config_block, config_yaml, csv_header, csv_provenance, header, mean_interval, seed_interval,
                          substitute_run)
from pclc.store import RunDir, load_run, provenance, run_key

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
        frames.append(df[df.dataset.isin(datasets) & df.status.isin(["run", "kept"])].assign(table=table))
        p = csv_provenance(path)
        notes.append(f"{table}: `{path}` (commit `{p.get('commit', '?')}`, {p.get('date', '?')})")
    if not frames:
        return pd.DataFrame(columns=["table", "dataset", "model", "attack", "param", "method", "paper", "ours",
                                     "diff", "tolerance", "outside"]), notes
    df = pd.concat(frames, ignore_index=True)
    tol = exp.tolerance
    df["tolerance"] = [float(tol.clean if a == "clean" else tol.attacked) for a in df.attack]
    df["outside"] = df["diff"].abs() > df.tolerance
    return df, notes


def _matches(claim, row) -> bool:
    for key in ("table", "method", "attack"):
        want = claim.get(key)
        if want is not None and getattr(row, key) not in ([want] if isinstance(want, str) else list(want)):
            return False
    return True


def _rows_of(table: str) -> dict:
    return OmegaConf.to_container(compose("reproduce", [f"experiment={table}"]).experiment.rows)


def arm_results(cfg: DictConfig) -> pd.DataFrame:
    """One row per finished evaluation (and per trained run: its clean accuracy) of the chosen arms."""
    rows = []
    for cell in experiment_cells(cfg):
        study, arm = cell.arm.split(".", 1)
        run = RunDir(cfg.store, run_key(train_cfg(cell, cfg)))
        if not run.finished:
            continue
        base = {"study": study, "arm": arm, "dataset": cell.dataset, "method": cell.method, "seed": cell.seed,
                "run": run.key}
        rows.append({**base, "attack": "clean", "source": "white", "eps": None, "n": None,
                     "accuracy": run.read_summary()["test_accuracy"], "max_linf": None})
        for ec in [eval_cfg(cell, cfg, suite) for suite in cell_suites(cell, cfg)]:
            for e in entries(ec):
                f = run.eval / f"{eval_name(ec, e)}.json"
                if f.exists():
                    r = json.loads(f.read_text())
                    rows.append({**base, "attack": e.config, "source": e.source, "eps": e.eps, "n": r["n"],
                                 "accuracy": r["adv_accuracy"], "max_linf": r.get("max_linf")})
    return pd.DataFrame(rows, columns=["study", "arm", "dataset", "method", "seed", "run", "attack", "source", "eps",
                                       "n", "accuracy", "max_linf"])


def _arm_value(res: pd.DataFrame, arm, cell, table_rows: dict) -> list[float]:
    """The arm's numbers (one per seed) at a paper cell: its attack standing for the cell's row."""
    if cell.attack == "clean":
        hit = res[(res.method == cell.method) & (res.attack == "clean")]
        return [float(v) for v in hit.accuracy]
    spec = table_rows.get(cell.attack) or {}
    attack = (arm.get("rows") or {}).get(cell.attack) or spec.get("attack")
    eps = None if cell.param in ("-", "0.0") else float(cell.param)
    hit = res[(res.method == cell.method) & (res.attack == attack) & (res.source == spec.get("source", "white"))
              & (res.eps.isna() if eps is None else res.eps == eps)]
    return [float(v) for v in hit.accuracy]


def _applies(arm, cell, table_rows: dict) -> bool:
    """Whether an arm has a number for the cell: it runs the cell's method, and an attack of its entries stands
    for the cell's row (the clean row: any arm that trains)."""
    if arm.get("methods") is not None and cell.method not in list(arm.methods):
        return False
    if cell.attack == "clean":
        return True
    attack = (arm.get("rows") or {}).get(cell.attack) or (table_rows.get(cell.attack) or {}).get("attack")
    return not arm.get("entries") or attack in {e["attack"] for e in OmegaConf.to_container(arm.entries)}


def verdict(paper: float, ours: float, values: list[float], tolerance: float, seeds: bool = False) -> str:
    """explained / partly / not explained / not run (the rules in configs/experiment/deviations.yaml)."""
    if seeds:
        if len(values) < 2:
            return "not run"
        return "explained" if abs(statistics.fmean(values) - paper) <= seed_interval(values) else "not explained"
    if not values:
        return "not run"
    v = statistics.fmean(values)
    if abs(v - paper) <= tolerance:
        return "explained"
    return "partly" if abs(v - paper) <= abs(ours - paper) / 2 else "not explained"


def judge(cfg: DictConfig, cells: pd.DataFrame, res: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell outside tolerance, study claiming it, arm): the arm's numbers and verdict. A cell no
    chosen study claims gets one row with study "—" and verdict "not run": no cell is left unlisted."""
    exp, paper, out = cfg.experiment, paper_tables(), []
    rows_of = {t: _rows_of(t) for t in exp.tables}
    for c in cells[cells.outside].itertuples():
        key = {"table": c.table, "dataset": c.dataset, "model": c.model, "attack": c.attack, "param": c.param,
               "method": c.method, "paper": c.paper, "ours": c.ours, "diff": c.diff, "tolerance": c.tolerance}
        claimed = False
        for name in chosen_studies(cfg):
            st = exp.studies[name]
            if not any(_matches(cl, c) for cl in st.get("claims") or []):
                continue
            claimed = True
            if st.get("reference"):
                ref = paper[(paper.table == st.reference.table) & (paper.dataset == c.dataset)
                            & (paper.attack == c.attack) & (paper.param == c.param) & (paper.method == st.reference.method)]
                val = [float(ref.accuracy.iloc[0])] if len(ref) else []
                v = ("explained" if val and abs(c.ours - val[0]) <= c.tolerance else "not explained") if val else "not run"
                out.append({**key, "study": name, "arm": f"paper {st.reference.table}", "n_seeds": len(val),
                            "value": val[0] if val else None, "sd": None, "pi95": None, "verdict": v})
                continue
            arms = [a for a in st.get("arms") or [] if _applies(a, c, rows_of[c.table])]
            if not arms:  # claimed, but no arm runs this cell: listed as not run
                out.append({**key, "study": name, "arm": "—", "n_seeds": 0, "value": None, "sd": None, "pi95": None,
                            "verdict": "not run"})
            got = {}
            for arm in arms:
                mine = res[(res.study == name) & (res.arm == arm.name) & (res.dataset == c.dataset)]
                got[arm.name] = _arm_value(mine, arm, c, rows_of[c.table])
            base = statistics.fmean(got["paper"]) if got.get("paper") else c.ours  # the same runs' paper settings
            for arm in arms:
                vals = got[arm.name]
                v = verdict(c.paper, base, vals, c.tolerance, seeds=name == "seeds")
                if arm.name == "paper" and v != "explained":  # the baseline explains nothing by itself
                    v = "baseline" if vals else "not run"
                out.append({**key, "study": name, "arm": arm.name, "n_seeds": len(vals),
                            "value": round(statistics.fmean(vals), 2) if vals else None,
                            "sd": round(statistics.stdev(vals), 2) if len(vals) > 1 else None,
                            "pi95": round(seed_interval(vals), 2) if name == "seeds" and len(vals) > 1 else None,
                            "verdict": v})
        if not claimed:
            out.append({**key, "study": "—", "arm": "—", "n_seeds": 0, "value": None, "sd": None, "pi95": None,
                        "verdict": "not run"})
    return pd.DataFrame(out, columns=["table", "dataset", "model", "attack", "param", "method", "paper", "ours", "diff",
                                      "tolerance", "study", "arm", "n_seeds", "value", "sd", "pi95", "verdict"])


def _saturation_of(run: RunDir, root: str, device) -> dict[str, float]:
    """pclc.audit's float32 saturation probe of a finished run on its full test set, cached in the run directory
    as ``saturation.json`` (beside eval/, whose files are attack results only)."""
    from pclc.audit.run import saturation_probe
    from pclc.data import eval_tensors

    path = run.path / "saturation.json"
    if path.exists():
        return json.loads(path.read_text())
    run_cfg, model = load_run(run, device)
    run_cfg.dataset.root = root
    x, y = eval_tensors(run_cfg.dataset, None, device)
    sat = {k: v for k, v in saturation_probe(model, x, y).items() if k != "margin_hist"}
    atomic_write_json(path, {**sat, "weights": run.read_summary().get("weights")})
    return sat


def saturation(cfg: DictConfig) -> pd.DataFrame:
    """Float32 saturation of every trained arm run, and of the CE substitute transfer arms craft on (finding 6:
    is the substitute saturated like our CE target?), on the full test set."""
    device, rows, seen = resolve_device(cfg.device), [], set()
    for cell in experiment_cells(cfg):
        tc = train_cfg(cell, cfg)
        runs = [(cell.arm if cell.train_extra else "the paper's protocol", cell.method, RunDir(cfg.store, run_key(tc)))]
        for suite in cell_suites(cell, cfg):
            found = substitute_run(cell, cfg, suite)
            if found is not None:
                sc, run = found
                runs.append((f"transfer substitute ({sc.model.name})", sc.loss.name, run))
        for training, method, run in runs:
            if not run.finished or run.key in seen:
                continue
            seen.add(run.key)
            sat = _saturation_of(run, tc.dataset.root, device)
            rows.append({"training": training, "method": method, "seed": cell.seed, "run": run.key,
                         "share_p_y_one": 100 * sat["share_p_y_one"], "share_zero_grad": 100 * sat["share_zero_grad"],
                         "margin_q10": sat["margin_q10"], "margin_median": sat["margin_median"],
                         "margin_q90": sat["margin_q90"]})
    return pd.DataFrame(rows, columns=["training", "method", "seed", "run", "share_p_y_one", "share_zero_grad",
                                       "margin_q10", "margin_median", "margin_q90"])


def _cell_name(attack: str, param: str) -> str:
    return attack if param in ("-", "0.0") else f"{attack} ε={param}"


def _ms(values) -> str:
    """``mean ± sd [95% t interval of the mean] (n=N)``; one value: ``value (n=1)``."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "—"
    m = statistics.fmean(v)
    if len(v) < 2:
        return f"{m:.1f} (n=1)"
    half = mean_interval(v)
    return f"{m:.1f} ± {statistics.stdev(v):.1f} [{m - half:.1f}, {m + half:.1f}] (n={len(v)})"


def to_markdown(cfg: DictConfig, cells: pd.DataFrame, judged: pd.DataFrame, sat: pd.DataFrame,
                res: pd.DataFrame) -> str:
    exp, lines = cfg.experiment, []
    best = judged.assign(rank=judged.verdict.map(RANK)).sort_values("rank", ascending=False, kind="stable") \
        .drop_duplicates(["table", "attack", "param", "method"])
    best.loc[best.verdict == "baseline", "verdict"] = "not run"  # only the paper arm ran: no test yet
    lines += [f"## Every cell outside tolerance ({int(cells.outside.sum())} of {len(cells)} committed cells)", "",
              "| table | method | cell | paper | ours | ours − paper | verdict | by |", "|---|---|---|---|---|---|---|---|"]
    claims = judged.groupby(["table", "attack", "param", "method"]).study.agg(lambda s: ", ".join(dict.fromkeys(s)))
    for r in best.sort_values(["table", "method", "attack", "param"]).itertuples():
        cell = _cell_name(r.attack, r.param)
        studies = claims[(r.table, r.attack, r.param, r.method)]
        by = f"{r.study}: {r.arm}" if r.verdict in ("explained", "partly") else \
            ("no study claims it" if studies == "—" else f"studies: {studies}")
        lines.append(f"| {r.table} | {r.method} | {cell} | {r.paper:.1f} | {r.ours:.1f} | {r.diff:+.1f} | "
                     f"**{r.verdict}** | {by} |")
    for name in chosen_studies(cfg):
        st, mine = exp.studies[name], judged[judged.study == name]
        lines += ["", f"## {st.finding}", "", f"Hypothesis: {st.hypothesis}.", ""]
        for arm in st.get("arms") or []:
            bits = [f"methods {list(arm.methods)}", f"seeds {list(arm.get('seeds') or [0])}"]
            bits += [f"training `{' '.join(arm.train)}`"] if arm.get("train") else []
            bits += [f"attacks {[e['attack'] for e in OmegaConf.to_container(arm.entries)]}"] if arm.get("entries") else []
            bits += [f"parameters `{json.dumps(OmegaConf.to_container(arm.params))}`"] if arm.get("params") else []
            bits += [f"first {arm.subset} test images"] if arm.get("subset") else ["full test set"]
            linf = res[(res.study == name) & (res.arm == arm.name) & res.max_linf.notna()]
            bits += [f"measured max L∞ of the outputs {linf.max_linf.max():.3f}"] if name == "spsa_reach" and len(linf) else []
            lines.append(f"- arm `{arm.name}`: " + "; ".join(bits))
        lines += [f"- {n}" for n in st.get("notes") or []]
        if not st.get("claims") or mine.empty:  # our own claims, or no cell outside tolerance: the arms' numbers
            if st.get("claims"):
                lines += ["", "No committed cell outside tolerance is claimed by this study; its arms' numbers:"]
            got = res[(res.study == name) & (res.attack != "clean")]
            if len(got):
                lines += ["", "| arm | method | attack | eps | n | accuracy (%) |", "|---|---|---|---|---|---|"]
                lines += [f"| {r.arm} | {r.method} | {r.attack} | {r.eps} | {int(r.n)} | {r.accuracy:.2f} |"
                          for r in got.itertuples()]
            continue
        lines += ["", "| cell | paper | ours | arm | n | arm's number | verdict |", "|---|---|---|---|---|---|---|"]
        if name == "seeds":
            lines.insert(-2, "The arm's number: mean ± sd [95% prediction interval for one more seed] over the seeds.")
            lines.insert(-2, "")
        for r in mine.itertuples():
            cell = f"{r.table} {r.method} {_cell_name(r.attack, r.param)}"
            val = "—" if r.value is None or pd.isna(r.value) else f"{r.value:.1f}" + (
                "" if r.sd is None or pd.isna(r.sd) else f" ± {r.sd:.1f}") + (
                "" if r.pi95 is None or pd.isna(r.pi95) else f" [{r.value - r.pi95:.1f}, {r.value + r.pi95:.1f}]")
            lines.append(f"| {cell} | {r.paper:.1f} | {r.ours:.1f} | {r.arm} | {r.n_seeds} | {val} | {r.verdict} |")
    if len(sat):
        lines += ["", "## Saturation of the trained runs (float32, full test set; mean ± sd [95% t interval of the mean] over "
                  "seeds)", "",
                  "| training | method | p_y == 1.0 (%) | all-zero CE gradient (%) | logit margin: 10% | median | 90% |",
                  "|---|---|---|---|---|---|---|"]
        for (arm, meth), g in sat.groupby(["training", "method"], sort=False):
            lines.append(f"| {arm} | {meth} | {_ms(g.share_p_y_one)} | {_ms(g.share_zero_grad)} | {_ms(g.margin_q10)} | "
                         f"{_ms(g.margin_median)} | {_ms(g.margin_q90)} |")
    return "\n".join(lines) + "\n"


def write(cfg: DictConfig, tracker=None) -> list[Path]:
    """``<out_dir>/deviations.{md,csv}`` and the C&W figure."""
    exp, folder = cfg.experiment, out_dir(cfg)
    ran = chosen_studies(cfg)
    cfg = cfg.copy()
    with open_dict(cfg):  # the report covers every study: what the store holds (``studies``, ``arms``: what runs)
        cfg.studies = cfg.arms = None
    cells, notes = committed_cells(cfg)
    res = arm_results(cfg)
    judged = judge(cfg, cells, res)
    sat = saturation(cfg)
    prov = provenance(resolve_device(cfg.device))
    title = exp.title if cfg.profile == "full" else f"{exp.title} — {cfg.profile} profile, NOT the paper's protocol"
    tol = exp.tolerance
    head = header(title, prov, cfg.profile, notes=[
        f"tolerance: {tol.clean:g} points (clean), {tol.attacked:g} points (attacked); this command ran the studies "
        f"{ran}; the others' numbers are what the run store holds (an arm not trained or evaluated says not run)",
        "ours: the committed tables, " + "; ".join(notes),
        "verdict of an arm: explained if its number is within the tolerance of the paper's; partly if it closes at "
        "least half the gap left by its study's `paper` arm (the same runs under the paper's settings, on this "
        "machine: a baseline, explained only if itself within tolerance); seeds: explained if the paper's number "
        "(one run) lies in the 95% prediction interval for one more seed, mean ± t(0.975, n-1) sd sqrt(1 + 1/n); "
        "a cell's verdict is the best of its arms'"])
    paths = [folder / "deviations.md", folder / "deviations.csv"]
    from pclc.deviation_figures import cw_lr_figure, saturation_figure

    fig = cw_lr_figure(cfg, cells, res, folder / "figures" / "deviations_cw_lr.png")
    sat_fig = saturation_figure(cfg, sat, res, folder / "figures" / "deviations_saturation.png")
    body = to_markdown(cfg, cells, judged, sat, res) + (f"\n![C&W vs lr](figures/{fig.name})\n" if fig else "") \
        + (f"\n![Saturation and PGD per run](figures/{sat_fig.name})\n" if sat_fig else "")
    atomic_write_text(paths[0], head + body + "\n" + "\n".join(config_block(config_yaml(cfg))) + "\n")
    config = {"experiment": exp.name, "profile": cfg.profile, "studies_run": ran}
    atomic_write_text(paths[1], csv_header(title, prov, cfg.profile, config, paths[0].name) + judged.to_csv(index=False))
    if tracker is not None:
        tracker.log_table("deviations", judged)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths + [f for f in (fig, sat_fig) if f]
