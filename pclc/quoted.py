"""Numbers a document quotes, each checked against the results files it names beside it (issue 26).

README's results section and ``results/README.md`` may quote only numbers that a committed results file holds,
and must name the file. This reads a markdown document as the units a reader sees together: a bullet or a
paragraph (with the files of the heading above it), or a table cell (with the files its column's header names).
Every decimal number in a unit must be held, to the digits quoted, by one of the files named in that unit: a
file (``x.md`` also reads ``x.csv``, the same table at full precision), a folder (every file beneath it),
``{md,csv}`` braces expanded. The paper's own numbers (right after "paper" or "the paper's", or in a column
headed "the paper claims") may instead be held by the paper's tables (``pclc/paper_data``). Not checked: integers
(counts, epochs, seeds), numbers in code spans or code blocks, and settings: a number after ε, eps, lr, β, step,
×, ``=`` or ``==``, or just before ε.

``python -m pclc.quoted README.md results/README.md`` lists every number no named file holds, one per line.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pclc.paper_data import paper_gaps, paper_tables

FILE = re.compile(r"`([\w./+{},-]+?(?:\.(?:md|csv|json|yaml)|/))`")
NUMBER = re.compile(r"(?<![\w.])(?<!\w-)[-+−]?\d+(?:\.\d+)+(?![\w.]*\d)")
CODE = re.compile(r"`[^`]*`")
# a setting, not a measurement: what may stand before a number (a slash list inherits it), or just after it
SETTING_BEFORE = re.compile(r"(?:ε(?:_train)?|\b(?:eps|lr|step|L2 budget of)|β2?|×|==|=)\s*(?:[\d.]+\s*/\s*)*$")
SETTING_AFTER = re.compile(r"^\s*(?:ε|per step)")
# the paper's own number: "paper 90.2", "the paper's 0.2 / 21.8", "paper CE 0.0 / 0.3" (a list inherits it)
PAPER_BEFORE = re.compile(r"paper(?:'s)?(?:\s+[\w+]+)?\s*(?:[\d.]+\s*/\s*)*$")
HELD = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass
class Unit:
    """What a reader sees together: its text, the files named beside it, where it starts, and whether it is
    a cell of the paper's claims."""

    text: str
    line: int
    files: list[str] = field(default_factory=list)
    paper: bool = False


def named_files(text: str) -> list[str]:
    """The files (or folders) a text names in code spans, ``{a,b}`` braces expanded."""
    out = []
    for name in FILE.findall(text):
        m = re.search(r"\{([^}]*)\}", name)
        out += [name[: m.start()] + alt + name[m.end() :] for alt in m.group(1).split(",")] if m else [name]
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def units(doc: str) -> list[Unit]:
    """The document as units: table cells (with their column header's files), bullets and paragraphs (with the
    files of the heading above them). Code blocks are skipped."""
    out: list[Unit] = []
    heading: list[str] = []
    header: list[str] = []
    block: list[str] = []
    start = 0
    fenced = False

    def flush():
        nonlocal block
        if block:
            text = " ".join(block)
            out.append(Unit(text, start, named_files(text) + heading))
        block = []

    for i, line in enumerate(doc.splitlines(), 1):
        if line.startswith("```"):
            flush()
            fenced = not fenced
        elif fenced:
            continue
        elif line.startswith("#"):
            flush()
            heading, header = named_files(line), []
        elif line.startswith("|"):
            flush()
            cells = _cells(line)
            if set("".join(cells)) <= set("-: "):
                continue
            if not header:
                header = cells
                continue
            for j, cell in enumerate(cells):
                top = header[j] if j < len(header) else ""
                out.append(Unit(cell, i, named_files(cell) + named_files(top), "paper claims" in top))
        elif not line.strip():
            flush()
            header = []
        else:
            if line.startswith("- ") or not block:
                flush()
                start = i
            block.append(line.strip())
    flush()
    return out


