"""The deviations report (``<out_dir>/deviations.{md,csv}``): every committed cell outside tolerance with its
verdict, each study's arms and numbers, the full rows of an arm (``full_rows``), the saturation table and the
figures of :mod:`pclc.deviation_figures`. The numbers and verdicts come from :mod:`pclc.deviations`."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from pclc.config import resolve_device
from pclc.deviation_saturation import saturation
from pclc.deviations import (
    RANK,
    applies,
    arm_results,
    arm_value,
    claim_matches,
    committed_cells,
    judge,
    table_row_specs,
)
from pclc.experiment import chosen_studies, experiment_cells, out_dir, train_cfg
from pclc.files import atomic_write_text
from pclc.headers import config_block, config_yaml, csv_header, header, trained_on_notes
from pclc.paper_data import param_eps
from pclc.reports import evaluated_on_notes, mean_interval
from pclc.store import provenance, run_key

log = logging.getLogger(__name__)


def _cell_name(attack: str, param: str) -> str:
    return attack if param_eps(param) is None else f"{attack} ε={param}"


def _ms(values, lo: float = -math.inf, hi: float = math.inf) -> str:
    """``mean ± sd [95% t interval of the mean, within lo..hi] (n=N)``; one value: ``value (n=1)``."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "—"
    m = statistics.fmean(v)
    if len(v) < 2:
        return f"{m:.1f} (n=1)"
    half = mean_interval(v)
    return f"{m:.1f} ± {statistics.stdev(v):.1f} [{max(lo, m - half):.1f}, {min(hi, m + half):.1f}] (n={len(v)})"


