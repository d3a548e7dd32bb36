"""Running the audit: its attacks from ``audit.attacks`` (configs/audit.yaml), a per-example cache, the
cascade of adaptive attacks on survivors, eps sweeps, and one model's result."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pclc.analysis.saturation import saturation_probe
from pclc.attacks import Attack, build_attack, check_eps
from pclc.audit.checks import (
    checks,
    explain_verdict,
    named,
    paper_attack,
    verdict,
    verdict_evidence,
    worst_case,
)
from pclc.audit.result import AuditResult
from pclc.data import eval_tensors
from pclc.files import CorruptFileError, atomic_write_json, read_json
from pclc.metrics import percent
from pclc.store import RunDir, load_run, provenance, weights_digest

log = logging.getLogger(__name__)

CASCADE = "adaptive-cascade"  # the eps sweep of the cascade of adaptive attacks (profile.cascade)
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
) -> torch.Tensor | None:
    """The paper's PGD at ``eps`` as pclc.evaluate already computed it for this run, if it did."""
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
    return (torch.tensor(rec["clean_pred"]) == label) & (torch.tensor(rec["adv_pred"]) == label)


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
) -> torch.Tensor:
    """Per-example correctness under ``spec`` at ``eps``: from the cache, from pclc.evaluate's file for the
    paper's PGD, or computed (and cached atomically). ``only`` (bool per example): attack just these; the
    others count as not robust (the cascade passes the examples that survived every attack so far)."""
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
            return torch.tensor(d["correct"], dtype=torch.bool)
        if d:
            log.warning("%s was computed on other examples or weights; recomputing", path)
    t0 = time.perf_counter()
    bs = spec.batch_size or batch_size
    correct = None if only is not None else _from_eval(evaluated, spec, eps, subset, y, weights)
    source = "pclc.evaluate" if correct is not None else "audit"
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
            "provenance": provenance(x.device),
            "correct": correct.int().tolist(),
        },
    )
    log.info("%s eps=%g: %.2f%% (%.1fs)", spec.name, eps, percent(correct), secs)
    return correct


def eps_sweep(correct_at: Callable[[float], torch.Tensor], eps_grid, max_eps: float = 1.0) -> dict[str, list[float]]:
    """Accuracy (%) at each eps of the grid, then at doubled eps (capped at ``max_eps``) until it reaches 0."""
    out = {float(e): percent(correct_at(float(e))) for e in sorted({float(e) for e in eps_grid})}
    e = max(out)
    while out[e] > 0 and e < max_eps:
        e = round(min(float(max_eps), 2 * e), 6)
        out[e] = percent(correct_at(e))
    return {"eps": list(out), "accuracy": list(out.values())}


def _keyed(d: dict[float, Any]) -> dict[str, Any]:
    return {f"{e:g}": v for e, v in d.items()}


def _num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def reference_level(
    model,
    x,
    y,
    eps_list,
    attacks: dict,
    profile: dict,
    cache_dir: Path,
    subset: int | None = None,
    evaluated: RunDir | None = None,
) -> dict[float, float]:
    """The CE reference's accuracy (%) per eps: worst case of the paper's PGD and the first adaptive attack
    (margin PGD)."""
    specs = attack_specs(attacks, _num_classes(model, x))
    groups = {s.name: s.group for s in specs}
    keep = {paper_attack(groups), *named(groups, "adaptive")[:1]}
    run = partial(
        cached_correct,
        model=model,
        x=x,
        y=y,
        cache_dir=cache_dir,
        subset=subset,
        batch_size=int(profile["batch_size"]),
        seed=int(profile["seed"]),
        evaluated=evaluated,
        weights=weights_digest(model.state_dict()),
    )
    return {
        float(e): percent(worst_case({s.name: run(s, eps=float(e)) for s in specs if s.name in keep})) for e in eps_list
    }


