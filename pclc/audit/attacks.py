"""The audit's attacks: their specs from ``audit.attacks`` (configs/audit.yaml), each one's per-example
correctness, and the per-example cache in ``runs/<key>/audit/`` (the paper's PGD read from pclc.evaluate's
results when they exist)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pclc.attacks import Attack, build_attack
from pclc.audit.checks import paper_attack
from pclc.files import CorruptFileError, atomic_write_json, read_json
from pclc.metrics import percent
from pclc.store import RunDir, provenance, weights_digest

log = logging.getLogger(__name__)

# The order attacks run and are reported in, by group (within a group: the order of audit.attacks).
GROUPS = ("single-step", "paper", "steps", "adaptive", "black-box", "standard", "transfer")


@dataclass(frozen=True)
class Spec:
    """One audit attack: the built attack, its hashed parameters, its group, the transfer source's run key,
    and its own batch size (Square: one long loop per batch) when it has one."""

    name: str
    attack: Attack
    params: dict
    group: str  # single-step | paper | steps | adaptive | black-box | transfer
    source_key: str | None = None
    batch_size: int | None = None
    source_weights: str | None = None  # the transfer source's weights hash (what a cached result needs)


def attack_specs(attacks: dict[str, dict], num_classes: int, source: tuple | None = None) -> list[Spec]:
    """The audit's attacks (``audit.attacks``: name -> {group, attack, [batch_size], [min_classes]}), those
    the class count allows (DLR needs K >= 3, targeted APGD K >= 4); transfer ones only with a source,
    ``(run key, model, cache dir)``."""
    out = []
    unknown = sorted({a["group"] for a in attacks.values()} - set(GROUPS))
    if unknown:
        raise ValueError(f"audit.attacks: unknown group(s) {unknown}; known: {list(GROUPS)}")
    for name, a in sorted(attacks.items(), key=lambda kv: GROUPS.index(kv[1]["group"])):
        if num_classes < int(a.get("min_classes") or 0):
            continue
        runtime, key, weights = {}, None, None
        if a["group"] == "transfer":
            if source is None:
                continue
            key, runtime = (
                source[0],
                {"source": source[1], "cache_dir": source[2] if len(source) > 2 else None},
            )
            weights = weights_digest(source[1].state_dict())
        atk = build_attack(a["attack"], **runtime)
        out.append(
            Spec(
                name,
                atk,
                atk.params,
                a["group"],
                key,
                None if a.get("batch_size") is None else int(a["batch_size"]),
                weights,
            )
        )
    paper_attack({s.name: s.group for s in out})  # exactly one paper attack
    return out


def attack_correct(model, x, y, attack: Callable, eps: float, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Per example (CPU bool): correct on the clean input and on ``attack``'s output. Batch ``i`` is seeded
    ``seed + i``; one host sync at the end."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        adv = attack(model, xb, yb, float(eps), seed + i).detach()
        with torch.no_grad():
            out.append((model(xb).argmax(1) == yb) & (model(adv).argmax(1) == yb))
    return torch.cat(out).cpu()


def _labels_digest(y: torch.Tensor) -> str:
    return hashlib.sha256(y.cpu().numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def cache_name(
    spec: Spec, eps: float, subset: int | None, batch_size: int, seed: int, only: torch.Tensor | None = None
) -> str:
    """``<attack>-eps<eps>[-sub<N>][-only<hash>]-<hash of params, source, batch size, seed>.json``; ``only``
    (the examples attacked, when not all) enters the name."""
    digest = hashlib.sha256(
        json.dumps(
            [spec.name, spec.params, spec.source_key, spec.batch_size or batch_size, seed], sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    sub = "" if subset is None else f"-sub{subset}"
    if only is not None:
        sub += "-only" + hashlib.sha256(only.cpu().numpy().astype(np.uint8).tobytes()).hexdigest()[:8]
    return f"{spec.name}-eps{eps:g}{sub}-{digest}.json"


def _from_eval(
    evaluated: RunDir | None, spec: Spec, eps: float, subset: int | None, y, weights: str
) -> tuple[torch.Tensor, str | None] | None:
    """The paper's PGD at ``eps`` as pclc.evaluate already computed it for this run, if it did (and the device
    its file says computed it)."""
    if evaluated is None or spec.group != "paper":
        return None
    from pclc.attacks.suite import SuiteItem
    from pclc.results import result_path

    path = result_path(evaluated, SuiteItem("pgd", spec.attack.name, float(eps), "white", spec.params), subset)
    if not path.exists():
        return None
    try:
        found = read_json(path)
    except CorruptFileError:
        return None
    if found.get("weights") not in (None, weights):
        return None  # computed on other weights
    rec = found["records"]
    label = torch.tensor(rec["label"])
    if not torch.equal(label, y.cpu()):
        return None
    return (torch.tensor(rec["clean_pred"]) == label) & (torch.tensor(rec["adv_pred"]) == label), found.get("device")


def cached_correct(
    spec: Spec,
    model,
    x,
    y,
    eps: float,
    cache_dir: Path,
    subset: int | None,
    batch_size: int,
    seed: int,
    evaluated: RunDir | None = None,
    only: torch.Tensor | None = None,
    weights: str | None = None,
    devices: set[str] | None = None,
) -> torch.Tensor:
    """Per-example correctness under ``spec`` at ``eps``: from the cache, from pclc.evaluate's file for the
    paper's PGD, or computed (and cached atomically). ``only`` (bool per example): attack just these; the
    others count as not robust (the cascade passes the examples that survived every attack so far).
    ``devices``: gains the device that computed the result (a cached one may come from another machine, through
    the zoo's records), so a report names every machine behind its numbers."""
    path = Path(cache_dir) / cache_name(spec, eps, subset, batch_size, seed, only)
    labels = _labels_digest(y)
    weights = weights or weights_digest(model.state_dict())  # what a cached result is tied to, and the source's
    weights_key = weights if spec.source_weights is None else f"{weights}:{spec.source_weights}"
    if path.exists():
        try:
            d = read_json(path)
        except CorruptFileError as e:
            log.warning("%s; recomputing", e)
            d = {}
        if d.get("labels") == labels and d.get("weights") == weights_key:
            if devices is not None:
                devices.add((d.get("provenance") or {}).get("device") or "device not recorded")
            return torch.tensor(d["correct"], dtype=torch.bool)
        if d:
            log.warning("%s was computed on other examples or weights; recomputing", path)
    t0 = time.perf_counter()
    bs = spec.batch_size or batch_size
    found = None if only is not None else _from_eval(evaluated, spec, eps, subset, y, weights)
    correct, source = (found[0], "pclc.evaluate") if found is not None else (None, "audit")
    prov = provenance(x.device)
    if found is not None:  # computed by pclc.evaluate, perhaps on another machine: its device, not this one
        prov["device"] = found[1] or "device not recorded"
    if correct is None:
        idx = torch.arange(len(y)) if only is None else only.cpu().nonzero().squeeze(1)
        correct = torch.zeros(len(y), dtype=torch.bool)
        if len(idx):
            i = idx.to(x.device)
            correct[idx] = attack_correct(model, x[i], y[i], spec.attack, eps, bs, seed)
    secs = time.perf_counter() - t0
    atomic_write_json(
        path,
        {
            "attack": spec.name,
            "group": spec.group,
            "eps": eps,
            "params": spec.params,
            "weights": weights_key,
            "source_run": spec.source_key,
            "subset": subset,
            "n": len(correct),
            "labels": labels,
            "attacked": len(y) if only is None else int(only.sum()),
            "batch_size": bs,
            "accuracy": percent(correct),
            "seconds": secs,
            "computed_by": source,
            "provenance": prov,
            "correct": correct.int().tolist(),
        },
    )
    log.info("%s eps=%g: %.2f%% (%.1fs)", spec.name, eps, percent(correct), secs)
    if devices is not None:
        devices.add(prov["device"])
    return correct