def to_markdown(
    cfg: DictConfig, cells: pd.DataFrame, judged: pd.DataFrame, sat: pd.DataFrame, res: pd.DataFrame
) -> str:
    exp, lines = cfg.experiment, []
    best = (
        judged.assign(rank=judged.verdict.map(RANK))
        .sort_values("rank", ascending=False, kind="stable")
        .drop_duplicates(["table", "attack", "param", "method"])
    )
    best.loc[best.verdict == "baseline", "verdict"] = "not run"  # only the paper arm ran: no test yet
    lines += [
        f"## Every cell outside tolerance ({int(cells.outside.sum())} of {len(cells)} committed cells)",
        "",
        "| table | method | cell | paper | ours | ours − paper | verdict | by | arms tried |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    claims = judged.groupby(["table", "attack", "param", "method"]).study.agg(lambda s: ", ".join(dict.fromkeys(s)))
    tried = judged[judged.n_seeds > 0].groupby(["table", "attack", "param", "method"]).size()
    for r in best.sort_values(["table", "method", "attack", "param"]).itertuples():
        cell = _cell_name(r.attack, r.param)
        studies = claims[(r.table, r.attack, r.param, r.method)]
        by = (
            f"{r.study}: {r.arm}"
            if r.verdict in ("explained", "partly")
            else ("no study claims it" if studies == "—" else f"studies: {studies}")
        )
        n = int(tried.get((r.table, r.attack, r.param, r.method), 0))
        src = getattr(r, "ours_from", "seed 0")
        mark = "" if src in ("seed 0", None) or (isinstance(src, float) and math.isnan(src)) else f" ({src})"
        lines.append(
            f"| {r.table} | {r.method} | {cell} | {r.paper:.1f} | {r.ours:.1f}{mark} | {r.diff:+.1f} | "
            f"**{r.verdict}** | {by}{'' if r.verdict != 'partly' or r.primary is not False else ' (exploratory)'}"
            f" | {n} |"
        )
    for name in chosen_studies(cfg):
        st, mine = exp.studies[name], judged[judged.study == name]
        lines += ["", f"## {st.finding}", "", f"Hypothesis: {st.hypothesis}.", ""]
        for arm in st.get("arms") or []:
            bits = [f"methods {list(arm.methods)}", f"seeds {list(arm.get('seeds') or [0])}"]
            bits += [f"training `{' '.join(arm.train)}`"] if arm.get("train") else []
            bits += (
                [f"attacks {[e['attack'] for e in OmegaConf.to_container(arm.entries)]}"] if arm.get("entries") else []
            )
            bits += [f"parameters `{json.dumps(OmegaConf.to_container(arm.params))}`"] if arm.get("params") else []
            bits += [f"first {arm.subset} test images"] if arm.get("subset") else ["full test set"]
            linf = res[(res.study == name) & (res.arm == arm.name) & res.max_linf.notna()]
            bits += (
                [f"measured max L∞ of the outputs {linf.max_linf.max():.3f}"]
                if name == "spsa_reach" and len(linf)
                else []
            )
            lines.append(f"- arm `{arm.name}`: " + "; ".join(bits))
        lines += [f"- {n}" for n in st.get("notes") or []]
        if not st.get("claims") or mine.empty:  # our own claims, or no cell outside tolerance: the arms' numbers
            if st.get("claims"):
                lines += [
                    "",
                    "No committed cell outside tolerance is claimed by this study; its arms' numbers:",
                ]
            got = res[(res.study == name) & (res.attack != "clean")]
            if len(got):
                lines += [
                    "",
                    "| arm | method | attack | eps | n | accuracy (%) |",
                    "|---|---|---|---|---|---|",
                ]
                lines += [
                    f"| {r.arm} | {r.method} | {r.attack} | {r.eps} | {int(r.n)} | {r.accuracy:.2f} |"
                    for r in got.itertuples()
                ]
            continue
        lines += [
            "",
            "| cell | paper | ours | arm | n | arm's number | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        if st.get("rule") == "seeds":
            lines.insert(
                -2,
                "The arm's number: mean ± sd [95% prediction interval for one more seed, within 0-100] over the seeds.",
            )
            lines.insert(-2, "")
        for r in mine.itertuples():
            cell = f"{r.table} {r.method} {_cell_name(r.attack, r.param)}"
            val = (
                "—"
                if r.value is None or pd.isna(r.value)
                else f"{r.value:.1f}"
                + ("" if r.sd is None or pd.isna(r.sd) else f" ± {r.sd:.1f}")
                + (
                    ""
                    if r.pi95 is None or pd.isna(r.pi95)
                    else f" [{max(0.0, r.value - r.pi95):.1f}, {min(100.0, r.value + r.pi95):.1f}]"
                )
            )
            lines.append(f"| {cell} | {r.paper:.1f} | {r.ours:.1f} | {r.arm} | {r.n_seeds} | {val} | {r.verdict} |")
        lines += full_rows(cfg, name, cells, res)
    if len(sat):
        lines += [
            "",
            "## Saturation of the trained runs (float32, full test set; mean ± sd [95% t interval of the mean] over "
            "seeds)",
            "",
            "| training | method | p_y == 1.0 (%) | all-zero CE gradient (%) | logit margin: 10% | median | 90% "
            "| PGD ε 0.1 survivors: with p_y == 1.0 / all-zero gradient / all (summed over seeds) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (arm, meth), g in sat.groupby(["training", "method"], sort=False):
            shares = f"{_ms(g.share_p_y_one, 0, 100)} | {_ms(g.share_zero_grad, 0, 100)}"  # percentages
            s = g.dropna(subset=["pgd01_survivors"]) if "pgd01_survivors" in g else g.iloc[:0]
            surv = (
                "—"
                if s.empty
                else (
                    f"{int(s.pgd01_survivors_p_y_one.sum())} / {int(s.pgd01_survivors_zero_grad.sum())}"
                    f" / {int(s.pgd01_survivors.sum())} ({len(s)} runs)"
                )
            )
            lines.append(
                f"| {arm} | {meth} | {shares} | {_ms(g.margin_q10)} | "
                f"{_ms(g.margin_median)} | {_ms(g.margin_q90)} | {surv} |"
            )
    return "\n".join(lines) + "\n"


def full_rows(cfg: DictConfig, name: str, cells: pd.DataFrame, res: pd.DataFrame) -> list[str]:
    """Each arm of the study's ``full_rows`` on every committed cell its claims cover, inside tolerance too,
    beside the study's paper arm: how many cells each puts within tolerance of the paper."""
    st, out = cfg.experiment.studies[name], []
    arms = {a.name: a for a in st.get("arms") or []}
    for arm_name in st.get("full_rows") or []:
        arm, lines, counts = arms[arm_name], [], [0, 0, 0, 0]  # cells; within tolerance: ours, paper arm, arm
        for c in cells.itertuples():
            rows = table_row_specs(c.table)
            if not any(claim_matches(cl, c) for cl in st.claims) or not applies(arm, c, rows):
                continue
            got = [
                arm_value(res[(res.study == name) & (res.arm == a) & (res.dataset == c.dataset)], arms[a], c, rows)
                if a in arms and applies(arms[a], c, rows)
                else []
                for a in (cfg.experiment.baseline_arm, arm_name)
            ]
            near = [abs(c.ours - c.paper) <= c.tolerance] + [
                bool(v) and abs(statistics.fmean(v) - c.paper) <= c.tolerance for v in got
            ]
            counts = [counts[0] + 1] + [k + n for k, n in zip(counts[1:], near)]
            lines.append(
                f"| {c.table} {c.method} {_cell_name(c.attack, c.param)} | {c.paper:.1f} | {c.ours:.1f} | "
                f"{_ms(got[0], 0, 100) if got[0] else '—'} | {_ms(got[1], 0, 100) if got[1] else '—'} | "
                f"{'✓' if near[2] else '✗'} |"
            )
        out += [
            "",
            f"Arm `{arm_name}` on every cell this study covers, inside tolerance too: within tolerance of the "
            f"paper in {counts[3]} of {counts[0]} cells (the paper arm on this machine: {counts[2]}; the committed "
            f"tables: {counts[1]}). Each number: mean ± sd [95% t interval of the mean, not a prediction "
            f"interval] (n seeds).",
            "",
            f"| cell | paper | ours | paper arm | {arm_name} | within tolerance |",
            "|---|---|---|---|---|---|",
            *lines,
        ]
    return out


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
    head = header(
        title,
        prov,
        cfg.profile,
        notes=[
            f"tolerance: {tol.clean:g} points (clean), {tol.attacked:g} points (attacked); this command ran "
            "the studies "
            f"{ran}; the others' numbers are what the run store holds (an arm not trained or evaluated says not run)",
            "ours: the committed tables, " + "; ".join(notes),
            "verdict of an arm: explained if its number is within the tolerance of the paper's; partly if it closes at "
            "least half the gap left by its study's `paper` arm (the same runs under the paper's settings, on this "
            "machine: a baseline, explained only if itself within tolerance); seeds: explained if the paper's number "
            "(one run) lies in the 95% prediction interval for one more seed, mean ± t(0.975, n-1) sd sqrt(1 + 1/n); "
            "a cell's verdict is the best of its arms'; only a study's primary arms (declared in configs/experiment/"
            "deviations.yaml: the arms its hypothesis names) can make it explained, an exploratory arm at most partly; "
            f"where the paper reports at most {exp.near_zero.paper_at_most:g}%, ours must be at most "
            f"{exp.near_zero.ours_at_most:g}% to count as within tolerance; "
            f"'arms tried': arms with a number for the cell",
            *(machines := trained_on_notes(cfg.store, [run_key(train_cfg(c, cfg)) for c in experiment_cells(cfg)])),
            # each result file once (arms share files: the paper arm is Table 1's), named by the machine it ran on
            *evaluated_on_notes(res.dropna(subset=["file"]).drop_duplicates("file")),
        ],
    )
    paths = [folder / "deviations.md", folder / "deviations.csv"]
    from pclc.deviation_figures import cw_lr_figure, saturation_figure

    fig = cw_lr_figure(cfg, cells, res, folder / "figures" / "deviations_cw_lr.png")
    sat_fig = saturation_figure(cfg, sat, res, folder / "figures" / "deviations_saturation.png")
    body = (
        to_markdown(cfg, cells, judged, sat, res)
        + (f"\n![C&W vs lr](figures/{fig.name})\n" if fig else "")
        + (f"\n![Saturation and PGD per run](figures/{sat_fig.name})\n" if sat_fig else "")
    )
    atomic_write_text(paths[0], head + body + "\n" + "\n".join(config_block(config_yaml(cfg))) + "\n")
    config = {"experiment": exp.name, "profile": cfg.profile, "studies_run": ran}
    atomic_write_text(
        paths[1], csv_header(title, prov, cfg.profile, config, paths[0].name, machines) + judged.to_csv(index=False)
    )
    if tracker is not None:
        tracker.log_table("deviations", judged)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths + [f for f in (fig, sat_fig) if f]
