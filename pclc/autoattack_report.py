"""``experiment=autoattack``'s report: the reference AutoAttack's robust accuracy on every model of the result set,
mean ± sd over seeds beside the paper's PGD on the same weights and the paper's own PGD number
(``results/autoattack.{md,csv}``), robust accuracy against eps (``results/figures/autoattack_eps.png``), and
RobustBench's flat record per model (``results/autoattack/<model>.json``).
Every number passes :mod:`pclc.results`' invariant (weights and per-example records agree)."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pclc import robustbench
from pclc.config import compose, resolve_device
from pclc.experiment import entries, eval_cfg, experiment_cells, out_dir, train_cfg
from pclc.files import atomic_savefig, atomic_write_json, atomic_write_text
from pclc.headers import config_block, config_yaml, csv_header, header, trained_on_notes
from pclc.paired import comparison_lines
from pclc.paper_data import paper_tables
from pclc.reports import evaluated_on_notes
from pclc.results import item_results, run_weights
from pclc.store import RunDir, provenance, provenance_lines, run_key
from pclc.zoo import zoo_name

log = logging.getLogger(__name__)

BASE = ["dataset", "model", "method", "recipe", "seed", "name", "run", "weights", "eps", "n", "clean_accuracy"]


def columns(attacks) -> list[str]:
    """The CSV's columns: who, AutoAttack, and each of the paper's attacks here and in the paper."""
    here, paper = [f"{a}_here" for a in attacks], [f"{a}_paper" for a in attacks]
    return [*BASE, "autoattack", "square_only", *here, "strongest_here", "here_n", *paper, "seconds", "device"]


def _numbers(cell, cfg: DictConfig, suite: str) -> dict[str, dict[float, dict]]:
    """{attack: {eps: result}} of the cell's run under ``suite``, each checked; one compose and one read per cell."""
    ec = eval_cfg(cell, cfg, suite)
    run = RunDir(cfg.store, run_key(ec))
    out: dict[str, dict[float, dict]] = {}
    for e, r in item_results(run, ec, [e for e in entries(ec) if e.source == "white"]):
        out.setdefault(e.config, {})[float(e.eps)] = r
    return out


def _paper_number(paper: pd.DataFrame, cell, attack: str, eps: float, table: str) -> float | None:
    """The paper's number for the cell's method under ``attack`` at ``eps``: from ``table`` (the reported suite's)
    when it has one, else from any table (Table 5 for the adversarially trained methods)."""
    p = paper[
        (paper.dataset == cell.dataset)
        & (paper.method == cell.method)
        & (paper.attack == attack)
        & (paper.param.astype(str) == f"{eps:g}")
    ]
    p = p[p.table == table] if (p.table == table).any() else p
    return float(p.accuracy.iloc[0]) if len(p) else None


def collect(cfg: DictConfig) -> pd.DataFrame:
    exp, paper, rows = cfg.experiment, paper_tables(), []
    attacks = list(exp.reported.attacks)
    for cell in experiment_cells(cfg):
        tc = train_cfg(cell, cfg)
        run = RunDir(cfg.store, run_key(tc))
        weights = run_weights(run)
        if weights is None:
            continue
        aa = {eps: r for by_eps in _numbers(cell, cfg, exp.suite).values() for eps, r in by_eps.items()}
        reported = _numbers(cell, cfg, exp.reported.suite)  # as the table computes them
        here = {a: reported.get(a, {}) for a in attacks}
        recipe = cell.arm.rsplit(".", 1)[-1] if cell.arm else "paper"
        for eps, r in sorted(aa.items()):
            got = {a: here[a][eps] for a in attacks if eps in here[a]}
            rows.append(
                {
                    "dataset": cell.dataset,
                    "model": cell.model,
                    "method": cell.method,
                    "recipe": recipe,
                    "seed": cell.seed,
                    "name": zoo_name(
                        tc.dataset.name, tc.model.name, cell.method, cell.seed, recipe if cell.train_extra else ""
                    ),
                    "run": run.key,
                    "weights": weights,
                    "eps": eps,
                    "n": r["n"],
                    "clean_accuracy": r["clean_accuracy"],
                    "autoattack": r["accuracy"],
                    "square_only": r["square_only"],  # % only Square broke: the gradient attacks missed them
                    **{f"{a}_here": got[a]["accuracy"] if a in got else None for a in attacks},
                    "strongest_here": min((g["accuracy"] for g in got.values()), default=None),
                    "here_n": min((g["n"] for g in got.values()), default=None),
                    **{
                        f"{a}_paper": _paper_number(paper, cell, a, eps, exp.reported.suite)
                        if recipe == "paper"
                        else None
                        for a in attacks
                    },
                    "seconds": r["seconds"],  # AutoAttack's own time at this eps (the planner's figure to check)
                    "device": r["device"],
                }
            )
    return pd.DataFrame(rows, columns=columns(attacks))


