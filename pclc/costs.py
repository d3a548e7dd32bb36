"""What a planned cell costs: measured on this device first, else predicted from ``make bench``.

Best first: the run store (per-epoch seconds in ``metrics.json``, per-example seconds of every evaluation; the
audit's reference AutoAttack, the same code as the suite's, also from the zoo's records), else
``results/bench-<device>.json`` (``make bench``): seconds per FLOP of training and of attack steps, scaled by each
model's FLOPs, the dataset's split sizes (``dataset.examples``) and the attack's passes per example (declared where
it is registered). pclc.plan sums them over an experiment's cells.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from pclc.attacks import ATTACKS, build_attack
from pclc.models import create_model
from pclc.results import crafted_groups, read_store
from pclc.store import RunDir, runs_in
from pclc.zoo import read_record, zoo_dir


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


def attack_passes(kind: str | None, params: dict) -> float | None:
    """Passes per example of registered attack ``kind`` with ``params`` (its registered cost); None where either is
    unknown (a result file without them)."""
    try:
        return float(ATTACKS.get(kind).meta["passes"](params))
    except (ValueError, KeyError, TypeError):
        return None


def training_of(cfg) -> tuple[str | None, str | None]:
    """(loss, adversarial-training attack or None) of a run's config: what, beyond the model, sets how many points
    an attack that stops early (AutoAttack) still attacks."""
    adv = (cfg.get("trainer") or {}).get("adversarial")
    return (cfg.get("loss") or {}).get("name"), (adv or {}).get("attack")


def _attack_seconds(
    results: pd.DataFrame, dataset: str, model: str, training: tuple | None = None
) -> dict[str, dict[float | None, float]]:
    """Measured seconds per example of each white-box attack config on this model, by the passes its parameters
    cost (one config run at 40 steps and at 1000 is two prices; None: passes unknown). The closer measurement wins:
    this dataset's over any, the same adversarial training's, then the same loss with it (``training``:
    :func:`training_of`): AutoAttack costs what its first attacks leave robust, ~7 min on 1,000 images of a PGD-AT
    model against ~1 on the audit's models."""
    white = results[(results.source == "white") & (results.model == model)]
    loss, adv = training or (None, None)
    here = white.dataset == dataset
    masks = [pd.Series(True, index=white.index), here]
    if training is not None:
        same_adv = white.adversarial.fillna("") == (adv or "")
        masks += [same_adv, same_adv & here, same_adv & (white.loss == loss), same_adv & (white.loss == loss) & here]
    per: dict[str, dict[float | None, float]] = {}
    for mine in (white[m] for m in masks):
        passes = [attack_passes(k, json.loads(b or "{}")) for k, b in zip(mine.kind, mine.budget)]
        secs = _per_example(mine).groupby(
            [mine.attack, pd.Series(passes, index=mine.index, dtype=object)], dropna=False
        )
        for (config, p), s in secs.median().items():
            per.setdefault(config, {})[None if p is None or pd.isna(p) else float(p)] = s
    return per


def priced(measured: dict[float | None, float], passes: float | None) -> float:
    """Seconds per example of an attack costing ``passes``, from one config's measurements by passes: the same
    passes measured, else a measurement whose passes are unknown, else the nearest measured passes scaled (an
    arm's ``nb_iter`` override: PGD at 1000 steps was priced as PGD-40's 3 s and took 59-81 s)."""
    if passes in measured:
        return measured[passes]
    if None in measured or passes is None:
        return measured.get(None, next(iter(measured.values())))
    near = min(measured, key=lambda p: abs(math.log(p / passes)))
    return measured[near] * passes / near


AUDIT_AS_SUITE = {"autoattack": "autoattack_ref"}  # the audit's attack -> the suite's config running the same code


