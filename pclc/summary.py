"""``results/SUMMARY.md``: every paper cell of every table in one place (ours, the paper's, difference,
status; read from the committed ``results/table*.csv``, each named with the commit that made it) and
``results/figures/summary-scatter.png`` (ours against the paper's). ``make summary``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from pclc.files import atomic_savefig, atomic_write_text
from pclc.headers import csv_provenance
from pclc.paper_data import paper_tables
from pclc.store import provenance, provenance_lines

COLUMNS = [
    "table",
    "dataset",
    "model",
    "method",
    "attack",
    "param",
    "paper",
    "ours",
    "diff",
    "status",
    "source",
]


def collect(results: Path) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """Every cell of the paper's tables: ours from ``results/<table>.csv`` where one holds it, else not run."""
    paper = paper_tables().rename(columns={"accuracy": "paper"})
    ours, sources = [], {}
    for csv in sorted(results.glob("table*.csv")):
        sources[csv.name] = csv_provenance(csv)
        df = pd.read_csv(csv, comment="#", dtype={"param": str})
        ours.append(df[df.status != "not run"].assign(source=csv.name))
    key = ["table", "dataset", "model", "method", "attack", "param"]
    got = (
        pd.concat(ours)[[*key, "ours", "status", "source"]]
        if ours
        else pd.DataFrame(columns=[*key, "ours", "status", "source"])
    )
    out = paper.merge(got, on=key, how="left")
    out["ours"] = out.ours.round(2)
    out["diff"] = (out.ours - out.paper).round(2)
    out["status"] = out.status.fillna("not run")
    return out[COLUMNS], sources


def scatter(df: pd.DataFrame, path: Path, prov: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = df[df.status != "not run"]
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    for i, (table, d) in enumerate(done.groupby("table")):
        clean = d.attack == "clean"
        ax.scatter(d.paper[~clean], d.ours[~clean], s=14, color=f"C{i}", label=f"{table} (attacked)")
        ax.scatter(d.paper[clean], d.ours[clean], s=40, marker="*", color=f"C{i}", label=f"{table} (clean)")
    ax.plot([0, 100], [0, 100], color="k", lw=0.8, ls="--")
    ax.set_xlabel("the paper's accuracy (%)")
    ax.set_ylabel("ours (%)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_title(f"Ours against the paper: {len(done)} of {len(df)} cells run", fontsize=9)
    ax.legend(fontsize=6)
    fig.text(0.01, 0.005, " | ".join(prov), fontsize=4)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    atomic_savefig(fig, path, dpi=130, metadata={"Description": "; ".join(prov)})
    plt.close(fig)


def write(results: Path) -> list[Path]:
    df, sources = collect(results)
    prov = provenance_lines(provenance(torch.device("cpu")))
    done = df[df.status != "not run"]
    lines = [
        "# Every cell of the paper's tables: ours beside the paper's",
        "",
        *[f"- {p}" for p in prov],
        f"- cells: {len(done)} of {len(df)} run; accuracy in %; diff = ours − paper",
        "- numbers read from (each made by the commit named):",
        *[
            f"  - `{name}`: commit `{h.get('commit', '?')}`, {h.get('date', '?')}, `{h.get('command', '?')}`"
            for name, h in sources.items()
        ],
        "- figure: `figures/summary-scatter.png` (ours against the paper's)",
        "",
    ]
    for table, d in df.groupby("table", sort=True):
        run = d[d.status != "not run"]
        lines += [f"## {table}: {len(run)} of {len(d)} cells run", ""]
        if len(run):
            lines += [
                "| dataset | model | method | attack | param | ours | paper | diff | status |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r.dataset} | {r.model} | {r.method} | {r.attack} | {r.param} | {r.ours:.2f} | "
                f"{r.paper:.1f} | {r.diff:+.2f} | {r.status} |"
                for r in run.itertuples()
            ]
        missing = d[d.status == "not run"].groupby(["dataset", "model"]).size()
        if len(missing):
            lines += ["", "not run: " + ", ".join(f"{ds}/{m} ({n} cells)" for (ds, m), n in missing.items())]
        lines.append("")
    md, png = results / "SUMMARY.md", results / "figures" / "summary-scatter.png"
    atomic_write_text(md, "\n".join(lines))
    scatter(df, png, prov)
    return [md, png]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default="results", help="the results folder (table*.csv in, SUMMARY.md out)")
    for p in write(Path(ap.parse_args().results)):
        print(p)


if __name__ == "__main__":
    main()
