"""The audit report: ``audit.md`` (verdicts, then per model the probe, every attack, the cascade, sweeps and
flags, with the paper's numbers), ``audit.csv`` (long: model, attack, eps, accuracy) and ``audit_eps.png``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pclc import robustbench
from pclc.audit.checks import HEALTHY, named, paper_attack, verdict
from pclc.audit.result import AuditResult
from pclc.files import atomic_savefig, atomic_write_json, atomic_write_text
from pclc.headers import config_block
from pclc.paper_data import paper_tables
from pclc.store import provenance, provenance_lines

CSV_COLUMNS = ["model", "attack", "eps", "accuracy"]
LEGEND = {"pgd-paper": "the paper's PGD-40, ours", "adaptive-cascade": "worst case of the adaptive attacks"}


PAPER_GROUPS = {"clean": "clean", "fgsm": "single-step", "pgd": "paper"}  # paper table attack -> audit group


def paper_rows(dataset: str, model: str) -> list[dict]:
    """The paper's rows for a dataset and model: Table 1 for the plain models, Table 5 for the adversarially
    trained ones."""
    df = paper_tables()
    df = df[(df.dataset == dataset) & (df.model == model)]
    at = df.method.str.endswith("+at")
    return df[((df.table == "table1") & ~at) | ((df.table == "table5") & at)].to_dict("records")


def _paper_lookup(rows: list[dict] | None) -> dict[tuple, float]:
    """(dataset, model, method, audit group, eps string) -> the paper's accuracy."""
    out = {}
    for r in rows or []:
        if r.get("attack") in PAPER_GROUPS:
            eps = "-" if r["attack"] == "clean" else f"{float(r['param']):g}"
            out[(r["dataset"], r["model"], r["method"], PAPER_GROUPS[r["attack"]], eps)] = float(r["accuracy"])
    return out


def _reported(paper: dict[tuple, float], a: AuditResult, attack: str, eps: str) -> float | None:
    """The paper's number for one of our rows: clean, the single-step attack (FGSM) and the paper's PGD."""
    group = "clean" if attack == "clean" else a.groups.get(attack, "").split(" ")[0]
    return paper.get((*a.paper_key, group, eps))


def _prov_lines(audits: list[AuditResult]) -> list[str]:
    devices = sorted({d for a in audits for d in a.provenance.get("attack_devices") or [a.provenance["device"]]})
    return provenance_lines(provenance(torch.device("cpu")), devices=devices or None)


def _table(a: AuditResult, paper: dict[tuple, float]) -> list[str]:
    eps = [f"{e:g}" for e in a.eps]

    def cell(n, e, v):
        p = _reported(paper, a, n, e)
        return f"{v:.1f}" + ("" if p is None else f" (paper {p:.1f})")

    lines = [
        "| attack | group | " + " | ".join(f"eps {e}" for e in eps) + " |",
        "|---" * (len(eps) + 2) + "|",
        f"| clean | - | {cell('clean', '-', a.clean_accuracy)}" + " |" * len(eps),
    ]
    for n, d in a.accuracy.items():
        lines.append(f"| {n} | {a.groups[n]} | " + " | ".join(cell(n, e, d[e]) for e in eps) + " |")
    lines.append("| **worst case** | all | " + " | ".join(f"**{a.worst_case[e]:.1f}**" for e in eps) + " |")
    if a.reference:
        lines.append(
            f"| CE reference ({a.reference_run}) | paper PGD + margin | "
            + " | ".join(f"{a.reference[e]:.1f}" for e in eps)
            + " |"
        )
    return lines


def _strongest(a: AuditResult) -> str:
    return a.strongest_adaptive or "none needed (no example survived the standalone attacks)"


