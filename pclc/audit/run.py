"""Running the audit: its attacks from ``audit.attacks`` (configs/audit.yaml), a per-example cache, the
cascade of adaptive attacks on survivors, eps sweeps, and one model's result."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pclc.analysis.saturation import saturation_probe
from pclc.attacks import check_eps
from pclc.audit.attacks import GROUPS, Spec, attack_correct, attack_specs, cached_correct  # noqa: F401
from pclc.audit.checks import (
    checks,
    explain_verdict,
    named,
    paper_attack,
    verdict,
    verdict_evidence,
    worst_case,
)
from pclc.audit.indicators import attack_indicators
from pclc.audit.result import AuditResult
from pclc.data import eval_tensors
from pclc.metrics import percent
from pclc.results import method_of
from pclc.store import RunDir, load_run, provenance, weights_digest

log = logging.getLogger(__name__)

CASCADE = "adaptive-cascade"  # the eps sweep of the cascade of adaptive attacks (profile.cascade)


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
        weights=(digest := weights_digest(model.state_dict())),
        devices=(devices := {provenance(x.device)["device"]}),  # the probe and the indicators are computed here
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
    indicators = _indicators(model, x, y, eps_list, by_name[paper], correct, groups, p)
    evidence["signals"] += [
        f"indicator of attack failure {k} on the paper's attack at eps {e}: {100 * v:.1f}% of examples"
        for e, d in indicators.items()
        for k, v in d.items()
        if v > th["indicator_share"]
    ]
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
        indicators=indicators,
        transfer_source=None if source is None else source[0],
        profile={**p, "attacks": attacks},
        thresholds=th,
        provenance={**provenance(x.device), "attack_devices": sorted(devices), "weights": digest},
    )


def _indicators(model, x, y, eps_list, spec: Spec, correct: dict, groups: dict, p: dict) -> dict:
    """Pintor et al.'s indicators of attack failure for the paper's attack at each eps, on the first
    ``profile.indicator_subset`` examples (0: none), the audit's transfer attack as the transfer reference."""
    k = min(int(p.get("indicator_subset") or 0), len(y))
    if not k or spec.attack.name not in ("bim", "pgd", "mim"):
        return {}
    transfer = next((n for n, g in groups.items() if g.startswith("transfer") and n in correct), None)
    return {
        f"{e:g}": attack_indicators(
            model, x[:k], y[:k], e, spec.params, int(p["seed"]),
            transfer_correct=None if transfer is None else correct[transfer][e][:k],
        )
        for e in eps_list
    }  # fmt: skip


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