def _audit_records(store: Path, zoo: Path | None) -> list[tuple[str, dict]]:
    """(run key, record) of the audit's results of the attacks in ``AUDIT_AS_SUITE``: the store's, and the zoo's
    evaluation records (a fresh clone's store is empty, and what another machine measured is the estimate)."""
    found: dict[tuple[str, str], bytes | None] = {}  # (run, result file): the store's first, a record only if absent
    for run in runs_in(store):
        for a in AUDIT_AS_SUITE:
            found.update({(run.key, f.name): f.read_bytes() for f in sorted((run.path / "audit").glob(f"{a}-*.json"))})
    for rec in sorted(zoo_dir(zoo).glob("*/records/audit")):
        for a in AUDIT_AS_SUITE:
            for f in sorted(rec.glob(f"{a}-*.json.gz")):
                if (at := (rec.parents[1].name, f.name[: -len(".gz")])) not in found:
                    found[at] = read_record(f)
    out = []
    for (key, _), data in found.items():
        try:
            out.append((key, json.loads(data)))
        except (TypeError, ValueError):
            continue  # unreadable (the audit redoes it): not counted
    return out


def _audit_seconds(records: list[tuple[str, dict]], dataset: str, model: str) -> dict[str, dict[None, float]]:
    """Measured seconds per example of the audit's reference AutoAttack (version standard: the code the suite's
    ``autoattack_ref`` runs) on this model and dataset (else any), under the suite's config name. Its cost is the
    points each attack leaves robust, which no FLOP count knows: priced at its worst case (every point surviving
    every attack) the planner predicted 10-40x the audit's measured time. The mean, not the median: the cost
    follows each model's robustness (0.01 s per image on CE, 0.06 on GCE), and a plan sums it over models."""
    mine = [(k, r) for k, r in records if f"-{model}-" in k]
    for part in ([(k, r) for k, r in mine if k.startswith(f"{dataset}-{model}-")], mine):
        per: dict[str, list[float]] = {}
        for _, r in part:
            if (
                (r.get("params") or {}).get("version") == "standard"
                and r.get("n")
                and r.get("attack") in AUDIT_AS_SUITE
            ):
                per.setdefault(AUDIT_AS_SUITE[r["attack"]], []).append(float(r["seconds"]) / int(r["n"]))
        if per:  # passes unknown: the suite's config runs the same code
            return {k: {None: statistics.fmean(v)} for k, v in per.items()}
    return {}


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


def eval_examples(ec: DictConfig) -> int:
    return split_sizes(ec.dataset)[1] if ec.eval.subset is None else int(ec.eval.subset)


class CostModel:
    """Predicted seconds: measured in the run store first, else scaled from ``make bench``."""

    def __init__(self, store: Path, bench: dict | None, zoo: Path | None = None):
        self.store, self.bench, self.zoo = store, bench, zoo
        self._audit: list[tuple[str, dict]] | None = None
        self.sources: set[str] = set()
        self._attacks: dict[tuple, dict] = {}  # the store is read once per (dataset, model, training)
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
            n = eval_examples(ec)
            return measured[0] * n, measured[1] * n
        return self.attack(ec, substitute, entry), 0.0  # the benchmark's attack cost on the substitute

    def attack(self, ec: DictConfig, model: str, entry) -> float | None:
        """Seconds of one white-box evaluation entry of ``model`` over the test set (or subset)."""
        n = eval_examples(ec)
        key = (ec.dataset.name, model, training_of(ec))
        if key not in self._attacks:  # the evaluations' own measurements win over the audit's
            if self._audit is None:
                self._audit = _audit_records(self.store, self.zoo)
            self._attacks[key] = {**_audit_seconds(self._audit, *key[:2]), **_attack_seconds(self.results, *key)}
        measured = self._attacks[key].get(entry.config)
        if measured:
            self.sources.add("store")
            return priced(measured, attack_passes(entry.kind, entry.params)) * n
        if self.bench is None:
            return None
        per = attack_seconds_per_example(self.bench, ec.dataset, model, entry.attack)
        if per is None:
            return None
        self.sources.add("bench")
        return per * n