def _cascade(specs: list[Spec], standalone: dict, clean: torch.Tensor, eps_list: list[float], run: Callable):
    """The adaptive attacks on what survived every attack before them (and the worst case at smaller eps).
    Returns their per-eps correctness, [attacked, broken] counts, the strongest, and the sweep function."""
    correct: dict[str, dict[float, torch.Tensor]] = {}
    counts: dict[str, dict[str, list[int]]] = {s.name: {} for s in specs}
    alive = clean
    for e in eps_list:  # ascending: an example broken at a smaller eps is broken here too
        alive = worst_case({"alive": alive, **{n: standalone[n][e] for n in standalone}})
        for s in specs:
            after = run(s, eps=e, only=alive)
            counts[s.name][f"{e:g}"] = [int(alive.sum()), int(alive.sum() - after.sum())]
            correct.setdefault(s.name, {})[e], alive = after, after
    broke = {n: sum(b for _, b in d.values()) for n, d in counts.items()}
    strongest = max(broke, key=broke.get) if any(broke.values()) else None
    state = {"alive": clean}

    def cascade_at(e: float) -> torch.Tensor:  # the sweep: past the grid, the cascade on what survived
        if e in correct[specs[-1].name]:
            state["alive"] = correct[specs[-1].name][e]
        else:
            for s in specs:
                state["alive"] = run(s, eps=e, only=state["alive"])
        return state["alive"]

    return correct, counts, strongest, cascade_at


def audit_model(
    model,
    x,
    y,
    eps_list,
    attacks: dict,
    profile: dict,
    thresholds: dict,
    cache_dir: Path,
    subset: int | None = None,
    source: tuple | None = None,
    reference: dict[float, float] | None = None,
    evaluated: RunDir | None = None,
    trained_with: str | None = None,
) -> AuditResult:
    """Probe, every attack at each eps, sweeps, worst case, flags and verdict for one model.

    ``source``: (run key, model, cache dir) to transfer from; ``reference``: the CE reference's accuracy per eps;
    ``trained_with``: the model's adversarial-training attack (catastrophic overfitting is checked for ``fgsm``).
    """
    p, th = profile, thresholds
    eps_list = sorted({float(e) for e in eps_list})
    for e in eps_list:  # before any attack runs (and is cached)
        check_eps(e, "audit")
    bs = int(p["batch_size"])
    specs = attack_specs(attacks, _num_classes(model, x), source)
    run = partial(
        cached_correct,
        model=model,
        x=x,
        y=y,
        cache_dir=cache_dir,
        subset=subset,
        batch_size=bs,
        seed=int(p["seed"]),
        evaluated=evaluated,
        weights=weights_digest(model.state_dict()),
    )
    with torch.no_grad():
        clean = torch.cat([model(x[i : i + bs]).argmax(1) == y[i : i + bs] for i in range(0, len(x), bs)]).cpu()
    cascade = [s for s in specs if s.group == "adaptive"] if p["cascade"] else []
    correct = {s.name: {e: run(s, eps=e) for e in eps_list} for s in specs if s not in cascade}
    by_name = {s.name: s for s in specs}
    paper = paper_attack({s.name: s.group for s in specs})
    counts: dict = {}
    if cascade:
        adaptive, counts, strongest, cascade_at = _cascade(cascade, dict(correct), clean, eps_list, run)
        correct.update(adaptive)
        sweep_fns = {paper: lambda e: run(by_name[paper], eps=e), CASCADE: cascade_at}
    else:
        candidates = [s.name for s in specs if s.group in ("adaptive", "black-box")]
        strongest = min(candidates, key=lambda n: sum(percent(c) for c in correct[n].values()))
        sweep_fns = {n: (lambda e, s=by_name[n]: run(s, eps=e)) for n in (paper, strongest)}
    acc = {n: {e: percent(c) for e, c in d.items()} for n, d in correct.items()}
    worst = {e: percent(worst_case({"clean": clean, **{n: d[e] for n, d in correct.items()}})) for e in eps_list}
    sweeps = {n: eps_sweep(f, eps_list, float(p["sweep_max_eps"])) for n, f in sweep_fns.items()}
    probe = saturation_probe(model, x, y, bs)
    groups = {s.name: s.group + (" (cascade)" if s in cascade else "") for s in specs}
    found = checks(acc, worst, sweeps, groups, th)
    flags = {k: v[0] for k, v in found.items()}
    evidence = verdict_evidence(probe, acc, worst, flags, groups, th, reference, trained_with)
    result = verdict(evidence, th)
    return AuditResult(
        n=len(y),
        subset=subset,
        eps=eps_list,
        clean_accuracy=percent(clean),
        probe=probe,
        accuracy={n: _keyed(d) for n, d in acc.items()},
        groups=groups,
        cascade=[s.name for s in cascade],
        cascade_counts=counts,
        worst_case=_keyed(worst),
        strongest_adaptive=strongest,
        sweeps=sweeps,
        flags=flags,
        flag_notes={k: v[1] for k, v in found.items()},
        evidence={**evidence, "eps": f"{evidence['eps']:g}"},
        verdict=result,
        verdict_reason=explain_verdict(evidence, result),
        reference=None if reference is None else _keyed(reference),
        transfer_source=None if source is None else source[0],
        profile={**p, "attacks": attacks},
        thresholds=th,
        provenance=provenance(x.device),
    )