def quoted_numbers(text: str) -> list[tuple[str, bool]]:
    """The decimal numbers a text quotes as measurements (not settings, not in code spans), each with whether
    it is the paper's (right after "paper" or "the paper's", with at most a method's name between)."""
    plain = CODE.sub(lambda m: " " * len(m.group()), text)
    found = []
    for m in NUMBER.finditer(plain):
        before = plain[: m.start()]
        if m.group().count(".") > 1:  # a version (2.14.1), not a number
            continue
        if SETTING_BEFORE.search(before) or SETTING_AFTER.match(plain[m.end() :]):
            continue
        found.append((m.group().replace("−", "-").lstrip("+"), bool(PAPER_BEFORE.search(before))))
    return found


def held_values(path: Path) -> tuple[float, ...]:
    """Every number written in a file (``x.md`` with its ``x.csv``; a folder: every md, csv and json beneath)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".md", ".csv", ".json"))
    else:
        files = [path] + ([path.with_suffix(".csv")] if path.suffix == ".md" else [])
    return tuple(float(v) for f in files if f.exists() for v in HELD.findall(f.read_text()))


@functools.cache
def paper_values() -> tuple[float, ...]:
    """Every number of the paper's tables and probability-gap figures."""
    return tuple(float(v) for v in [*paper_tables().accuracy, *paper_gaps().mean_probability_gap])


def holds(values, quoted: str) -> bool:
    """Whether a value equals the quoted number to the digits quoted (68.004 holds 68.00, and 68.0 holds 68.00)."""
    q, digits = abs(float(quoted)), len(quoted.partition(".")[2])
    return any(abs(abs(v) - q) <= 0.5 * 10**-digits + 1e-9 for v in values)


def resolve(name: str, doc: Path, root: Path, folders: tuple[Path, ...] = ()) -> Path | None:
    """A named file: in a folder the same unit names (a heading's ``results/gpu-check-<gpu>/`` holds the
    ``summary.md`` its paragraphs name), beside the document, else under ``root`` (a ``results/`` prefix read as
    ``root``), else in the repository that holds ``root`` (``configs/...``)."""
    for path in (
        *(f / name for f in folders),
        doc.parent / name,
        root / name.removeprefix("results/"),
        root.parent / name,
    ):
        if path.exists():
            return path
    return None


def unsourced(doc: Path, root: Path) -> list[str]:
    """One line per quoted number that no file named beside it holds (``root``: the results folder); a unit
    that quotes numbers and names no file, or names a file that does not exist, is a line too."""
    problems = []
    held = functools.cache(held_values)  # a document names the same files many times; read each once per call
    for unit in units(doc.read_text()):
        numbers = quoted_numbers(unit.text)
        if not numbers:
            continue
        folders = tuple(p for n in unit.files if n.endswith("/") and (p := resolve(n, doc, root)))
        paths = {n: resolve(n, doc, root, folders) for n in unit.files}
        missing = [n for n, path in paths.items() if path is None]
        if missing:
            problems.append(f"{doc}:{unit.line}: names {', '.join(missing)}, which does not exist")
        values = [v for path in paths.values() if path for v in held(path)]
        for number, of_paper in numbers:
            if (of_paper or unit.paper) and holds(paper_values(), number):
                continue
            if not unit.files:
                problems.append(f"{doc}:{unit.line}: {number} is quoted beside no results file")
            elif not holds(values, number):
                problems.append(f"{doc}:{unit.line}: {number} is in none of {', '.join(unit.files)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pclc.quoted", description=__doc__.split("\n\n")[0])
    ap.add_argument("docs", nargs="+", type=Path, help="markdown documents to check")
    ap.add_argument("--root", type=Path, default=Path("results"), help="the results folder (default results)")
    args = ap.parse_args(argv)
    problems = [p for d in args.docs for p in unsourced(d, args.root)]
    print("\n".join(problems) or f"every quoted number is held by a file named beside it ({len(args.docs)} docs)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
