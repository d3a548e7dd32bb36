"""Compare two results tables computed from the same weights on two machines (a CPU and a GPU, say).

    python scripts/compare_tables.py results/table1.csv results/gpu-check-nvidia-h200/tables/table1.csv \
        --out results/gpu-check-nvidia-h200/table1-vs-committed.md

Both CSVs must name the same runs (their ``# config:`` line's run keys): the same weights, so every difference is
the machine's arithmetic (float reductions, cuDNN's algorithms), never another training. Writes a markdown file
with this run's provenance, both tables' provenance, the largest and mean absolute difference, and every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CELL = ["table", "dataset", "model", "attack", "param", "method"]


def compare(a: Path, b: Path) -> tuple[pd.DataFrame, dict, dict]:
    """Cells of ``a`` and ``b`` side by side with ``b - a``; refuses tables of other weights or other cells."""
    from pclc.headers import csv_provenance

    pa, pb = csv_provenance(a), csv_provenance(b)
    runs = [json.loads(p.get("config", "{}").split(" (resolved", 1)[0]).get("runs") for p in (pa, pb)]
    if not runs[0] or runs[0] != runs[1]:
        raise ValueError(
            f"{a} and {b} do not name the same runs ({runs[0]} vs {runs[1]}): other weights, no comparison"
        )
    da, db = (pd.read_csv(p, comment="#", dtype={"param": str}) for p in (a, b))
    m = da[[*CELL, "ours"]].merge(db[[*CELL, "ours"]], on=CELL, how="outer", suffixes=("_a", "_b"), indicator=True)
    if (m["_merge"] != "both").any():
        raise ValueError(f"{a} and {b} hold other cells: {m.loc[m['_merge'] != 'both', CELL].to_dict('records')}")
    m = m.drop(columns="_merge")
    m["b_minus_a"] = (m["ours_b"] - m["ours_a"]).round(2)
    return m, pa, pb


def trained_on(keys: list[str], zoo_folder: str | None = None) -> list[str]:
    """Which machine trained the runs, from the zoo's manifest (one line per machine; runs not in the zoo said)."""
    from pclc import zoo
    from pclc.store import machine_line

    entries = {e["key"]: e for e in zoo.read_manifest(zoo_folder)}
    by: dict[str, int] = {}
    for key in dict.fromkeys(keys):
        line = machine_line(entries[key]["trained_on"]) if key in entries else "not in the zoo (machine unknown)"
        by[line] = by.get(line, 0) + 1
    return [f"- weights trained on: {line} ({n} runs; from the zoo's manifest)" for line, n in by.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/compare_tables.py", description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="results CSV A (e.g. the committed table)")
    ap.add_argument("b", type=Path, help="results CSV B (the same table on another machine)")
    ap.add_argument("--out", type=Path, required=True, help="markdown file to write")
    ap.add_argument("--zoo", default=None, help="zoo folder whose manifest names the training machine")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from pclc.files import atomic_write_text
    from pclc.headers import markdown_table
    from pclc.store import machine_line, provenance, provenance_lines

    for p in (args.a, args.b):
        if not p.is_file():
            print(f"error: {p} is not a file", file=sys.stderr)
            return 2
    try:
        m, pa, pb = compare(args.a, args.b)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prov = provenance(torch.device("cpu"))
    runs = json.loads(pa["config"].split(" (resolved", 1)[0])["runs"]
    diff = m["b_minus_a"].abs()
    lines = [
        f"# {args.a.name}: the same weights on two machines",
        "",
        *[f"- {x}" for x in provenance_lines(prov)],
        f"- machine (this comparison): {machine_line(prov['machine'])}",
        "",
        *[
            f"- {tag} `{p}`: {pp.get('device', '?')}; commit `{pp.get('commit', '?')}`; {pp.get('date', '?')}; "
            f"command `{pp.get('command', '?')}`"
            for tag, p, pp in (("A", args.a, pa), ("B", args.b, pb))
        ],
        f"- runs (the same in both): {runs}",
        *trained_on(list(runs.values()), args.zoo),
        "",
        f"**{len(m)} cells; {int((diff == 0).sum())} identical; largest |B - A| {diff.max():.2f} points; "
        f"mean |B - A| {diff.mean():.3f} points** (accuracy in %)",
        "",
        markdown_table(m.rename(columns={"ours_a": "A", "ours_b": "B", "b_minus_a": "B - A"})),
    ]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines[-3:-2]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