def black_box_flag(square_only: pd.Series, tolerance: float) -> dict[str, bool]:
    """The audit's ``white_box_beats_black_box`` from AutoAttack's stage records of one model (one value per eps):
    it fails where Square alone broke more than ``tolerance`` % of the images; not judged unless every eps has it."""
    if square_only.empty or square_only.isna().any():
        return {}
    return {"white_box_beats_black_box": bool(square_only.max() <= tolerance)}


def verdicts(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Per model, the audit's verdict (pclc.audit.checks: its rules and configs/audit.yaml's thresholds) with
    AutoAttack as the worst case: the paper's PGD here against it, the float32 saturation probe of the weights
    (cached in the run), the CE model of the same seed and recipe as the reference level, and catastrophic
    overfitting for FGSM-trained models (FGSM here against the paper's PGD), and AutoAttack's own black-box check:
    white-box beats black-box unless Square alone breaks more than the audit's tolerance of the images its
    gradient attacks left robust, at some eps (judged only where every eps holds the stage record). The audit's
    other sanity flags (transfer, step ladder) are not run here, so they cannot fire."""
    from pclc.audit.checks import explain_verdict, verdict, verdict_evidence
    from pclc.deviation_saturation import saturation_of

    th = dict(compose("audit", []).audit.thresholds)
    device, rows = resolve_device(cfg.device), []
    for run_key_, g in df.groupby("run", sort=False):
        first = g.iloc[0]
        who = {"method": first.method, "recipe": first.recipe, "seed": first.seed, "run": run_key_}
        judged = g[g.pgd_here.notna()]
        if judged.empty:
            rows.append(
                {**who, "verdict": "not judged: the paper's PGD is not evaluated on these weights", "reason": ""}
            )
            continue
        run = RunDir(cfg.store, run_key_)
        run_cfg = run.stored_config()
        ref = df[(df.method == "ce") & (df.recipe == first.recipe) & (df.seed == first.seed)]
        flags = black_box_flag(g.square_only, th["tolerance"])
        evidence = verdict_evidence(
            saturation_of(run, run_cfg.dataset.root, device),
            {"pgd": dict(zip(judged.eps, judged.pgd_here)), "fgsm": dict(zip(judged.eps, judged.fgsm_here))},
            dict(zip(judged.eps, judged.autoattack)),
            flags,
            {"pgd": "paper", "fgsm": "single-step"},
            th,
            reference=dict(zip(ref.eps, ref.autoattack)) if first.method != "ce" and len(ref) else None,
            trained_with=(run_cfg.trainer.get("adversarial") or {}).get("attack"),
        )
        result = verdict(evidence, th)
        rows.append({**who, "verdict": result, "reason": explain_verdict(evidence, result)})
    return pd.DataFrame(rows, columns=["method", "recipe", "seed", "run", "verdict", "reason"])


def _recipes(df: pd.DataFrame) -> bool:
    """Whether the report names each row's recipe: only where the experiment has arms (more than one recipe). A
    lone "paper" beside the baselines would say PGD-AT follows the paper's recipe; it follows its own config."""
    return df.recipe.nunique() > 1


def verdict_lines(judged: pd.DataFrame) -> list[str]:
    """The verdicts in markdown: per method (and recipe) how many seeds got each, then every model's reason."""
    show = _recipes(judged)
    lines = [
        "",
        "## Verdicts (the audit's rules, AutoAttack as the worst case)",
        "",
        f"| method |{' recipe |' * show} verdict (seeds) |",
        "|" + "---|" * (2 + show),
    ]
    for (meth, recipe), g in judged.groupby(["method", "recipe"], sort=False):
        counts = "; ".join(f"{v} ({n})" for v, n in g.verdict.value_counts(sort=False).items())
        lines.append(f"| {meth} |{f' {recipe} |' * show} {counts} |")
    lines += ["", "<details><summary>each model's verdict and the signals that fired</summary>", ""]
    lines += [
        f"- `{r.run}` ({r.method}, {f'{r.recipe}, ' if show else ''}seed {r.seed}): {r.reason or r.verdict}"
        for r in judged.itertuples()
    ]
    return [*lines, "", "</details>"]


def _ms(v: pd.Series) -> str:
    v = [float(x) for x in v.dropna()]
    if not v:
        return "—"
    m = statistics.fmean(v)
    return f"{m:.1f}" + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "") + f" (n={len(v)})"


