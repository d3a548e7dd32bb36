"""Write the summaries of finished training runs (with their provenance) to results/.

    python scripts/summarize_runs.py --store runs --prefix fmnist-lenet5 --out results/training-fmnist-lenet5
    python scripts/summarize_runs.py --store runs --runs <key>,<key> --out results/training-fmnist-lenet5

Each run's own summary.json already records the command, commit, device and date that trained it;
this script collects them beside the paper's clean accuracies (Table 1) into ``<out>.md`` and
``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pclc.files import atomic_write_json, atomic_write_text
from pclc.headers import trained_on_notes
from pclc.paper_data import paper_tables
from pclc.store import RunDir, provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix", help="run keys starting with this, e.g. fmnist-lenet5")
    which.add_argument("--runs", help="these run keys, comma-separated, in this order")
    ap.add_argument("--out", required=True, help="output path without suffix")
    ap.add_argument("--note", action="append", default=[], help="a line to add under the header (repeatable)")
    args = ap.parse_args()

    paper = paper_tables()
    paper = paper[(paper.table == "table1") & (paper.attack == "clean")]
    keys = args.runs.split(",") if args.runs else [p.name for p in sorted(Path(args.store).glob(f"{args.prefix}-*"))]
    runs = [RunDir(args.store, k) for k in keys if (Path(args.store) / k / "summary.json").exists()]
    if args.runs and len(runs) < len(keys):
        raise SystemExit(f"not finished in {args.store}: {sorted(set(keys) - {r.key for r in runs})}")
    if not runs:
        raise SystemExit(f"no finished runs matching {args.prefix}-* in {args.store}")
    title = f"{args.prefix}-*" if args.prefix else f"{runs[0].key.rsplit('-', 3)[0]}-* ({len(runs)} runs)"
    rows = []
    for run in runs:
        s = run.read_summary()
        cfg = OmegaConf.load(run.config).resolved
        metrics = json.loads(run.metrics.read_text())
        own = [m for m in metrics if "source" not in m]
        p = paper[(paper.dataset == s["dataset"]) & (paper.model == s["model"]) & (paper.method == s["loss"])]
        rows.append(
            {
                "key": s["key"],
                "dataset": s["dataset"],
                "model": s["model"],
                "loss": s["loss"],
                "trainer": "adversarial" if cfg["trainer"].get("adversarial") else "paper",
                "epochs": s["epochs"],
                "epochs_trained_here": len(own),
                "warmup_from": s["warmup_from"],
                "test_accuracy": s["test_accuracy"],
                "prob_gap": s["prob_gap"],
                "best_test_accuracy": max(m["test_accuracy"] for m in metrics),
                "paper_clean_accuracy": float(p.accuracy.iloc[0])
                if len(p) and not cfg["trainer"].get("adversarial")
                else None,
                "train_seconds": s["train_seconds"],
                "seconds_per_epoch": s["train_seconds"] / max(1, len(own)),
                "provenance": s["provenance"],
                "config": OmegaConf.to_container(OmegaConf.load(run.config).identity),
            }
        )
    me = provenance(torch.device("cpu"))
    lines = [
        f"# Training runs {title} (full protocol unless the run config says otherwise)",
        "",
        f"- collected by: `{me['command']}` at commit `{me['commit']}` on {me['date']}",
        "- each run was trained by the command, commit and device listed below (from its summary.json)",
        *[f"- {n}" for n in trained_on_notes(args.store, [r.key for r in runs])],
        "- test accuracy and mean probability gap p_y − max_{k≠y} p_k are on the full test set, final epoch",
        *[f"- note: {n}" for n in args.note],
        "",
        "| loss | trainer | test acc. | paper | best epoch acc. | mean gap | epochs (here) | s/epoch | warm-up from |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper_acc = "—" if r["paper_clean_accuracy"] is None else f"{r['paper_clean_accuracy']:.1f}"
        lines.append(
            f"| {r['loss']} | {r['trainer']} | {r['test_accuracy']:.2f} | {paper_acc} | "
            f"{r['best_test_accuracy']:.2f} | {r['prob_gap']:.3f} | {r['epochs']} ({r['epochs_trained_here']}) | "
            f"{r['seconds_per_epoch']:.1f} | {r['warmup_from'] or '—'} |"
        )
    lines += ["", "## Provenance of each run", ""]
    for r in rows:
        pv = r["provenance"]
        t, loss = r["config"]["trainer"], r["config"]["loss"]
        lines.append(
            f"- `{r['key']}`: `{pv['command']}`, commit `{pv['commit']}`, {pv['device']}, "
            f"torch {pv['torch']}, {pv['date']}; config: loss {loss['name']} {loss['params']}, "
            f"T={t['epochs_per_phase']}, batch {t['batch_size']}, Adam lr {t['lr']}, milestones {t['milestones']}, "
            f"adversarial {t['adversarial']}, seed {r['config']['seed']} (full identity in the .json)"
        )
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_json(out.with_suffix(".json"), {"collected_by": me, "notes": args.note, "runs": rows})
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