def _model_section(a: AuditResult, paper: dict[tuple, float]) -> list[str]:
    pr = a.probe
    hist = pr["margin_hist"]
    lines = [
        f"## {a.run or 'model'} ({a.dataset}/{a.model}/{a.method or a.loss})",
        "",
        f"**Verdict: {a.verdict}.** {a.verdict_reason}",
        "",
        f"n = {a.n} test examples"
        + ("" if a.subset is None else f" (class-balanced subset {a.subset})")
        + f"; transfer source: {a.transfer_source or 'none'}",
        "",
        "### Saturation probe (float32)",
        "",
        f"- p_y == 1.0 exactly: {100 * pr['share_p_y_one']:.1f}% of points",
        f"- all-zero CE input gradient: {100 * pr['share_zero_grad']:.1f}% of points",
        f"- logit margin a_y - max_k!=y a_k: mean {pr['margin_mean']:.2f}, median {pr['margin_median']:.2f}",
        "- margin histogram: "
        + ", ".join(
            f"[{lo:.2g}, {hi:.2g}): {c}" for lo, hi, c in zip(hist["edges"], hist["edges"][1:], hist["counts"])
        ),
        "",
        "### Accuracy (%) under each attack",
        "",
        *_table(a, paper),
        "",
    ]
    if a.cascade:
        counts = a.cascade_counts
        eps = list(next(iter(counts.values()), {}))
        lines += [
            f"Adaptive attacks ran as a cascade ({' → '.join(a.cascade)}): each attacked only the "
            "examples that survived every attack above it at this eps and the worst case at smaller eps "
            "(an adversarial example for a smaller eps is one for a larger eps too), so their rows are "
            "cumulative robust accuracy; the strongest adaptive attack is the one that broke the most "
            "examples, and the sweep runs the whole cascade past the grid.",
            "",
            "| cascade attack | " + " | ".join(f"eps {e}: attacked / broken" for e in eps) + " |",
            "|---" * (len(eps) + 1) + "|",
            *(f"| {n} | " + " | ".join(f"{c[e][0]} / {c[e][1]}" for e in eps) + " |" for n, c in counts.items()),
            "",
        ]
    if a.indicators:
        eps_i = list(a.indicators)
        names = list(next(iter(a.indicators.values())))
        lines += [
            f"### Indicators of attack failure (Pintor et al. 2022), the paper's attack, first "
            f"{a.profile.get('indicator_subset')} examples",
            "",
            "Share of examples showing each (pclc/audit/indicators.py); one above "
            f"{100 * a.thresholds.get('indicator_share', 0):g}% fires and is listed in the verdict's signals.",
            "",
            "| indicator | " + " | ".join(f"eps {e}" for e in eps_i) + " |",
            "|---" * (len(eps_i) + 1) + "|",
            *(
                f"| {n} | " + " | ".join(f"{100 * a.indicators[e].get(n, float('nan')):.1f}%" for e in eps_i) + " |"
                for n in names
            ),
            "",
        ]
    lines += [f"### Eps sweeps (strongest adaptive attack: {_strongest(a)})", ""]
    lines += [
        f"- {n}: " + ", ".join(f"{e:g} → {v:.1f}%" for e, v in zip(s["eps"], s["accuracy"]))
        for n, s in a.sweeps.items()
    ]
    lines += ["", "### Sanity flags", ""]
    lines += [
        f"- {'ok' if v == HEALTHY[k] else '**WARNING**'} `{k}` = {v}: {a.flag_notes[k]}" for k, v in a.flags.items()
    ]
    return lines + [""]


def _csv_rows(a: AuditResult) -> list[dict]:
    model = a.run or "model"
    rows = {("clean", 0.0): a.clean_accuracy}
    rows.update({(n, float(e)): v for n, d in a.accuracy.items() for e, v in d.items()})
    for n, s in a.sweeps.items():
        rows.update({(n, float(e)): v for e, v in zip(s["eps"], s["accuracy"])})
    rows.update({("worst-case", float(e)): v for e, v in a.worst_case.items()})
    return [{"model": model, "attack": n, "eps": e, "accuracy": v} for (n, e), v in rows.items()]


