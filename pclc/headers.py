"""The provenance every results file opens with: command, commit, machine, date, the protocol, and which machine
trained the weights behind it (markdown headers, CSV comment lines, the resolved config block)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pclc.files import load_tensors
from pclc.store import RunDir, provenance_lines

PAPER_CELLS = "**ours** (paper, ours − paper); accuracy in % on the test set"


def header(
    title: str, prov: dict[str, Any], protocol: str, notes: list[str] = (), cells: str | None = PAPER_CELLS
) -> str:
    """The provenance block every results file opens with (its resolved config follows the table). ``cells``:
    how to read the table's cells (None: no such line, for a file with no paper number beside ours)."""
    lines = [
        f"# {title}",
        "",
        f"- protocol: **{protocol}**" + ("" if protocol == "full" else " (NOT the paper's protocol)"),
        f"- command: `{prov['command']}`",
        f"- commit: `{prov['commit']}` (pclc {prov.get('pclc', '?')})",
        f"- device: {prov['device']}",
        f"- torch: {prov['torch']}",
        f"- date: {prov['date']}",
    ]
    lines += [f"- cells: {cells}"] if cells else []
    lines += [f"- {n}" for n in notes]
    return "\n".join([*lines, ""]) + "\n"


def config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML for a results file, without credentials."""
    from pclc.tracking import scrub

    return OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(cfg, resolve=True))))


def config_block(config_yaml: str) -> list[str]:
    """The resolved config as a collapsed markdown block."""
    return [
        "<details><summary>resolved config</summary>",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]


def trained_on_notes(store: str | Path, keys: list[str]) -> list[str]:
    """Which machine trained the weights behind a table (from each run's summary; a run restored from the zoo
    keeps the provenance of its training): one line per machine, flagged when a table would mix two."""
    from pclc.store import machine_line

    by: dict[str, list[str]] = {}
    zoo = unfinished = 0
    for key in dict.fromkeys(keys):
        run = RunDir(store, key)
        if run.finished:
            summary = run.read_summary()
            prov = summary.get("provenance") or {}
            line = (
                machine_line(prov["machine"])
                if prov.get("machine")
                else f"{prov.get('device', '?')} (CPU model not recorded), torch {prov.get('torch', '?')}"
            )
            zoo += bool(summary.get("from_zoo"))
        elif run.checkpoint.exists():  # still training (a learning curve so far): its checkpoint names the machine
            m = load_tensors(run.checkpoint).get("machine")
            line = machine_line(m) if m else "machine not recorded (a checkpoint from before pclc recorded it)"
            unfinished += 1
        else:
            continue
        by.setdefault(line, []).append(key)
    if not by:
        return []
    n = sum(map(len, by.values()))
    src = (f"; {zoo} of {n} from the zoo (results/zoo/)" if zoo else "") + (
        f"; {unfinished} of {n} still training, their epochs so far" if unfinished else ""
    )
    lines = [f"weights trained on: {line} ({len(ks)} runs{src})" for line, ks in by.items()]
    if len(by) > 1:
        lines = [
            f"MIXED: the weights behind this table were trained on {len(by)} machine types; its cells are "
            f"not one measurement",
            *lines,
        ]
    return lines


def csv_header(
    title: str, prov: dict[str, Any], protocol: str, config: dict, md_name: str, machines: list[str] = ()
) -> str:
    """The comment lines a results CSV opens with (read it with ``pandas.read_csv(..., comment="#")``).
    ``machines``: the markdown's lines naming the machines behind the numbers (:func:`trained_on_notes`, and
    which machine computed the attacks), so a CSV read without its markdown still says where its weights and
    numbers come from."""
    lines = [
        title,
        f"protocol: {protocol}",
        *provenance_lines(prov),
        *machines,
        "config: " + json.dumps(config, default=str) + f" (resolved config in {md_name})",
    ]
    return "".join(f"# {ln}\n" for ln in lines)


def csv_provenance(path: Path) -> dict[str, str]:
    """The ``# key: value`` lines a results CSV opens with (:func:`csv_header`): command, commit, date, ..."""
    return dict(ln[2:].split(": ", 1) for ln in path.read_text().splitlines() if ln.startswith("# ") and ": " in ln)


def markdown_table(df) -> str:
    """A data frame as a markdown table (floats to 2 decimals; empty cells for missing values)."""
    import math

    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:.2f}" if isinstance(v, float) else f"{v}"

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, "|" + "---|" * len(df.columns), *rows])
