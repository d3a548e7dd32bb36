"""The planner: which cells of an experiment are done, and the predicted time of the rest.

Costs come from pclc.costs: what this device has measured (the run store, the zoo's records), else ``make bench``
scaled by FLOPs. Work shared between experiments (a run, one evaluation file) is counted once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pclc.config import resolve_device
from pclc.costs import CostModel, crafted_share, device_slug, eval_examples, load_bench
from pclc.derived import substitute_cfg, warmup_source
from pclc.experiment import Job, experiment_cells, missing_entries, sub_experiments, train_cfg
from pclc.results import eval_settings, result_stem
from pclc.store import RunDir, device_name, run_key
from pclc.zoo import read_manifest


# ------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------
def _done_epochs(store: Path, tc: DictConfig, cell: Job | None) -> int:
    run = RunDir(store, run_key(tc))
    if run.finished:
        return 2 * int(tc.trainer.epochs_per_phase)
    if run.metrics.exists():
        return len(json.loads(run.metrics.read_text()))
    if cell is not None and tc.loss.get("warmup"):  # phase 1 may exist in the warm-up run
        warm = RunDir(store, run_key(warmup_source(tc)))
        return int(tc.trainer.epochs_per_phase) if warm.warmup.exists() else 0
    return 0


def bench_path(cfg: DictConfig) -> Path:
    """``cfg.bench`` or ``<out_dir>/bench-<device>.json`` (written by ``make bench`` on this kind of device)."""
    if cfg.get("bench"):
        return Path(cfg.bench)
    return Path(cfg.out_dir) / f"bench-{device_slug(resolve_device(cfg.device))}.json"


def plan_items(cfg: DictConfig, cost: CostModel) -> tuple[list[dict], dict[tuple, float | None]]:
    """Rows (one per cell, and per black-box substitute) and the work still to do, keyed so that work shared
    between experiments counts once: {("train", key) or ("eval", key, file): seconds, None if unmeasured}."""
    store = Path(cfg.store)
    rows: list[dict] = []
    work: dict[tuple, float | None] = {}

    # from_zoo=true restores a zoo model instead of training it (the manifest read once, not per cell)
    zoo_keys = {e["key"] for e in read_manifest(cfg.get("zoo_dir"))} if cfg.get("from_zoo") else set()

    def trained(key: str) -> bool:
        return key in zoo_keys or RunDir(store, key).finished

    for i, cell in enumerate(experiment_cells(cfg)):
        tc = train_cfg(cell, cfg)
        key = run_key(tc)
        phase = int(tc.trainer.epochs_per_phase)
        done = 2 * phase if trained(key) else _done_epochs(store, tc, cell)
        shared = done < phase and tc.loss.get("warmup") and ("train", run_key(warmup_source(tc))) in work
        train_s = cost.training(tc, phase if shared else done)  # shared: phase 1 is the warm-up run's, planned above
        if train_s != 0.0:
            work[("train", key)] = train_s
        todo = missing_entries(cell, cfg)
        eval_s: float | None = 0.0
        for ec, e in todo:
            name = result_stem(e, *eval_settings(ec))
            if e.source == "transfer":
                sc = substitute_cfg(tc, ec.eval.substitute)
                skey = run_key(sc)
                if ("train", skey) not in work and not trained(skey):
                    sdone = _done_epochs(store, sc, None)
                    work[("train", skey)] = st = cost.training(sc, sdone)
                    rows.append(
                        {
                            "cell": "-",
                            "label": f"{cell.dataset}/{sc.model.name}/ce (substitute)",
                            "key": skey,
                            "trained": False,
                            "epochs_done": f"{sdone}/{2 * int(sc.trainer.epochs_per_phase)}",
                            "evals_missing": 0,
                            "predicted_seconds": None if st is None else round(st, 1),
                        }
                    )
                craft, s = cost.transfer(ec, sc.model.name, e)
                if ("craft", skey, name) not in work:  # once per substitute: every target reads its cache
                    step = int(e.params.get("batch_size", ec.eval.batch_size)) * int(ec.eval.group_batches)
                    left = 1.0 - crafted_share(store, skey, name, eval_examples(ec), step)
                    work[("craft", skey, name)] = None if craft is None else craft * left
                    eval_s = None if craft is None or eval_s is None else eval_s + craft * left
            else:
                s = cost.attack(ec, cell.model, e)
            work[("eval", key, name)] = s
            eval_s = None if s is None or eval_s is None else eval_s + s
        rows.append(
            {
                "cell": i,
                "label": cell.label,
                "key": key,
                "trained": trained(key),
                "epochs_done": f"{done}/{2 * phase}",
                "evals_missing": len(todo),
                "predicted_seconds": None if train_s is None or eval_s is None else round(train_s + eval_s, 1),
            }
        )
    return rows, work


def cell_seconds(cfg: DictConfig) -> list[float | None]:
    """The planner's seconds for each cell of ``cfg``, in order (a black-box substitute's training counted in
    the first cell that needs it; None where nothing measured the work): the ETA lines of a reproduce."""
    rows, _ = plan_items(cfg, CostModel(Path(cfg.store), load_bench(bench_path(cfg)), cfg.get("zoo_dir")))
    out: list[float | None] = []
    pending: float | None = 0.0
    for r in rows:
        s = r["predicted_seconds"]
        total = None if s is None or pending is None else s + pending
        if r["cell"] == "-":
            pending = total
        else:
            out.append(total)
            pending = 0.0
    return out


def plan(cfg: DictConfig) -> dict[str, Any]:
    """Which cells are trained and evaluated, and the predicted time of the rest from measured costs
    (``experiment=all``: every experiment's, shared work counted once)."""
    cost = CostModel(Path(cfg.store), load_bench(bench_path(cfg)), cfg.get("zoo_dir"))
    rows, work, audited = [], {}, []
    for sub in sub_experiments(cfg) if cfg.experiment.kind == "all" else [cfg]:
        r, w = plan_items(sub, cost)
        rows += [{"experiment": sub.experiment.name, **x} for x in r]
        work.update(w)
        if sub.experiment.kind == "audit":
            audited += [x["key"] for x in r if x["cell"] != "-"]
    total = sum(v for v in work.values() if v is not None)
    unknown = sorted({k[1] + (f" {k[2]}" if len(k) > 2 else " training") for k, v in work.items() if v is None})
    from pclc.plan_file import other_cpu_note

    bench = cost.bench if "bench" in cost.sources else None
    out = {
        "cells": rows,
        "predicted_seconds": total,
        "unmeasured": unknown,
        "sources": sorted(cost.sources),
        "audits_not_predicted": audited,
        "bench_note": other_cpu_note(bench, device_name(resolve_device(cfg.device))),  # stdout and plan_out
    }
    print(pd.DataFrame(rows).to_string(index=False))
    if cfg.get("plan_out"):
        from pclc.plan_file import write_plan

        print(f"the plan, with its provenance: {write_plan(cfg, out, cost.bench, bench_path(cfg), cost.sources)}")
    src = {"store": "the run store", "bench": f"{bench_path(cfg)} (scaled by FLOPs)"}
    print(
        f"predicted time for the rest: {total / 60:.1f} min ({total / 3600:.2f} h) on this device"
        + (f", from {' and '.join(src[k] for k in sorted(cost.sources, reverse=True))}" if cost.sources else "")
        + (
            f"; not predicted ({len(unknown)} items, no measurement: run `make bench` on this device): "
            + ", ".join(unknown[:6])
            + (" ..." if len(unknown) > 6 else "")
            if unknown
            else ""
        )
    )
    if out["bench_note"]:
        print(out["bench_note"])
    if audited:
        print(
            f"not in that figure: the audit's attacks on {len(audited)} runs (their cost depends on how many "
            "examples survive each attack: the adaptive ones run as a cascade on survivors); finished "
            "attacks are cached in runs/<key>/audit/"
        )
    return out


def cell_timeout_minutes(cfg: DictConfig, margin: float = 1.5, floor: int = 10) -> int | None:
    """A per-cell job time limit for a launcher (SLURM's ``timeout_min``): ``margin`` times the slowest
    cell's predicted time still to do, at least ``floor`` minutes; None when a cell has no prediction.
    Training resumes from its last checkpoint, so a limit too short costs a requeue, not the work."""
    rows, _ = plan_items(cfg, CostModel(Path(cfg.store), load_bench(bench_path(cfg)), cfg.get("zoo_dir")))
    seconds = [r["predicted_seconds"] for r in rows if r["cell"] != "-"]
    if not seconds or any(s is None for s in seconds):
        return None
    return max(floor, int(-(-margin * max(seconds) // 60)))