def _plot(audits: list[AuditResult], path: Path, prov: list[str], paper: dict[tuple, float]) -> None:
    """One panel per model (shared axes): the paper's PGD (solid; stars: the paper's own numbers) and the
    strongest adaptive attack (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reported = []  # per model: (eps, the paper's PGD accuracy)
    for a in audits:
        pgd = paper_attack(a.groups)
        reported.append([(e, p) for e in a.eps if (p := _reported(paper, a, pgd, f"{e:g}")) is not None])
    top = max(
        [v for a in audits for s in a.sweeps.values() for v in s["accuracy"]] + [v for r in reported for _, v in r],
        default=0.0,
    )
    cols = min(3, len(audits))
    rows = -(-len(audits) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for ax, a, r in zip(axes.flat, audits, reported):
        for n, s in a.sweeps.items():
            solid = n == paper_attack(a.groups)
            ax.plot(
                s["eps"],
                s["accuracy"],
                marker="o" if solid else "x",
                linestyle="-" if solid else "--",
                color="C0" if solid else "C3",
                label=LEGEND.get(n, n),
            )
        if r:
            ax.plot(
                *zip(*r),
                marker="*",
                markersize=9,
                linestyle="none",
                color="k",
                label="the paper's PGD, its numbers",
            )
        ax.set_title(f"{a.method or a.loss or a.run}: {a.verdict}", fontsize=8)
        ax.set_ylim(-1, min(100.0, top + 5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for i, ax in enumerate(axes.flat):
        if i >= len(audits):
            ax.set_visible(False)
        elif i + cols >= len(audits):  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("eps (L-inf)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    fig.suptitle(
        "Paper's PGD (solid; stars: the paper's numbers) vs the strongest adaptive attack (dashed)",
        fontsize=10,
    )
    fig.text(0.01, 0.005, " | ".join(prov), fontsize=4)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    atomic_savefig(fig, path, dpi=120, metadata={"Description": "; ".join(prov)})
    plt.close(fig)


def overview(audits: list[AuditResult], paper: dict[tuple, float]) -> list[str]:
    """One row per model: clean accuracy, the paper's PGD (ours, the paper's) and the worst case at each eps,
    the strongest adaptive attack, and the verdict."""
    if not audits:
        return []
    eps = [f"{e:g}" for e in audits[0].eps]
    lines = [
        "## Verdicts",
        "",
        "| model | run | n | clean | "
        + " | ".join(f"paper's PGD eps {e} (paper) / worst case" for e in eps)
        + " | strongest adaptive | verdict |",
        "|---" * (len(eps) + 6) + "|",
    ]
    for a in audits:
        key, pgd = a.paper_key, paper_attack(a.groups)
        cells = []
        for e in eps:
            ours = a.accuracy[pgd].get(e)
            pp = _reported(paper, a, pgd, e)
            cells.append(
                ("-" if ours is None else f"{ours:.1f}")
                + ("" if pp is None else f" ({pp:.1f})")
                + f" / **{a.worst_case[e]:.1f}**"
                if e in a.worst_case
                else "-"
            )
        lines.append(
            f"| {'/'.join(map(str, key))} | `{a.run}` | {a.n} | {a.clean_accuracy:.1f} | "
            + " | ".join(cells)
            + f" | {_strongest(a)} | **{a.verdict}**"
            + (" (catastrophic overfitting)" if (a.evidence or {}).get("catastrophic_overfitting") else "")
            + " |"
        )
    return lines


def robustbench_entries(audits: list[AuditResult], paper: dict[tuple, float], prov: list[str]) -> dict[str, dict]:
    """RobustBench's record (pclc.robustbench) per model audited with AutoAttack: clean accuracy, the paper's
    reported number (its PGD, the attack it reports), the AutoAttack accuracy and the paper's PGD here, per eps
    (file name -> content)."""
    from pclc.zoo import read_manifest

    zoo_names = {e["key"]: e["name"] for e in read_manifest()}  # a zoo run is named as experiment=autoattack names it
    out = {}
    for a in audits:
        aa = [n for n in named(a.groups, "standard") if n in a.accuracy]
        if not aa:
            continue
        pgd = paper_attack(a.groups)
        out[f"{a.run or 'model'}.json"] = robustbench.record(
            name=zoo_names.get(a.run, a.method or a.loss or "model"),
            run=a.run or "model",
            weights=a.provenance.get("weights"),
            dataset=a.dataset or "",
            architecture=a.model or "",
            per_eps={
                float(e): {
                    "clean_acc": a.clean_accuracy,
                    "autoattack_acc": acc,
                    "reported": _reported(paper, a, pgd, e),
                    "paper_attacks_here": {"pgd": a.accuracy[pgd].get(e)},
                    "n": a.n,
                }
                for e, acc in a.accuracy[aa[0]].items()
            },
            provenance=prov,
            attack=(a.profile.get("attacks", {}).get(aa[0]) or {}).get("attack"),  # the attack's own config
        )
    return out


def write_audit_report(
    audits: list[AuditResult],
    out_dir: Path,
    rows: list[dict] | None = None,
    title: str = "Robustness audit: adaptive attacks and gradient masking",
    config_yaml: str | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """``audit.md`` (per model: probe, accuracy table with the paper's numbers, worst case, flags, verdict),
    ``audit.csv`` (long: model, attack, eps, accuracy) and ``audit_eps.png``; each opens with provenance."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = _prov_lines(audits) + list(notes or [])  # notes: which machine trained the audited weights
    paper = _paper_lookup(rows)
    th = audits[0].thresholds if audits else {}
    md = [
        f"# {title}",
        "",
        *[f"- {p}" for p in prov],
        "- accuracy: % of examples correct both clean and attacked; worst case: correct under every attack",
        f"- thresholds (accuracy points; shares 0-1): {json.dumps(th)}",
        f"- verdict rules: {' '.join(verdict.__doc__.replace('``', '`').replace(':func:', '').split())}",
        "- attack budgets and the resolved config: at the end",
        "",
        *overview(audits, paper),
        "",
    ]
    for a in audits:
        md += _model_section(a, paper)
    md += [
        "## Attack budgets and config",
        "",
        f"- attack budgets: {json.dumps(audits[0].profile) if audits else '-'}",
        "",
        *(config_block(config_yaml) if config_yaml else []),
    ]
    paths = [out_dir / "audit.md", out_dir / "audit.csv", out_dir / "audit_eps.png"]
    atomic_write_text(paths[0], "\n".join(md))
    csv = pd.DataFrame([r for a in audits for r in _csv_rows(a)], columns=CSV_COLUMNS)
    config = [
        f"attack budgets: {json.dumps(audits[0].profile) if audits else '-'}",
        f"thresholds: {json.dumps(th)}",
    ]
    if config_yaml:
        config.append(f"resolved config: in {paths[0].name}")
    atomic_write_text(paths[1], "".join(f"# {p}\n" for p in [*prov, *config]) + csv.to_csv(index=False))
    _plot(audits, paths[2], prov, paper)
    for name, entry in robustbench_entries(audits, paper, prov).items():
        paths.append(out_dir / "audit" / name)  # results/autoattack/ is experiment=autoattack's (subset, seeds)
        atomic_write_json(paths[-1], entry)
    return paths
