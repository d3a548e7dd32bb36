"""Declared paired comparisons of two methods over seeds (issue 31: "does PC+LC's loss add robustness to adversarial
training?"). Each pair (``experiment.comparisons``: treated, control) is judged at every eps on the seeds both
methods have, the seed's difference ``treated - control`` under AutoAttack; one pair at one eps is declared the
claim (``experiment.claim``) before any number exists, so the answer never picks the best of several arms.

Outcome: "yes" when the 95% t interval of the mean difference lies above 0, "no" when it lies below, "within noise"
when it holds 0, "not judged" under two paired seeds (no interval). Each seed's number is itself an estimate on a
subset (binomial noise); the seeds' spread carries that noise as well as the seed's, so the interval counts both."""

from __future__ import annotations

import statistics

import pandas as pd
from omegaconf import DictConfig

from pclc.reports import mean_interval

COLUMNS = ["treated", "control", "eps", "seeds", "treated_mean", "control_mean", "difference", "ci95", "outcome"]


def outcome(diffs: list[float]) -> str:
    """The rule above, on one pair's per-seed differences at one eps."""
    if len(diffs) < 2:
        return f"not judged: {len(diffs)} paired seed{'' if len(diffs) == 1 else 's'}"
    mean, half = statistics.fmean(diffs), mean_interval(diffs)
    if mean - half > 0:
        return "yes"
    if mean + half < 0:
        return "no"
    return "within noise"


def paired(df: pd.DataFrame, treated: str, control: str, column: str = "autoattack") -> pd.DataFrame:
    """One row per eps of ``df`` (the report's rows of the paper's recipe): the seeds where both methods have a
    number in ``column``, each method's mean over those seeds, the mean difference, the half-width of its 95% t
    interval and the outcome. An eps with no paired seed still gets its row, saying so."""
    d = df[df.recipe == "paper"]

    def by(method):
        m = d[d.method == method]
        return m.set_index([m.eps.astype(float), m.seed.astype(int)])[column].astype(float).dropna()

    a, b = by(treated), by(control)
    both = a.index.intersection(b.index)
    rows = []
    for eps in sorted(set(d.eps.astype(float))):
        seeds = sorted(s for e, s in both if e == eps)
        ta, tb = [a[(eps, s)] for s in seeds], [b[(eps, s)] for s in seeds]
        diffs = [x - y for x, y in zip(ta, tb)]
        rows.append(
            {
                "treated": treated,
                "control": control,
                "eps": eps,
                "seeds": ";".join(map(str, seeds)),
                "treated_mean": statistics.fmean(ta) if seeds else None,
                "control_mean": statistics.fmean(tb) if seeds else None,
                "difference": statistics.fmean(diffs) if seeds else None,
                "ci95": mean_interval(diffs),
                "outcome": outcome(diffs),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def check_comparisons(cfg: DictConfig) -> None:
    """Refuse, before any work, a comparison naming a method reproduce does not know, or a claim that is not one
    of the declared comparisons."""
    exp = cfg.experiment
    pairs = [(str(c.treated), str(c.control)) for c in exp.get("comparisons") or []]
    for pair in pairs:
        unknown = [m for m in pair if m not in cfg.methods]
        if unknown:
            raise ValueError(f"experiment.comparisons: unknown method {unknown[0]!r}; known: {sorted(cfg.methods)}")
    claim = exp.get("claim")
    if claim is not None and (str(claim.treated), str(claim.control)) not in pairs:
        raise ValueError(
            f"experiment.claim {claim.treated} against {claim.control} is not one of experiment.comparisons {pairs}"
        )


def _num(v, fmt: str = "{:.1f}") -> str:
    return "—" if v is None or pd.isna(v) else fmt.format(v)


def _interval(difference, ci95) -> str:
    """The mean difference with its 95% interval, in points; only the difference when there is no interval."""
    if difference is None or pd.isna(difference):
        return "—"
    if ci95 is None or pd.isna(ci95):
        return f"{difference:+.1f}"
    return f"{difference:+.1f} [{difference - ci95:+.1f}, {difference + ci95:+.1f}]"


def comparison_lines(df: pd.DataFrame, cfg: DictConfig) -> list[str]:
    """The report's section: every declared pair at every eps, then the claim's one line."""
    exp = cfg.experiment
    comparisons = list(exp.get("comparisons") or [])
    if not comparisons:
        return []
    lines = [
        "",
        "## Declared comparisons (paired by seed, AutoAttack)",
        "",
        "Each seed's difference, the first method's AutoAttack accuracy minus the second's on the same seed; "
        "yes when the 95% t interval of the mean difference lies above 0, no when below, within noise when it "
        "holds 0 (the pairs and the claim were declared in the experiment's config before any was evaluated).",
        "",
        "| method | against | ε | seeds | mean | against, mean | difference [95% CI] | outcome |",
        "|---|---|---|---|---|---|---|---|",
    ]
    judged = {}
    for c in comparisons:
        p = paired(df, str(c.treated), str(c.control))
        judged[(str(c.treated), str(c.control))] = p
        for r in p.itertuples():
            lines.append(
                f"| {r.treated} | {r.control} | {r.eps:g} | {r.seeds or '—'} | {_num(r.treated_mean)} | "
                f"{_num(r.control_mean)} | {_interval(r.difference, r.ci95)} | {r.outcome} |"
            )
    claim = exp.get("claim")
    if claim is not None:
        p = judged[(str(claim.treated), str(claim.control))]
        row = p[p.eps == float(claim.eps)]
        r = row.iloc[0] if len(row) else None
        said = "not judged: no model at this ε" if r is None else r.outcome
        if r is not None and r.seeds:
            n = len(r.seeds.split(";"))
            said += f": difference {_interval(r.difference, r.ci95)} points over {n} seed{'s' * (n > 1)}"
        lines += ["", f"**Claim** ({claim.treated} against {claim.control} at ε {float(claim.eps):g}): {said}."]
    return lines
