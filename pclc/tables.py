"""Paper tables: the paper's numbers (``paper_data/``) and ours side by side, in the paper's layout.

Rows are (attack, param) in the paper's order; columns are (dataset, method) in the paper's order.
A cell shows ``ours (paper, diff)``; a cell we have not run says so, it is never blank or filled.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import pandas as pd

NOT_RUN = "not run"


def paper_tables() -> pd.DataFrame:
    """All numbers of the paper's Tables 1-5 (long format), as copied from the paper."""
    with resources.files("pclc.paper_data").joinpath("paper_tables.csv").open() as f:
        return pd.read_csv(f, dtype={"param": str})


def paper_gaps() -> pd.DataFrame:
    with resources.files("pclc.paper_data").joinpath("paper_gaps.csv").open() as f:
        return pd.read_csv(f)


def table_rows(table: str, datasets: list[str] | None = None, attacks: list[str] | None = None) -> pd.DataFrame:
    """The paper's rows of one table, optionally restricted to some datasets or attacks (paper order kept)."""
    df = paper_tables()
    df = df[df.table == table]
    if df.empty:
        raise ValueError(f"unknown paper table {table!r}; known: {sorted(paper_tables().table.unique())}")
    if datasets:
        unknown = sorted(set(datasets) - set(df.dataset))
        if unknown:
            raise ValueError(f"{table} has no column for datasets {unknown}; it has {sorted(set(df.dataset))}")
        df = df[df.dataset.isin(datasets)]
    if attacks:
        df = df[df.attack.isin(list(attacks))]
    return df.reset_index(drop=True)


def combine(paper: pd.DataFrame, ours: dict[tuple[str, str, str, str], float]) -> pd.DataFrame:
    """Add ``ours`` (keyed by dataset, method, attack, param) and the difference to the paper's rows."""
    out = paper.rename(columns={"accuracy": "paper"}).copy()
    vals = [ours.get((r.dataset, r.method, r.attack, r.param)) for r in out.itertuples()]
    out["ours"] = vals  # a float column: cells not run are NaN (so test status from vals, not the column)
    out["diff"] = [None if o is None else round(o - p, 2) for o, p in zip(vals, out.paper)]
    out["status"] = ["run" if o is not None else NOT_RUN for o in vals]
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
                vals.append(f"**{r.ours:.1f}** ({r.paper:.1f}, {r.diff:+.1f})")
        lines.append(f"| {_row_label(a, p)} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def header(title: str, prov: dict[str, Any], protocol: str, config_yaml: str, notes: list[str] = ()) -> str:
    """The provenance block every results file opens with."""
    lines = [f"# {title}", "",
             f"- protocol: **{protocol}**" + ("" if protocol == "full" else " (NOT the paper's protocol)"),
             f"- command: `{prov['command']}`", f"- commit: `{prov['commit']}`", f"- device: {prov['device']}",
             f"- torch: {prov['torch']}", f"- date: {prov['date']}",
             "- cells: **ours** (paper, ours − paper); accuracy in % on the test set"]
    lines += [f"- {n}" for n in notes]
    return "\n".join([*lines, "", *config_block(config_yaml)]) + "\n"


def config_block(config_yaml: str) -> list[str]:
    """The resolved config as a collapsed markdown block."""
    return ["<details><summary>resolved config</summary>", "", "```yaml", config_yaml.rstrip(), "```", "",
            "</details>", ""]
