"""The planner: which cells of an experiment are done, and the predicted time of the rest.

Costs come from what this device has measured, best first: the run store (per-epoch seconds in
``metrics.json``, per-example seconds of every evaluation), else ``results/bench-<device>.json`` (``make
bench``): seconds per FLOP of training and of attack steps, scaled by each model's FLOPs, the dataset's
split sizes (``dataset.examples``) and the attack's passes per example (declared where it is registered).
Work shared between experiments (a run, one evaluation file) is counted once.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from pclc.attacks import build_attack
from pclc.config import resolve_device
from pclc.derived import substitute_cfg, warmup_source
from pclc.experiment import Job, experiment_cells, missing_entries, sub_experiments, train_cfg
from pclc.models import create_model
from pclc.results import crafted_groups, eval_settings, read_store, result_stem
from pclc.store import RunDir, device_name, run_key, runs_in
from pclc.zoo import read_manifest


# ------------------------------------------------------------------------------------------
# Cost model
# ------------------------------------------------------------------------------------------
def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's whole name as a file name (``nvidia-h100-80gb-hbm3``; its last word alone made
    "A100 80GB PCIe" and "H100 PCIe" both ``pcie``): the suffix of ``results/bench-<slug>.json``."""
    if device.type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-") or "cuda"


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``x`` (torch's FLOP counter: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


@functools.cache
def model_flops(model: str, num_classes: int, channels: int, size: int) -> float:
    """Forward FLOPs per image of a registered model on this input shape."""
    return forward_flops(create_model(model, num_classes, channels, size).eval(), torch.zeros(1, channels, size, size))


def split_sizes(ds: DictConfig) -> tuple[int, int]:
    """(train, test) examples of a dataset config (``examples``), honouring ``subset``."""
    n_train, n_test = int(ds.examples.train), int(ds.examples.test)
    sub = ds.get("subset") or {}
    return (min(n_train, int(sub.get("train") or n_train)), min(n_test, int(sub.get("test") or n_test)))


def load_bench(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(bench: dict, model: str, flops: float, key: str) -> float | None:
    """Measured seconds per FLOP of ``key`` ("epoch" or "pgd"), from the same model, else from the benchmarked
    model nearest in forward FLOPs per image (log scale). Size, not the kind of data, sets a CPU's rate: LeNet-5
    runs far below the matmul peak and VGG-13 near it (``bench-cpu.md``'s ours / floor), so the cnn3 substitute's
    transfer attacks, costed at LeNet-5's rate, were predicted several times too slow; the benchmark now times
    cnn3 itself (Table 3's substitute on every grey dataset)."""
    rows = bench.get("models", [])
    if not rows:
        return None
    same = [r for r in rows if r["model"] == model]
    r = same[0] if same else min(rows, key=lambda r: abs(math.log(r["forward_flops_per_image"] / flops)))
    if key == "epoch":
        return r["epoch_ours_s"] / (3 * r["forward_flops_per_image"] * r["train_images"])
    return r["pgd40_ours_s"] / (40 * 2 * r["forward_flops_per_image"] * 10000)


def adversarial_factor(trainer: DictConfig, step_cost: float = 2 / 3) -> float:
    """Extra cost of adversarial training: each attack step is a forward and input-gradient pass over the
    adversarial share of the batch, costing ``step_cost`` training steps per example (FLOPs alone say 2/3; the
    benchmark's measured ratio replaces it in :func:`epoch_seconds`)."""
    adv = trainer.get("adversarial")
    if not adv:
        return 1.0
    if adv.get("attack") == "trades":  # a clean forward, nb_iter KL steps, then a training step on twice the batch
        return 2.0 + 1 / 3 + int(adv.nb_iter) * step_cost
    return 1.0 + float(adv.fraction) * int(adv.get("nb_iter") or 1) * step_cost


def epoch_seconds(bench: dict, ds: DictConfig, model: str, trainer: DictConfig) -> float | None:
    """Predicted seconds of one training epoch from the benchmark's seconds per training FLOP; an adversarial
    epoch's attack steps at the benchmark's measured cost of a PGD step against a training step, per example
    (2.0 on the 2-core CPU: the 2/3 of FLOPs alone predicted a PGD-AT epoch at a third of its measured time)."""
    flops = model_flops(model, int(ds.num_classes), int(ds.channels), int(ds.size))
    rate = _rate(bench, model, flops, "epoch")
    if rate is None:
        return None
    pgd = _rate(bench, model, flops, "pgd")
    step_cost = 2 / 3 if pgd is None else (2 * pgd) / (3 * rate)
    return rate * 3 * flops * split_sizes(ds)[0] * adversarial_factor(trainer, step_cost)


def attack_seconds_per_example(bench: dict, ds: DictConfig, model: str, attack_cfg: dict) -> float | None:
    """Predicted seconds per attacked example from the benchmark's seconds per attack-step FLOP."""
    flops = model_flops(model, int(ds.num_classes), int(ds.channels), int(ds.size))
    rate = _rate(bench, model, flops, "pgd")
    if rate is None:
        return None
    return rate * 2 * flops * build_attack(attack_cfg).passes


# ------------------------------------------------------------------------------------------
# Measured costs, the store first
# ------------------------------------------------------------------------------------------
def _epoch_kind(trainer) -> tuple:
    """What sets an epoch's cost beyond the model and data: the batch size, the adversarial-training attack and
    its steps."""
    trainer = trainer or {}
    adv = trainer.get("adversarial")
    steps = None if not adv else (adv.get("attack"), adv.get("nb_iter"), adv.get("fraction"))
    return trainer.get("batch_size"), steps


def _epoch_seconds(store: Path, dataset: str, model: str, trainer: DictConfig) -> float | None:
    """Median measured epoch time of this model with this kind of training (batch size, adversarial steps), on
    this dataset (else any)."""
    kind = _epoch_kind(trainer)
    runs = [r for r in runs_in(store) if f"-{model}-" in r.key and r.metrics.exists()]
    for mine in ([r for r in runs if r.key.startswith(f"{dataset}-{model}-")], runs):
        secs = []
        for run in mine:
            if _epoch_kind(run.stored_config().get("trainer")) == kind:
                secs += [r["seconds"] for r in json.loads(run.metrics.read_text()) if "source" not in r]
        if secs:
            return statistics.median(secs)
    return None


def _per_example(df: pd.DataFrame) -> pd.Series:
    return df.seconds / df.n.clip(lower=1)


def _attack_seconds(results: pd.DataFrame, dataset: str, model: str) -> dict[str, float]:
    """Measured seconds per example of each white-box attack config on this model and dataset (else any)."""
    white = results[(results.source == "white") & (results.model == model)]
    per: dict[str, float] = {}
    for mine in (white, white[white.dataset == dataset]):  # the exact pair wins
        per.update(_per_example(mine).groupby(mine.attack).median().to_dict())
    return per


def _transfer_seconds(results: pd.DataFrame, dataset: str, substitute: str) -> dict[str, tuple[float, float]]:
    """Measured (crafting, target) seconds per example of each transfer attack config crafted on a
    ``substitute`` model, on this dataset (else any). The first target of a substitute crafts (its file's
    seconds include the crafting); the others read the substitute's cache: the fastest file of a group is the
    target's own pass, and the slowest minus it the crafting."""
    tr = results[(results.source == "transfer") & results.substitute.fillna("").str.contains(f"-{substitute}-")]
    per: dict[str, tuple[float, float]] = {}
    for mine in (tr, tr[tr.dataset == dataset]):  # the dataset's own win
        found: dict[str, tuple[list[float], list[float]]] = {}
        for (attack, _, _), secs in _per_example(mine).groupby([mine.attack, mine.substitute, mine.eps.fillna(-1)]):
            craft, target = found.setdefault(attack, ([], []))
            craft.append(secs.max() - (secs.min() if len(secs) > 1 else 0.0))
            target += [secs.min()] if len(secs) > 1 else []
        per.update({a: (statistics.median(c), statistics.median(t) if t else 0.0) for a, (c, t) in found.items()})
    return per


def crafted_share(store: Path, sub_key: str, stem: str, n: int, step: int) -> float:
    """Share of a transfer attack's examples already crafted in the substitute's cache (one file per batch
    group, :func:`pclc.results.craft_cache`)."""
    return min(1.0, crafted_groups(RunDir(store, sub_key), stem) / -(-n // step))


def _examples(ec: DictConfig) -> int:
    return split_sizes(ec.dataset)[1] if ec.eval.subset is None else int(ec.eval.subset)


class CostModel:
    """Predicted seconds: measured in the run store first, else scaled from ``make bench``."""

    def __init__(self, store: Path, bench: dict | None):
        self.store, self.bench = store, bench
        self.sources: set[str] = set()
        self._attacks: dict[tuple, dict[str, float]] = {}  # the store is read once per (dataset, model)
        self._epochs: dict[tuple, float | None] = {}
        self._results: pd.DataFrame | None = None

    @property
    def results(self) -> pd.DataFrame:
        """Every result in the store (unchecked: only its seconds and n are read), read once."""
        if self._results is None:
            self._results = read_store(self.store, checked=False)
        return self._results

    def epoch(self, tc: DictConfig) -> float | None:
        k = (tc.dataset.name, tc.model.name, _epoch_kind(tc.trainer))
        if k not in self._epochs:
            self._epochs[k] = _epoch_seconds(self.store, tc.dataset.name, tc.model.name, tc.trainer)
        if self._epochs[k] is not None:
            self.sources.add("store")
            return self._epochs[k]
        s = None if self.bench is None else epoch_seconds(self.bench, tc.dataset, tc.model.name, tc.trainer)
        if s is not None:
            self.sources.add("bench")
        return s

    def training(self, tc: DictConfig, done_epochs: int) -> float | None:
        todo = 2 * int(tc.trainer.epochs_per_phase) - done_epochs
        if todo <= 0:
            return 0.0
        per = self.epoch(tc)
        return None if per is None else per * todo

    def transfer(self, ec: DictConfig, substitute: str, entry) -> tuple[float | None, float]:
        """Seconds of a transfer entry over the test set (or subset): (crafting on ``substitute``, done once
        per substitute whatever the number of targets; the target's own pass)."""
        key = ("transfer", ec.dataset.name, substitute)
        if key not in self._attacks:
            self._attacks[key] = _transfer_seconds(self.results, ec.dataset.name, substitute)
        measured = self._attacks[key].get(entry.config)
        if measured is not None:
            self.sources.add("store")
            n = _examples(ec)
            return measured[0] * n, measured[1] * n
        return self.attack(ec, substitute, entry), 0.0  # the benchmark's attack cost on the substitute

    def attack(self, ec: DictConfig, model: str, entry) -> float | None:
        """Seconds of one white-box evaluation entry of ``model`` over the test set (or subset)."""
        n = _examples(ec)
        key = (ec.dataset.name, model)
        if key not in self._attacks:
            self._attacks[key] = _attack_seconds(self.results, *key)
        measured = self._attacks[key].get(entry.config)
        if measured is not None:
            self.sources.add("store")
            return measured * n
        if self.bench is None:
            return None
        per = attack_seconds_per_example(self.bench, ec.dataset, model, entry.attack)
        if per is None:
            return None
        self.sources.add("bench")
        return per * n


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
                    left = 1.0 - crafted_share(store, skey, name, _examples(ec), step)
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
    rows, _ = plan_items(cfg, CostModel(Path(cfg.store), load_bench(bench_path(cfg))))
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
    cost = CostModel(Path(cfg.store), load_bench(bench_path(cfg)))
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
    rows, _ = plan_items(cfg, CostModel(Path(cfg.store), load_bench(bench_path(cfg))))
    seconds = [r["predicted_seconds"] for r in rows if r["cell"] != "-"]
    if not seconds or any(s is None for s in seconds):
        return None
    return max(floor, int(-(-margin * max(seconds) // 60)))
