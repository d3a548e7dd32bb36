"""Check the zoo on the machine at hand: re-evaluate every zoo model on a fixed set of cells and compare with
the numbers the manifest records from the machine that trained it.

    make verify-zoo                              # python -m pclc.verify: writes results/verify-<machine>.{md,csv}
    python -m pclc.verify --record               # on the training machine: record the reference numbers
    python -m pclc.verify --device cpu           # the host CPU of a GPU machine (default auto: its GPU)

The cells are the clean accuracy on the full test set (against the manifest's ``clean_accuracy``) and clean,
FGSM and the paper's PGD at the dataset's epsilon grid (``configs/attack/suite/verify.yaml``) on the first
``--subset`` test images (against the manifest's ``verify`` record). The same weights evaluated on another CPU
type may differ where float reductions differ; this measures by how much.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pclc import zoo
from pclc.store import machine, machine_line, provenance, provenance_lines

log = logging.getLogger(__name__)


def machine_slug(m: dict[str, Any]) -> str:
    """``amd-epyc-avx512`` or ``nvidia-h100-80gb-hbm3``: a file name for a machine record."""
    raw = m.get("gpu") or f"{m.get('cpu_model', 'cpu')} {m.get('cpu_capability', '')}"
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-") or "unknown"


def model_cells(
    entry: dict[str, Any], store: Path, subset: int, zoo_folder: Path | None, device: torch.device
) -> dict[str, float]:
    """The verification cells of one zoo model, evaluated here (its run restored into ``store``)."""
    from pclc.config import compose, quoted
    from pclc.data import eval_tensors
    from pclc.evaluate import evaluate
    from pclc.metrics import percent, predict
    from pclc.store import load_run

    run = zoo.restore(entry["key"], store, zoo_folder, records=False)  # every number computed here, none copied
    cfg, model = load_run(run, device)
    ec = compose(
        "evaluate",
        [
            f"dataset={cfg.dataset.name}",
            f"run_dir={quoted(run.path)}",
            "attack/suite=verify",
            "logger=none",
            f"store={quoted(store)}",
            f"eval.subset={subset}",
            f"device={device.type}",
        ],
    )
    cfg.dataset.root = ec.dataset.root
    x, y = eval_tensors(cfg.dataset, None, device)
    cells = {"clean (full test set)": percent(predict(model, x, 1000).argmax(1) == y)}
    summary = evaluate(ec)
    cells[f"clean (first {subset})"] = summary["clean_accuracy"]
    for r in summary["results"]:
        cells[f"{r['attack']} eps {r['eps']:g} (first {subset})"] = r["adv_accuracy"]
    return cells


def verify(
    zoo_folder: str | Path | None = None,
    store: str | Path | None = None,
    subset: int = 1000,
    record: bool = False,
    out_dir: str | Path = "results",
    names: list[str] | None = None,
    device: str = "auto",
) -> Path:
    """Evaluate every (or each named) zoo model here, on ``device`` (auto: the GPU where there is one); write
    ``<out_dir>/verify-<machine>.{md,csv}`` after each model (marked partial until the last, so a run cut short,
    a GPU lease say, leaves what it measured); with ``record``, store the numbers in the manifest as the
    reference other machines are compared with."""
    from pclc.config import resolve_device

    device = resolve_device(device)
    entries = zoo.read_manifest(zoo_folder)
    if names:
        entries = [zoo.find(n, zoo_folder) for n in names]
    if not entries:
        raise zoo.ZooError(f"the zoo ({zoo.zoo_dir(zoo_folder)}) has no models to verify")
    here = machine(device)
    rows, recorded = [], {}
    with tempfile.TemporaryDirectory(prefix="pclc-verify-") as tmp:
        store = Path(store or tmp)
        for i, e in enumerate(entries, 1):
            log.info("verify %d/%d: %s", i, len(entries), e["name"])
            cells = model_cells(e, store, subset, zoo_folder, device)
            ref = {
                "clean (full test set)": e["clean_accuracy"],
                **((e.get("verify") or {}).get("cells") or {}),
            }
            for cell, ours in cells.items():
                r = ref.get(cell)
                rows.append(
                    {
                        "model": e["name"],
                        "trained_on": e["trained_on"].get("line", "?"),
                        "cell": cell,
                        "here": round(ours, 2),
                        "manifest": r,
                        "diff": None if r is None else round(ours - float(r), 2),
                    }
                )
            recorded[e["key"]] = {
                "subset": subset,
                "cells": {k: round(v, 2) for k, v in cells.items() if k != "clean (full test set)"},
                "machine": machine_line(here),
            }
            if i < len(entries):
                _write(pd.DataFrame(rows), Path(out_dir), here, subset, False, device, (i, len(entries)))
    if record:
        zoo.update(lambda e: {**e, "verify": recorded[e["key"]]} if e["key"] in recorded else e, zoo_folder)
    return _write(pd.DataFrame(rows), Path(out_dir), here, subset, record, device)


def _write(
    df: pd.DataFrame,
    out_dir: Path,
    here: dict[str, Any],
    subset: int,
    record: bool,
    device: torch.device,
    partial: tuple[int, int] | None = None,
) -> Path:
    from pclc.files import atomic_write_text

    diffs = df["diff"].dropna().abs()
    worst = df.loc[diffs.idxmax()] if len(diffs) else None
    prov = provenance(device)
    head = [
        f"# Zoo verification on {machine_line(here)}",
        "",
        *[f"- {ln}" for ln in provenance_lines(prov)],
        f"- evaluated on: {machine_line(here)}",
        f"- trained on: {'; '.join(sorted(df.trained_on.unique()))}",
        f"- cells: clean accuracy on the full test set (manifest: `clean_accuracy`), and clean, FGSM and the "
        f"paper's PGD at the dataset's ε grid on the first {subset} test images (manifest: `verify`, recorded "
        "on the training machine with `python -m pclc.verify --record`)",
        f"- models: {df.model.nunique()}; cells compared: {len(diffs)} of {len(df)}",
        (
            f"- largest |difference| against the manifest: **{abs(worst['diff']):.2f}** points ({worst.model} "
            f"{worst.cell}: here {worst.here:.2f}, manifest {float(worst.manifest):.2f})"
            if worst is not None
            else "- no manifest numbers to compare with"
        ),
        *(["- this run recorded its numbers in the manifest (--record)"] if record else []),
        *(
            [f"- **PARTIAL: {partial[0]} of {partial[1]} models so far** (the run stopped or is running)"]
            if partial
            else []
        ),
        "",
    ]
    table = ["| model | cell | here | manifest | diff |", "|---|---|---|---|---|"]
    table += [
        f"| {r['model']} | {r['cell']} | {r['here']:.2f} | "
        f"{'—' if pd.isna(r['manifest']) else format(float(r['manifest']), '.2f')} | "
        f"{'—' if pd.isna(r['diff']) else format(r['diff'], '+.2f')} |"
        for r in df.to_dict("records")
    ]
    slug = machine_slug(here)
    md, csv = out_dir / f"verify-{slug}.md", out_dir / f"verify-{slug}.csv"
    atomic_write_text(csv, "".join(f"# {ln}\n" for ln in provenance_lines(prov)) + df.to_csv(index=False))
    atomic_write_text(md, "\n".join(head + table) + "\n")
    if not partial:
        print("\n".join(head))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pclc.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default=None, help="the zoo folder (default: $PCLC_ZOO, else results/zoo)")
    p.add_argument("--store", default=None, help="run store to restore into (default: a temporary folder)")
    p.add_argument("--subset", type=int, default=1000, help="test images for the attacked cells (default 1000)")
    p.add_argument("--record", action="store_true", help="record this machine's numbers in the manifest")
    p.add_argument("--out-dir", default="results", help="where verify-<machine>.{md,csv} go (default results)")
    p.add_argument("--device", default="auto", help="auto (the GPU where there is one), cpu or cuda")
    p.add_argument("names", nargs="*", help="zoo models to verify (default: all)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    if a.subset < 1:
        print(f"error: --subset must be a positive number of test images, got {a.subset}", file=sys.stderr)
        return 2
    try:
        verify(a.zoo, a.store, a.subset, a.record, a.out_dir, a.names or None, a.device)
    except zoo.ZooError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