def method_of(run_cfg) -> str:
    """The paper's name for a run's method: its loss, with ``+at`` when adversarially trained (Table 5)."""
    return run_cfg.loss.name + ("+at" if run_cfg.trainer.get("adversarial") else "")


def audit_run(
    run: RunDir,
    device: torch.device,
    attacks: dict,
    profile: dict,
    thresholds: dict,
    eps_list=None,
    reference_run: RunDir | None = None,
    subset: int | None = None,
    data_root: str | None = None,
) -> AuditResult:
    """Audit a finished run on its test set (or a class-balanced subset); ``eps_list`` None = the dataset's
    grid. ``reference_run`` (the CE run of the same architecture and data) is the transfer source and sets
    the reference level. Per-attack results are cached in ``run.audit``."""
    torch.backends.cudnn.benchmark = False  # attacks change batch shapes as rows finish: no autotuning per shape
    for e in eps_list or []:
        check_eps(e, "audit")
    run_cfg, model = load_run(run, device)
    if data_root is not None:
        run_cfg.dataset.root = data_root
    x, y = eval_tensors(run_cfg.dataset, subset, device)
    eps_list = list(run_cfg.dataset.eps) if eps_list is None else list(eps_list)
    source, reference = None, None
    if reference_run is not None:
        ref_cfg, ref_model = load_run(reference_run, device)
        if ref_cfg.dataset.name != run_cfg.dataset.name or int(ref_cfg.dataset.num_classes) != int(
            run_cfg.dataset.num_classes
        ):
            raise ValueError(
                f"reference {reference_run.key} was trained on {ref_cfg.dataset.name}; "
                f"{run.key} on {run_cfg.dataset.name}"
            )
        source = (reference_run.key, ref_model, reference_run.audit / "adv")
        reference = reference_level(
            ref_model, x, y, eps_list, attacks, profile, reference_run.audit, subset, reference_run
        )
    adv = run_cfg.trainer.get("adversarial")
    out = audit_model(
        model, x, y, eps_list, attacks, profile, thresholds, run.audit, subset, source, reference, run,
        trained_with=None if not adv else adv.get("attack"),
    )  # fmt: skip
    out.run, out.dataset, out.model = run.key, run_cfg.dataset.name, run_cfg.model.name
    out.loss, out.method = run_cfg.loss.name, method_of(run_cfg)
    out.reference_run = None if reference_run is None else reference_run.key
    return out
