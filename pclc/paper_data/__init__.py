"""The paper's numbers: every cell of its Tables 1-5 (``paper_tables.csv``, long format) and its
probability-gap figures (``paper_gaps.csv``), as copied from the paper (shared/paper/)."""

from __future__ import annotations

from importlib import resources

import pandas as pd


def paper_tables() -> pd.DataFrame:
    """All numbers of the paper's Tables 1-5 (long format), as copied from the paper."""
    with resources.files(__name__).joinpath("paper_tables.csv").open() as f:
        return pd.read_csv(f, dtype={"param": str})


def param_eps(param: str) -> float | None:
    """The ε of a table row's ``param``: the paper's tables write ``-`` for clean accuracy and ``0.0`` for C&W
    (unbounded, no ε)."""
    return None if param in ("-", "0.0") else float(param)


def paper_gaps() -> pd.DataFrame:
    with resources.files(__name__).joinpath("paper_gaps.csv").open() as f:
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