def to_markdown(df: pd.DataFrame, attacks) -> list[str]:
    """One row per (method, recipe, eps): clean, AutoAttack, the paper's attacks here (mean ± sd over seeds, n) and
    the paper's own numbers; the recipe column only where there are several."""
    names, show = [a.upper() for a in attacks], _recipes(df)
    head = (
        f"| method |{' recipe |' * show} ε | clean | AutoAttack | only Square | {' | '.join(names)} | "
        f"paper ({' / '.join(names)}) |"
    )
    lines = [head, "|" + "---|" * (6 + show + len(attacks))]
    for (meth, recipe), g in df.groupby(["method", "recipe"], sort=False):
        clean = _ms(g.drop_duplicates("run").clean_accuracy)
        for e, h in g.groupby("eps"):
            paper = [h[f"{a}_paper"].dropna() for a in attacks]
            cells = [_ms(h.autoattack), _ms(h.square_only), *(_ms(h[f"{a}_here"]) for a in attacks)]
            cells.append(" / ".join(f"{p.iloc[0]:g}" if len(p) else "—" for p in paper))
            lines.append(f"| {meth} |{f' {recipe} |' * show} {e:g} | {clean} | " + " | ".join(cells) + " |")
    return lines


def _figure(df: pd.DataFrame, path: Path, title: str) -> None:
    """Robust accuracy under AutoAttack against eps: one line per (method, recipe), the mean over seeds, the band
    from the lowest to the highest seed (dashed: the strongest of the paper's attacks on the same weights)."""
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
        strongest = by.strongest_here.mean().dropna()
        if len(strongest):
            ax.plot(strongest.index, strongest.values, linestyle="--", marker=".", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 100)
    ax.set_title(
        title + "\nsolid: AutoAttack (band: lowest to highest seed); dashed: the strongest of the paper's attacks",
        fontsize=7,
    )
    ax.legend(fontsize=6)
    atomic_savefig(fig, path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _num(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)  # JSON has no NaN


def write(cfg: DictConfig, tracker=None) -> list[Path]:
    exp, folder = cfg.experiment, out_dir(cfg)
    df, attacks = collect(cfg), list(exp.reported.attacks)
    judged = verdicts(cfg, df)
    df = df.merge(judged[["run", "verdict"]], on="run", how="left")
    prov = provenance(resolve_device(cfg.device))
    subset = exp.get("subset")
    notes = [
        f"AutoAttack: pyautoattack 0.2.0, version standard, L-inf, on the "
        f"{'full test set' if subset is None else f'first {subset} test images (class-balanced)'}; "
        "robust accuracy counts an example correct both clean and attacked; only Square: % of the images that "
        "only its last attack, the black-box Square, broke (its gradient attacks missed them: a sign of masked "
        "gradients past the audit's tolerance; — where AutoAttack ran before it recorded which attack broke what)",
        f"{', '.join(a.upper() for a in attacks)}: the paper's attacks on the same weights, as its table computes "
        f"them (`{exp.reported.suite}` suite, the table's test set, n in the CSV's here_n); paper: its reported "
        "numbers (Table 5's for the adversarially trained methods)",
        f"models: {df.run.nunique()} of {len(experiment_cells(cfg))} (the rest not trained or not evaluated)",
        f"AutoAttack's own time: {df.seconds.sum() / 60:.1f} min over {len(df)} (model, eps) evaluations, measured "
        "(the CSV's seconds, each on the device its row names); what the planner predicted before a run: "
        f"`make plan EXP={exp.name} FROM=zoo` (`results/plans/`)",
        *(machines := [*trained_on_notes(cfg.store, list(df.run.unique())), *evaluated_on_notes(df)]),
    ]
    md, csv = folder / f"{exp.name}.md", folder / f"{exp.name}.csv"
    protocol = str(cfg.profile)
    atomic_write_text(
        csv,
        csv_header(exp.title, prov, protocol, {"experiment": exp.name, "subset": subset}, md.name, machines)
        + df.to_csv(index=False),
    )
    body = (
        to_markdown(df, attacks) + comparison_lines(df, cfg) + verdict_lines(judged)
        if len(df)
        else ["No model has an AutoAttack result yet."]
    )
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
    lines = [*provenance_lines(prov), *machines]
    suite = compose("evaluate", [f"attack/suite={exp.suite}"]).suite  # the attack as configured, as the audit keeps it
    attack = OmegaConf.to_container(suite.attacks[suite.entries[0].attack])
    for name, g in df.groupby("name"):  # RobustBench's record, one per model
        path = folder / exp.name / f"{name}.json"
        atomic_write_json(
            path,
            robustbench.record(
                name=name,
                run=g.run.iloc[0],
                weights=g.weights.iloc[0],
                dataset=g.dataset.iloc[0],
                architecture=g.model.iloc[0],
                per_eps={
                    float(r.eps): {
                        "clean_acc": r.clean_accuracy,
                        "autoattack_acc": r.autoattack,
                        "reported": _num(getattr(r, "pgd_paper", None)),  # RobustBench: the paper's own number
                        "paper_attacks_here": {a: _num(getattr(r, f"{a}_here")) for a in attacks},
                        "n": int(r.n),
                    }
                    for r in g.itertuples()
                },
                provenance=lines,
                attack=attack,
            ),
        )
        paths.append(path)
    if tracker is not None:
        tracker.log_table(exp.name, df)
    log.info("wrote %s and %s", md, csv)
    return paths
