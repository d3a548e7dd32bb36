"""Robustness audit: do the paper's robustness numbers survive stronger, adaptive attacks?

PC+LC pushes p_y towards 1 (probability margin 0.995). In float32 softmax then rounds p_y to exactly 1
and the cross-entropy input gradient can underflow to zero, so the paper's CE-based attacks may fail
for lack of a gradient rather than for lack of adversarial examples: gradient masking (Athalye et al.
2018; Carlini et al. 2019). The audit runs, at each eps of the dataset's grid:

- a saturation probe (share of float32 p_y == 1, share of all-zero CE input gradients, logit margins);
- FGSM and the paper's PGD-40 (advertorch, configs/attack/pgd.yaml) as the claims under audit;
- CE-PGD at 10/100/1000 steps (more steps must change nothing);
- adaptive attacks: logit-margin (C&W) PGD, CE on temperature-scaled logits, APGD-CE, APGD-DLR and
  targeted APGD (Croce & Hein 2020, torchattacks); the black-box Square attack; PGD transferred from
  the CE model of the same architecture and data;
- eps sweeps of the paper's PGD and of the adaptive attacks until accuracy reaches 0;

The adaptive attacks run as a cascade (``profile.cascade``, as AutoAttack does): each attacks only the
examples that survived every attack before it at this eps and the worst case at smaller eps, so the
worst case costs a fraction of running each on every example and their rows are cumulative; the
flags' attacks (FGSM, paper PGD, the CE step ladder, Square, transfer) always run on every example.

then a per-example worst case, Carlini-style sanity flags and a verdict. An example counts as robust
under an attack when the model classifies it correctly both clean and attacked (AutoAttack's rule).

``python -m pclc.audit dataset=fmnist model=lenet5 loss=pclc`` audits the run that the training config
names, with its CE counterpart as transfer source and reference, and writes ``audit.md``,
``audit.csv`` and ``audit_eps.png`` to ``audit.out_dir``. Per-example results are cached in
``runs/<key>/audit/<attack>-eps<eps>[-sub<N>]-<hash>.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

from pclc.attacks import build_attack, linf_attack
from pclc.config import CONFIG_DIR, resolve_device
from pclc.io import atomic_savefig, atomic_write_json, atomic_write_text, cached_tensor
from pclc.store import RunDir, provenance, run_key
from pclc.tables import config_block

log = logging.getLogger(__name__)

PAPER = "pgd-paper"  # the paper's PGD-40: 40 steps of 0.01, random start (advertorch, configs/attack/pgd.yaml)
ADAPTIVE = ("pgd-margin", "pgd-ce-temp", "apgd-ce", "apgd-dlr", "apgdt", "square")  # cheapest first
CASCADE = "adaptive-cascade"  # the eps sweep of the cascade of adaptive attacks (profile.cascade)
VERDICTS = ("robustness confirmed", "robustness reduced", "artefact of gradient masking")
CSV_COLUMNS = ["model", "attack", "eps", "accuracy"]

# Thresholds of the sanity flags and the verdict (accuracies in percentage points).
THRESHOLDS: dict[str, float] = {
    "tolerance": 1.0,         # "A beats B" allows A up to this much above B; spread allowed over 10/100/1000 steps
    "overestimate": 5.0,      # paper PGD-40 above the adaptive worst case by more: robustness reduced
    "masking_drop": 10.0,     # with masking signs, a larger drop is needed for "artefact of gradient masking"
    "near_reference": 10.0,   # ... and the worst case must be within this of the CE reference's level
    "zero_grad_share": 0.05,  # share of points with an all-zero CE input gradient that is a masking sign
    "saturated_share": 0.5,   # share of points with float32 p_y == 1.0 that is a masking sign
    "zero_accuracy": 0.5,     # "accuracy reaches 0" allows this much
}
# Flag -> the value of a healthy (unmasked) evaluation.
HEALTHY = {"iterative_beats_single_step": True, "white_box_beats_black_box": True, "white_box_beats_transfer": True,
           "accuracy_reaches_zero": True, "more_steps_change_nothing": True,
           "paper_attack_overestimates_robustness": False}
# Failed flags that signal masked gradients (the others signal a weak or unconverged attack).
MASKING_FLAGS = ("iterative_beats_single_step", "white_box_beats_black_box", "white_box_beats_transfer")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection onto ``[x - eps, x + eps] ∩ [0, 1]``."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch's RNGs for the block and restore them afterwards (reproducible, no side effects)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin a_y - max_{k != y} a_k (negative: misclassified)."""
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return logits.gather(1, y[:, None]).squeeze(1) - other


def _num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _bcast(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (x.dim() - 1)))


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.double().mean()) if len(correct) else 0.0


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("the audit's APGD and Square attacks need torchattacks: pip install 'pclc[audit]'") from e
    return torchattacks


# ------------------------------------------------------------------------------------------
# Saturation probe
# ------------------------------------------------------------------------------------------
def saturation_probe(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, bins: int = 20) -> dict:
    """Float32 saturation: share with p_y == 1.0 exactly, share with an all-zero CE input gradient, margins.

    The CE is summed (not averaged) so that a tiny per-example gradient is not scaled into underflow.
    """
    p1, zero, margins = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].clone().requires_grad_(True), y[i:i + batch_size]
        logits = model(xb).float()
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xb)
        logits = logits.detach()
        p1.append(logits.softmax(1).gather(1, yb[:, None]).squeeze(1) == 1.0)
        zero.append((grad.flatten(1) == 0).all(1))
        margins.append(_margin(logits, yb))
    p1, zero, m = (torch.cat(t).cpu() for t in (p1, zero, margins))
    finite = m[torch.isfinite(m)].double().numpy()
    counts, edges = np.histogram(finite, bins=bins) if len(finite) else (np.zeros(0), np.zeros(0))
    return {"n": len(m), "share_p_y_one": float(p1.float().mean()), "share_zero_grad": float(zero.float().mean()),
            "margin_mean": float(finite.mean()) if len(finite) else math.nan,
            "margin_median": float(np.median(finite)) if len(finite) else math.nan,
            "margin_hist": {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]}}


# ------------------------------------------------------------------------------------------
# Attacks: (model, x, y, eps, **params) -> x_adv in [x - eps, x + eps] ∩ [0, 1]
# ------------------------------------------------------------------------------------------
def _ce(logits, y, temperature):
    return F.cross_entropy(logits / temperature, y, reduction="none")


def _cw(logits, y, temperature):
    return -_margin(logits, y)


def _pgd(model, x, y, eps: float, steps: int, step: float, loss: Callable = _ce, temperature=1.0,
         decay: bool = False, random_start: bool = True, keep_first: bool = True,
         compact_every: int = 10) -> torch.Tensor:
    """Sign-gradient ascent on ``loss`` (per example) in the eps-ball, from a random start.

    ``decay``: step ``step * (1 + cos(pi t / steps)) / 2`` (cosine to 0), else constant. Returns, per
    example, the first iterate that fools ``model`` (``keep_first``), else the last. With ``keep_first``,
    every ``compact_every`` steps the fooled examples leave the batch (one host sync each time): the
    trajectories are per example, so this changes no result, only the cost, which falls with the accuracy.
    """
    x_adv = _project(x + eps * (2 * torch.rand_like(x) - 1), x, eps) if random_start else x.clone()
    best, fooled = x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    idx = torch.arange(len(x), device=x.device)  # the examples still attacked
    xs, ys, temp = x, y, temperature
    per_example_t = isinstance(temperature, torch.Tensor) and temperature.dim() > 0
    for t in range(steps):
        if keep_first and compact_every and t and t % int(compact_every) == 0:
            keep = ~fooled[idx]
            if not bool(keep.all()):
                idx, x_adv, xs, ys = idx[keep], x_adv[keep], xs[keep], ys[keep]
                temp = temp[keep] if per_example_t else temp
                if len(idx) == 0:
                    break
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if keep_first:
            new = (logits.argmax(1) != ys) & ~fooled[idx]
            best[idx] = torch.where(_bcast(new, xs), x_adv.detach(), best[idx])
            fooled[idx] = fooled[idx] | new
        (grad,) = torch.autograd.grad(loss(logits, ys, temp).sum(), x_adv)
        a = step * 0.5 * (1 + math.cos(math.pi * t / steps)) if decay else step
        x_adv = _project(x_adv.detach() + a * grad.sign(), xs, eps)
    if not keep_first:
        return x_adv
    out = best.clone()
    out[idx] = torch.where(_bcast(fooled[idx], xs), best[idx], x_adv.detach())
    return out


def _restarts(model, x, y, restarts: int, once: Callable) -> torch.Tensor:
    """Run ``once`` up to ``restarts`` times on the examples not yet fooled; keep each one's first success."""
    adv, todo = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(int(restarts)):
        idx = todo.nonzero().squeeze(1)  # one host sync per restart
        if len(idx) == 0:
            break
        a = once(x[idx], y[idx])
        adv[idx] = a
        with torch.no_grad():
            todo[idx] = model(a).argmax(1) == y[idx]
    return adv


def fgsm(model, x, y, eps: float, seed: int = 0) -> torch.Tensor:
    """FGSM with CE (single step of eps): the single-step reference of the sanity flags."""
    return linf_attack(model, x, y, torch.full((len(x),), float(eps), device=x.device), steps=1)


def paper_pgd(model, x, y, eps: float, seed: int = 0, **params) -> torch.Tensor:
    """The paper's PGD: advertorch LinfPGDAttack with configs/attack/pgd.yaml's ``params``."""
    with _seeded(seed, x.device):
        return build_attack("pgd", model, eps, _num_classes(model, x), params).perturb(x.clone(), y)


def pgd_ce(model, x, y, eps: float, steps: int = 100, step_scale: float = 2.5, restarts: int = 1,
           seed: int = 0) -> torch.Tensor:
    """CE-PGD, random start, step ``step_scale * eps / steps`` (Madry et al.'s 2.5 eps / steps)."""
    once = partial(_pgd, model, eps=eps, steps=int(steps), step=step_scale * eps / int(steps))
    with _seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


def pgd_margin(model, x, y, eps: float, steps: int = 100, step: float = 0.25, restarts: int = 5,
               seed: int = 0) -> torch.Tensor:
    """PGD on the C&W margin loss max_{k!=y} a_k - a_y (no softmax: cannot saturate); step ``step * eps``,
    cosine-decayed."""
    once = partial(_pgd, model, eps=eps, steps=int(steps), step=step * eps, loss=_cw, decay=True)
    with _seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


def _temperature(model, x, y, temperature, target_margin: float):
    """``auto``: per example, T = max(1, |clean margin| / target_margin), so that logits / T has a margin of
    ``target_margin`` (p_y well below 1 at any logit scale); else the fixed number."""
    if temperature != "auto":
        return float(temperature)
    with torch.no_grad():
        return (_margin(model(x), y).abs() / target_margin).clamp_min(1.0)[:, None]


def pgd_ce_temp(model, x, y, eps: float, steps: int = 100, step: float = 0.25, restarts: int = 1,
                temperature: float | str = "auto", target_margin: float = 2.0, seed: int = 0) -> torch.Tensor:
    """PGD on CE of temperature-scaled logits (logits / T) to un-saturate softmax; step ``step * eps``, decayed."""
    def once(xs, ys):
        t = _temperature(model, xs, ys, temperature, float(target_margin))
        return _pgd(model, xs, ys, eps, int(steps), step * eps, _ce, t, decay=True)

    with _seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


def apgd(model, x, y, eps: float, loss: str = "ce", steps: int = 100, restarts: int = 5,
         seed: int = 0) -> torch.Tensor:
    """APGD-CE or APGD-DLR (torchattacks); DLR needs at least 3 classes."""
    if loss == "dlr" and _num_classes(model, x) < 3:
        raise ValueError("APGD-DLR needs at least 3 classes")
    atk = _torchattacks().APGD(model, norm="Linf", eps=float(eps), steps=int(steps), n_restarts=int(restarts),
                               seed=int(seed), loss=loss)
    with _seeded(seed, x.device):
        return _project(atk(x, y), x, eps)


def apgdt(model, x, y, eps: float, steps: int = 100, restarts: int = 1, targets: int = 9,
          seed: int = 0) -> torch.Tensor:
    """Targeted APGD-DLR (torchattacks) against the min(targets, K-1) most likely wrong classes; K >= 4."""
    k = _num_classes(model, x)
    if k < 4:
        raise ValueError("targeted APGD needs at least 4 classes")
    atk = _torchattacks().APGDT(model, norm="Linf", eps=float(eps), steps=int(steps), n_restarts=int(restarts),
                                seed=int(seed), n_classes=k)
    atk.n_target_classes = min(int(targets), k - 1)
    with _seeded(seed, x.device):
        return _project(atk(x, y), x, eps)


def square(model, x, y, eps: float, queries: int = 5000, restarts: int = 1, seed: int = 0) -> torch.Tensor:
    """Square attack (torchattacks): black-box random search on the margin loss, ``queries`` per example."""
    atk = _torchattacks().Square(model, norm="Linf", eps=float(eps), n_queries=int(queries),
                                 n_restarts=int(restarts), seed=int(seed), loss="margin")
    with _seeded(seed, x.device):
        return _project(atk(x, y), x, eps)


def transfer_pgd(model, x, y, eps: float, source=None, steps: int = 100, step_scale: float = 2.5,
                 seed: int = 0, cache_dir: Path | None = None) -> torch.Tensor:
    """CE-PGD crafted on ``source`` (its last iterate), to be evaluated on ``model``.

    The examples depend on the source alone, so with ``cache_dir`` (the source run's) they are saved under
    a hash of the batch's pixels, labels and budget, and every model audited from that source reuses them.
    """
    if source is None:
        raise ValueError("transfer_pgd needs a source model")
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(x.detach().cpu().numpy().tobytes())
        h.update(y.cpu().numpy().astype(np.int64).tobytes())
        h.update(json.dumps([float(eps), int(steps), float(step_scale), int(seed)]).encode())
        path = Path(cache_dir) / f"transfer-pgd-{h.hexdigest()[:20]}.pt"

    def run() -> torch.Tensor:
        with _seeded(seed, x.device):
            return _pgd(source, x, y, eps, int(steps), step_scale * eps / int(steps), keep_first=False)

    return cached_tensor(path, run, x.device)


# ------------------------------------------------------------------------------------------
# Running attacks, with a per-example cache
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One audit attack: its function, hashed parameters, group, and unhashed extras (the transfer source)."""

    name: str
    fn: Callable
    params: dict
    group: str                                  # single-step | paper | steps | adaptive | black-box | transfer
    extra: dict = field(default_factory=dict)
    source_key: str | None = None
    batch_size: int | None = None               # replaces the profile's batch_size (Square: one long loop per batch)


def default_profile() -> dict[str, Any]:
    """The full budgets: ``audit.profile`` of configs/audit.yaml."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "audit.yaml").audit.profile, resolve=True)


def _profile(profile: dict | None) -> dict[str, Any]:
    prof = default_profile()
    unknown = sorted(set(profile or {}) - set(prof))
    if unknown:
        raise ValueError(f"unknown audit profile keys {unknown}; known: {sorted(prof)}")
    return {**prof, **(profile or {})}


def paper_pgd_params() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "attack" / "pgd.yaml").params, resolve=True)


def attack_specs(p: dict, num_classes: int, source: tuple[str, Any] | None = None) -> list[Spec]:
    """The audit's attacks for profile ``p``; DLR needs K >= 3, targeted APGD K >= 4; transfer needs a source."""
    paper = paper_pgd_params()
    if p["paper_pgd_steps"] is not None:  # tests only: the audit's default is the paper's 40
        paper["nb_iter"] = int(p["paper_pgd_steps"])
    specs = [Spec("fgsm", fgsm, {}, "single-step"), Spec(PAPER, paper_pgd, paper, "paper")]
    specs += [Spec(f"pgd-ce-{n}", pgd_ce, {"steps": int(n), "step_scale": p["pgd_step_scale"]}, "steps")
              for n in p["pgd_steps"]]
    specs += [Spec("pgd-margin", pgd_margin, {"steps": p["margin_steps"], "step": p["margin_step"],
                                              "restarts": p["margin_restarts"]}, "adaptive"),
              Spec("pgd-ce-temp", pgd_ce_temp, {"steps": p["temp_steps"], "step": p["temp_step"],
                                                "restarts": p["temp_restarts"], "temperature": p["temperature"],
                                                "target_margin": p["target_margin"]}, "adaptive"),
              Spec("apgd-ce", apgd, {"loss": "ce", "steps": p["apgd_steps"], "restarts": p["apgd_restarts"]},
                   "adaptive")]
    if num_classes >= 3:
        specs.append(Spec("apgd-dlr", apgd, {"loss": "dlr", "steps": p["apgd_steps"],
                                             "restarts": p["apgd_restarts"]}, "adaptive"))
    if num_classes >= 4:
        specs.append(Spec("apgdt", apgdt, {"steps": p["apgdt_steps"], "restarts": p["apgdt_restarts"],
                                           "targets": p["apgdt_targets"]}, "adaptive"))
    specs.append(Spec("square", square, {"queries": p["square_queries"], "restarts": p["square_restarts"]},
                      "black-box", batch_size=int(p["square_batch_size"])))
    if source is not None:
        specs.append(Spec("transfer-pgd", transfer_pgd, {"steps": p["transfer_steps"],
                                                         "step_scale": p["pgd_step_scale"]}, "transfer",
                          {"source": source[1], **({"cache_dir": source[2]} if len(source) > 2 else {})},
                          source[0]))
    return specs


def attack_correct(model, x, y, attack: Callable, eps: float, batch_size: int, seed: int = 0,
                   **params) -> torch.Tensor:
    """Per example (CPU bool): correct on the clean input and on ``attack``'s output. Batch ``i`` is seeded
    ``seed + i``; one host sync at the end."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = attack(model, xb, yb, float(eps), seed=seed + i, **params).detach()
        with torch.no_grad():
            out.append((model(xb).argmax(1) == yb) & (model(adv).argmax(1) == yb))
    return torch.cat(out).cpu()


def _labels_digest(y: torch.Tensor) -> str:
    return hashlib.sha256(y.cpu().numpy().astype(np.int64).tobytes()).hexdigest()[:16]


def cache_name(spec: Spec, eps: float, subset: int | None, batch_size: int, seed: int,
               only: torch.Tensor | None = None) -> str:
    """``<attack>-eps<eps>[-sub<N>][-only<hash>]-<hash of params, source, batch size, seed>.json``; ``only``
    (the examples attacked, when not all) enters the name."""
    digest = hashlib.sha256(json.dumps([spec.name, spec.params, spec.source_key, spec.batch_size or batch_size,
                                        seed], sort_keys=True).encode()).hexdigest()[:8]
    sub = "" if subset is None else f"-sub{subset}"
    if only is not None:
        sub += "-only" + hashlib.sha256(only.cpu().numpy().astype(np.uint8).tobytes()).hexdigest()[:8]
    return f"{spec.name}-eps{eps:g}{sub}-{digest}.json"


def _from_eval(eval_dir: Path | None, spec: Spec, eps: float, subset: int | None, y) -> torch.Tensor | None:
    """The paper's PGD at ``eps`` as pclc.evaluate already computed it for this run, if it did."""
    if eval_dir is None or spec.name != PAPER:
        return None
    from pclc.evaluate import Entry

    path = Path(eval_dir) / f"{Entry('pgd', 'pgd', float(eps), 'white', spec.params).name(subset)}.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())["records"]
    label = torch.tensor(rec["label"])
    if not torch.equal(label, y.cpu()):
        return None
    return (torch.tensor(rec["clean_pred"]) == label) & (torch.tensor(rec["adv_pred"]) == label)


def cached_correct(spec: Spec, model, x, y, eps: float, cache_dir: Path, subset: int | None, batch_size: int,
                   seed: int, eval_dir: Path | None = None, only: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example correctness under ``spec`` at ``eps``: from the cache, from pclc.evaluate's file for the
    paper's PGD, or computed (and cached atomically). ``only`` (bool per example): attack just these; the
    others count as not robust (the cascade passes the examples that survived every attack so far)."""
    path = Path(cache_dir) / cache_name(spec, eps, subset, batch_size, seed, only)
    labels = _labels_digest(y)
    if path.exists():
        d = json.loads(path.read_text())
        if d.get("labels") == labels:
            return torch.tensor(d["correct"], dtype=torch.bool)
        log.warning("%s was computed on other examples; recomputing", path)
    t0 = time.perf_counter()
    bs = spec.batch_size or batch_size
    correct = None if only is not None else _from_eval(eval_dir, spec, eps, subset, y)
    source = "pclc.evaluate" if correct is not None else "audit"
    if correct is None:
        idx = torch.arange(len(y)) if only is None else only.cpu().nonzero().squeeze(1)
        correct = torch.zeros(len(y), dtype=torch.bool)
        if len(idx):
            i = idx.to(x.device)
            correct[idx] = attack_correct(model, x[i], y[i], spec.fn, eps, bs, seed, **spec.params, **spec.extra)
    secs = time.perf_counter() - t0
    atomic_write_json(path, {"attack": spec.name, "group": spec.group, "eps": eps, "params": spec.params,
                             "source_run": spec.source_key, "subset": subset, "n": len(correct), "labels": labels,
                             "attacked": len(y) if only is None else int(only.sum()), "batch_size": bs,
                             "accuracy": _pct(correct), "seconds": secs, "computed_by": source,
                             "provenance": provenance(x.device), "correct": correct.int().tolist()})
    log.info("%s eps=%g: %.2f%% (%.1fs)", spec.name, eps, _pct(correct), secs)
    return correct


# ------------------------------------------------------------------------------------------
# Aggregation, sweeps, flags, verdict
# ------------------------------------------------------------------------------------------
def worst_case(per_attack_correct: dict[str, torch.Tensor]) -> torch.Tensor:
    """Robust only if correct under every attack (per example)."""
    return torch.stack([c.bool() for c in per_attack_correct.values()]).all(0)


def eps_sweep(model, x, y, attack_fn: Callable, eps_grid, max_eps: float = 1.0, batch_size: int = 1000,
              correct_fn: Callable[[float], torch.Tensor] | None = None, **params) -> dict[str, list[float]]:
    """Accuracy (%) at each eps of the grid, then at doubled eps (capped at ``max_eps``) until it reaches 0.

    ``correct_fn(eps)`` replaces the direct run (the audit passes its cache).
    """
    run = correct_fn or (lambda e: attack_correct(model, x, y, attack_fn, e, batch_size, **params))
    out = {float(e): _pct(run(float(e))) for e in sorted({float(e) for e in eps_grid})}
    e = max(out)
    while out[e] > 0 and e < max_eps:
        e = round(min(float(max_eps), 2 * e), 6)
        out[e] = _pct(run(e))
    return {"eps": list(out), "accuracy": list(out.values())}


def _fmt(acc: dict[float, float], eps: list[float]) -> str:
    return "/".join(f"{acc[e]:.1f}" for e in eps)


def _ladder(acc: dict) -> list[str]:
    return sorted((n for n in acc if n.startswith("pgd-ce-") and n[7:].isdigit()), key=lambda n: int(n[7:]))


def _beats(acc, eps, strong: list[str], weak: str, tol: float, label: str) -> tuple[bool, str]:
    ok = all(acc[s][e] <= acc[weak][e] + tol for s in strong for e in eps)
    nums = "; ".join(f"{n} {_fmt(acc[n], eps)}" for n in [weak, *strong])
    return ok, f"{label}: {nums} (% at eps {'/'.join(f'{e:g}' for e in eps)}; tolerance {tol:g} points)"


def _checks(acc: dict, worst: dict, sweeps: dict, th: dict) -> dict[str, tuple[bool, str]]:
    """Each sanity flag with the numbers behind it."""
    eps, tol, out = sorted(acc[PAPER]), th["tolerance"], {}
    ladder = _ladder(acc)
    if "fgsm" in acc:
        out["iterative_beats_single_step"] = _beats(acc, eps, [PAPER, *ladder], "fgsm", tol,
                                                    "iterative CE attacks at most FGSM's accuracy")
    for flag, other in (("white_box_beats_black_box", "square"), ("white_box_beats_transfer", "transfer-pgd")):
        if other in acc:
            out[flag] = _beats(acc, eps, [PAPER], other, tol, f"the paper's PGD at most {other}'s accuracy")
    if sweeps:
        ends = {n: (s["eps"][-1], s["accuracy"][-1]) for n, s in sweeps.items()}
        out["accuracy_reaches_zero"] = (all(a <= th["zero_accuracy"] for _, a in ends.values()),
                                        "largest swept eps: " + "; ".join(f"{n} {a:.1f}% at eps {e:g}"
                                                                          for n, (e, a) in ends.items()))
    if len(ladder) > 1:
        spread = max(max(acc[n][e] for n in ladder) - min(acc[n][e] for n in ladder) for e in eps)
        out["more_steps_change_nothing"] = (spread <= tol, f"spread over {', '.join(ladder)}: {spread:.1f} points "
                                            f"(tolerance {tol:g}); " + "; ".join(f"{n} {_fmt(acc[n], eps)}"
                                                                                 for n in ladder))
    gap = max(acc[PAPER][e] - worst[e] for e in eps)
    out["paper_attack_overestimates_robustness"] = (
        gap > th["overestimate"], f"the paper's PGD {_fmt(acc[PAPER], eps)} vs worst case {_fmt(worst, eps)}: "
                                  f"largest gap {gap:.1f} points (threshold {th['overestimate']:g})")
    return out


def sanity_flags(acc: dict, worst: dict, sweeps: dict, thresholds: dict | None = None) -> dict[str, bool]:
    """Carlini et al.'s checks: iterative beats single-step; white-box beats Square and transfer; accuracy
    reaches 0 as eps grows; 10/100/1000 CE steps agree within ``tolerance``; plus whether the paper's PGD-40
    exceeds the adaptive worst case by more than ``overestimate`` points. See ``HEALTHY`` for healthy values."""
    return {k: v[0] for k, v in _checks(acc, worst, sweeps, {**THRESHOLDS, **(thresholds or {})}).items()}


def flag_notes(acc: dict, worst: dict, sweeps: dict, thresholds: dict | None = None) -> dict[str, str]:
    """The numbers behind each flag of :func:`sanity_flags`."""
    return {k: v[1] for k, v in _checks(acc, worst, sweeps, {**THRESHOLDS, **(thresholds or {})}).items()}


def verdict_evidence(probe: dict, acc: dict, worst: dict, flags: dict[str, bool],
                     reference: dict[float, float] | None = None, thresholds: dict | None = None) -> dict:
    """The numbers the verdict rests on: the largest drop from the paper's PGD-40 to the worst case (and its
    eps), the CE reference's level there, and the masking signs (probe saturation, failed sanity flags)."""
    th = {**THRESHOLDS, **(thresholds or {})}
    e = max(sorted(acc[PAPER]), key=lambda v: acc[PAPER][v] - worst[v])
    signs = [f"{100 * probe['share_zero_grad']:.1f}% of points have an all-zero float32 CE input gradient"] \
        if probe["share_zero_grad"] >= th["zero_grad_share"] else []
    if probe["share_p_y_one"] >= th["saturated_share"]:
        signs.append(f"{100 * probe['share_p_y_one']:.1f}% of points have float32 p_y == 1.0")
    signs += [f"sanity flag {k} is {v}" for k, v in flags.items() if k in MASKING_FLAGS and v != HEALTHY[k]]
    ref = None if reference is None else reference[e]
    return {"eps": e, "paper_accuracy": acc[PAPER][e], "worst_case_accuracy": worst[e],
            "drop": acc[PAPER][e] - worst[e], "reference_accuracy": ref, "masking_signs": signs,
            "near_reference": ref is None or worst[e] <= ref + th["near_reference"]}


def verdict(evidence: dict, thresholds: dict | None = None) -> str:
    """One of ``VERDICTS``, from :func:`verdict_evidence` (d = paper PGD-40 minus worst case, in points):

    - "artefact of gradient masking": masking signs (>= ``zero_grad_share`` of points with zero CE gradients,
      >= ``saturated_share`` with p_y == 1.0, or a failed flag of ``MASKING_FLAGS``: FGSM, Square or transfer
      beating the paper's PGD) AND d > ``masking_drop`` (10) AND the worst case within ``near_reference`` (10)
      points of the CE reference (when there is one);
    - "robustness reduced": d > ``overestimate`` (5) otherwise;
    - "robustness confirmed": d <= 5.
    """
    th = {**THRESHOLDS, **(thresholds or {})}
    d = evidence["drop"]
    if evidence["masking_signs"] and d > th["masking_drop"] and evidence["near_reference"]:
        return VERDICTS[2]
    return VERDICTS[1] if d > th["overestimate"] else VERDICTS[0]


def explain_verdict(evidence: dict, result: str) -> str:
    """The verdict in one paragraph, with its numbers."""
    ev = evidence
    ref = "" if ev["reference_accuracy"] is None else f"; the CE reference reaches {ev['reference_accuracy']:.1f}%"
    signs = "; ".join(ev["masking_signs"]) or "none"
    return (f"{result}: at eps {ev['eps']:g} the paper's PGD leaves {ev['paper_accuracy']:.1f}% accuracy and "
            f"the worst case over all attacks {ev['worst_case_accuracy']:.1f}% (drop {ev['drop']:.1f} points"
            f"{ref}). Masking signs: {signs}.")


# ------------------------------------------------------------------------------------------
# Auditing a model and a run
# ------------------------------------------------------------------------------------------
def _keyed(d: dict[float, Any]) -> dict[str, Any]:
    return {f"{e:g}": v for e, v in d.items()}


def reference_level(model, x, y, eps_list, profile: dict | None, cache_dir: Path, subset: int | None = None,
                    eval_dir: Path | None = None) -> dict[float, float]:
    """The CE reference's accuracy (%) per eps: worst case of the paper's PGD-40 and margin PGD."""
    p = _profile(profile)
    specs = [s for s in attack_specs(p, _num_classes(model, x)) if s.name in (PAPER, "pgd-margin")]
    run = partial(cached_correct, model=model, x=x, y=y, cache_dir=cache_dir, subset=subset,
                  batch_size=int(p["batch_size"]), seed=int(p["seed"]), eval_dir=eval_dir)
    return {float(e): _pct(worst_case({s.name: run(s, eps=float(e)) for s in specs})) for e in eps_list}


def audit_model(model, x, y, eps_list, profile: dict | None, cache_dir: Path, subset: int | None = None,
                source: tuple[str, Any] | None = None, reference: dict[float, float] | None = None,
                eval_dir: Path | None = None, thresholds: dict | None = None) -> dict[str, Any]:
    """Probe, every attack at each eps, sweeps, worst case, flags and verdict for one model (JSON-ready).

    ``source``: (run key, model) to transfer from; ``reference``: the CE reference's accuracy per eps.
    """
    p, th = _profile(profile), {**THRESHOLDS, **(thresholds or {})}
    eps_list = sorted({float(e) for e in eps_list})
    bs = int(p["batch_size"])
    specs = attack_specs(p, _num_classes(model, x), source)
    run = partial(cached_correct, model=model, x=x, y=y, cache_dir=cache_dir, subset=subset, batch_size=bs,
                  seed=int(p["seed"]), eval_dir=eval_dir)
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, len(x), bs)]).cpu()
    cascade = [s for s in specs if s.group == "adaptive"] if p["cascade"] else []
    correct = {s.name: {e: run(s, eps=e) for e in eps_list} for s in specs if s not in cascade}
    by_name = {s.name: s for s in specs}
    counts: dict[str, dict[str, list[int]]] = {s.name: {} for s in cascade}  # eps -> [attacked, broken]
    if cascade:
        alive, standalone = clean, list(correct)
        for e in eps_list:  # ascending: an example broken at a smaller eps is broken here too
            alive = worst_case({"alive": alive, **{n: correct[n][e] for n in standalone}})
            for s in cascade:
                after = run(s, eps=e, only=alive)
                counts[s.name][f"{e:g}"] = [int(alive.sum()), int(alive.sum() - after.sum())]
                correct.setdefault(s.name, {})[e], alive = after, after
        broke = {n: sum(b for _, b in d.values()) for n, d in counts.items()}
        # None: the standalone attacks left nothing for the adaptive ones to break
        strongest = max(broke, key=broke.get) if any(broke.values()) else None
        state = {"alive": clean}

        def cascade_at(e: float) -> torch.Tensor:  # the sweep: past the grid, the cascade on what survived
            if e in correct[cascade[-1].name]:
                state["alive"] = correct[cascade[-1].name][e]
            else:
                for s in cascade:
                    state["alive"] = run(s, eps=e, only=state["alive"])
            return state["alive"]

        sweep_fns = {PAPER: lambda e: run(by_name[PAPER], eps=e), CASCADE: cascade_at}
    else:
        strongest = min((n for n in ADAPTIVE if n in correct), key=lambda n: sum(_pct(c) for c in correct[n].values()))
        sweep_fns = {n: (lambda e, s=by_name[n]: run(s, eps=e)) for n in (PAPER, strongest)}
    acc = {n: {e: _pct(c) for e, c in d.items()} for n, d in correct.items()}
    worst = {e: _pct(worst_case({"clean": clean, **{n: d[e] for n, d in correct.items()}})) for e in eps_list}
    sweeps = {n: eps_sweep(model, x, y, None, eps_list, float(p["sweep_max_eps"]), bs, correct_fn=f)
              for n, f in sweep_fns.items()}
    probe = saturation_probe(model, x, y, bs)
    checks = _checks(acc, worst, sweeps, th)
    flags = {k: v[0] for k, v in checks.items()}
    evidence = verdict_evidence(probe, acc, worst, flags, reference, th)
    result = verdict(evidence, th)
    return {"n": len(y), "subset": subset, "eps": eps_list, "clean_accuracy": _pct(clean), "probe": probe,
            "accuracy": {n: _keyed(d) for n, d in acc.items()},
            "groups": {s.name: s.group + (" (cascade)" if s in cascade else "") for s in specs},
            "cascade": [s.name for s in cascade], "cascade_counts": counts,
            "worst_case": _keyed(worst), "strongest_adaptive": strongest,
            "sweeps": {n: s for n, s in sweeps.items()}, "flags": flags,
            "flag_notes": {k: v[1] for k, v in checks.items()},
            "evidence": {**evidence, "eps": f"{evidence['eps']:g}"}, "verdict": result,
            "verdict_reason": explain_verdict(evidence, result),
            "reference": None if reference is None else _keyed(reference),
            "transfer_source": None if source is None else source[0],
            "profile": p, "thresholds": th, "provenance": provenance(x.device)}


def _test_data(run_cfg: DictConfig, subset: int | None, device: torch.device, data_root: str | None):
    """The run's test set (class-balanced first ``subset`` examples) as float [0, 1] on ``device``."""
    from pclc.data import load_splits

    if subset is not None and int(subset) <= 0:
        raise ValueError(f"audit subset must be a positive number of test examples, got {subset}")
    test_cfg = run_cfg.dataset.copy()
    if data_root is not None:
        test_cfg.root = data_root
    test_cfg.subset = {"train": None, "test": None if subset is None else int(subset)}
    _, test = load_splits(test_cfg)
    return test.x.to(device).float() / 255, test.y.to(device)


def audit_run(run: RunDir, device: torch.device, eps_list=None, profile: dict | None = None,
              reference_run: RunDir | None = None, subset: int | None = None, data_root: str | None = None,
              thresholds: dict | None = None) -> dict[str, Any]:
    """Audit a finished run on its test set (or a class-balanced subset); ``eps_list`` None = the dataset's
    grid. ``reference_run`` (the CE run of the same architecture and data) is the transfer source and sets
    the reference level. Per-attack results are cached in ``run.path / "audit"``."""
    from pclc.evaluate import load_run

    run_cfg, model = load_run(run, device)
    x, y = _test_data(run_cfg, subset, device, data_root)
    eps_list = list(run_cfg.dataset.eps) if eps_list is None else list(eps_list)
    source, reference = None, None
    if reference_run is not None:
        ref_cfg, ref_model = load_run(reference_run, device)
        if ref_cfg.dataset.name != run_cfg.dataset.name or \
                int(ref_cfg.dataset.num_classes) != int(run_cfg.dataset.num_classes):
            raise ValueError(f"reference {reference_run.key} was trained on {ref_cfg.dataset.name}; "
                             f"{run.key} on {run_cfg.dataset.name}")
        source = (reference_run.key, ref_model, reference_run.path / "audit" / "adv")
        reference = reference_level(ref_model, x, y, eps_list, profile, reference_run.path / "audit", subset,
                                    reference_run.eval)
    out = audit_model(model, x, y, eps_list, profile, run.path / "audit", subset, source, reference, run.eval,
                      thresholds)
    return {"run": run.key, "dataset": run_cfg.dataset.name, "model": run_cfg.model.name,
            "loss": run_cfg.loss.name, "method": method_of(run_cfg),
            "reference_run": None if reference_run is None else reference_run.key, **out}


def method_of(run_cfg: DictConfig) -> str:
    """The paper's name for a run's method: its loss, with ``+at`` when adversarially trained (Table 5)."""
    return run_cfg.loss.name + ("+at" if run_cfg.trainer.get("adversarial") else "")


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
PAPER_ATTACKS = {"clean": "clean", "fgsm": "fgsm", "pgd": PAPER}  # paper table attack -> audit attack


def _paper_lookup(paper_rows: list[dict] | None) -> dict[tuple, float]:
    """(dataset, model, method, audit attack, eps string) -> the paper's accuracy."""
    out = {}
    for r in paper_rows or []:
        if r.get("attack") in PAPER_ATTACKS:
            eps = "-" if r["attack"] == "clean" else f"{float(r['param']):g}"
            out[(r["dataset"], r["model"], r["method"], PAPER_ATTACKS[r["attack"]], eps)] = float(r["accuracy"])
    return out


def _prov_lines(audits: list[dict]) -> list[str]:
    prov = provenance(torch.device("cpu"))
    devices = sorted({a["provenance"]["device"] for a in audits}) or [prov["device"]]
    return [f"command: {prov['command']}", f"commit: {prov['commit']}", f"device: {', '.join(devices)}",
            f"date: {prov['date']}"]


def _table(a: dict, paper: dict[tuple, float]) -> list[str]:
    eps = [f"{e:g}" for e in a["eps"]]
    key = (a.get("dataset"), a.get("model"), a.get("method", a.get("loss")))
    cell = lambda n, e, v: f"{v:.1f}" + (f" (paper {paper[(*key, n, e)]:.1f})" if (*key, n, e) in paper else "")
    lines = ["| attack | group | " + " | ".join(f"eps {e}" for e in eps) + " |", "|---" * (len(eps) + 2) + "|",
             f"| clean | - | {cell('clean', '-', a['clean_accuracy'])}" + " |" * len(eps)]
    for n, d in a["accuracy"].items():
        lines.append(f"| {n} | {a['groups'][n]} | " + " | ".join(cell(n, e, d[e]) for e in eps) + " |")
    lines.append("| **worst case** | all | " + " | ".join(f"**{a['worst_case'][e]:.1f}**" for e in eps) + " |")
    if a.get("reference"):
        lines.append(f"| CE reference ({a['reference_run']}) | paper PGD + margin | "
                     + " | ".join(f"{a['reference'][e]:.1f}" for e in eps) + " |")
    return lines


def _strongest(a: dict) -> str:
    return a["strongest_adaptive"] or "none needed (no example survived the standalone attacks)"


def _model_section(a: dict, paper: dict[tuple, float]) -> list[str]:
    pr = a["probe"]
    hist = pr["margin_hist"]
    lines = [f"## {a.get('run', 'model')} ({a.get('dataset')}/{a.get('model')}/{a.get('method', a.get('loss'))})", "",
             f"**Verdict: {a['verdict']}.** {a['verdict_reason']}", "",
             f"n = {a['n']} test examples" + ("" if a["subset"] is None else f" (class-balanced subset {a['subset']})")
             + f"; transfer source: {a.get('transfer_source') or 'none'}", "", "### Saturation probe (float32)", "",
             f"- p_y == 1.0 exactly: {100 * pr['share_p_y_one']:.1f}% of points",
             f"- all-zero CE input gradient: {100 * pr['share_zero_grad']:.1f}% of points",
             f"- logit margin a_y - max_k!=y a_k: mean {pr['margin_mean']:.2f}, median {pr['margin_median']:.2f}",
             "- margin histogram: " + ", ".join(f"[{lo:.2g}, {hi:.2g}): {c}" for lo, hi, c in
                                                zip(hist["edges"], hist["edges"][1:], hist["counts"])),
             "", "### Accuracy (%) under each attack", "", *_table(a, paper), ""]
    if a.get("cascade"):
        counts = a.get("cascade_counts", {})
        eps = list(next(iter(counts.values()), {}))
        lines += [f"Adaptive attacks ran as a cascade ({' → '.join(a['cascade'])}): each attacked only the "
                  "examples that survived every attack above it at this eps and the worst case at smaller eps "
                  "(an adversarial example for a smaller eps is one for a larger eps too), so their rows are "
                  "cumulative robust accuracy; the strongest adaptive attack is the one that broke the most "
                  "examples, and the sweep runs the whole cascade past the grid.", "",
                  "| cascade attack | " + " | ".join(f"eps {e}: attacked / broken" for e in eps) + " |",
                  "|---" * (len(eps) + 1) + "|",
                  *(f"| {n} | " + " | ".join(f"{c[e][0]} / {c[e][1]}" for e in eps) + " |"
                    for n, c in counts.items()), ""]
    lines += [f"### Eps sweeps (strongest adaptive attack: {_strongest(a)})", ""]
    lines += [f"- {n}: " + ", ".join(f"{e:g} → {v:.1f}%" for e, v in zip(s["eps"], s["accuracy"]))
              for n, s in a["sweeps"].items()]
    lines += ["", "### Sanity flags", ""]
    lines += [f"- {'ok' if v == HEALTHY[k] else '**WARNING**'} `{k}` = {v}: {a['flag_notes'][k]}"
              for k, v in a["flags"].items()]
    return lines + [""]


def _csv_rows(a: dict) -> list[dict]:
    model = a.get("run", "model")
    rows = {("clean", 0.0): a["clean_accuracy"]}
    rows.update({(n, float(e)): v for n, d in a["accuracy"].items() for e, v in d.items()})
    for n, s in a["sweeps"].items():
        rows.update({(n, float(e)): v for e, v in zip(s["eps"], s["accuracy"])})
    rows.update({("worst-case", float(e)): v for e, v in a["worst_case"].items()})
    return [{"model": model, "attack": n, "eps": e, "accuracy": v} for (n, e), v in rows.items()]


def _plot(audits: list[dict], path: Path, prov: list[str], paper: dict[tuple, float]) -> None:
    """One panel per model (shared axes): the paper's PGD (solid; stars: the paper's own numbers) and the
    strongest adaptive attack (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reported = []  # per model: (eps, the paper's PGD accuracy)
    for a in audits:
        key = (a.get("dataset"), a.get("model"), a.get("method", a.get("loss")), PAPER)
        reported.append([(e, paper[(*key, f"{e:g}")]) for e in a["eps"] if (*key, f"{e:g}") in paper])
    top = max([v for a in audits for s in a["sweeps"].values() for v in s["accuracy"]]
              + [v for r in reported for _, v in r], default=0.0)
    cols = min(3, len(audits))
    rows = -(-len(audits) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    for ax, a, r in zip(axes.flat, audits, reported):
        for n, s in a["sweeps"].items():
            solid = n == PAPER
            ax.plot(s["eps"], s["accuracy"], marker="o" if solid else "x", linestyle="-" if solid else "--",
                    color="C0" if solid else "C3", label=n)
        if r:
            ax.plot(*zip(*r), marker="*", markersize=9, linestyle="none", color="k", label="the paper's PGD")
        ax.set_title(f"{a.get('method', a.get('loss', a.get('run')))}: {a['verdict']}", fontsize=8)
        ax.set_ylim(-1, min(100.0, top + 5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for i, ax in enumerate(axes.flat):
        if i >= len(audits):
            ax.set_visible(False)
        elif i + cols >= len(audits):  # the lowest panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("eps (L-inf)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    fig.suptitle("Paper's PGD (solid; stars: the paper's numbers) vs the strongest adaptive attack (dashed)",
                 fontsize=10)
    fig.text(0.01, 0.005, " | ".join(prov), fontsize=4)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    atomic_savefig(fig, path, dpi=120, metadata={"Description": "; ".join(prov)})
    plt.close(fig)


def overview(audits: list[dict], paper: dict[tuple, float]) -> list[str]:
    """One row per model: clean accuracy, the paper's PGD (ours, the paper's) and the worst case at each eps,
    the strongest adaptive attack, and the verdict."""
    if not audits:
        return []
    eps = [f"{e:g}" for e in audits[0]["eps"]]
    lines = ["## Verdicts", "", "| model | run | n | clean | " + " | ".join(f"paper's PGD eps {e} (paper) / worst case"
                                                                      for e in eps)
             + " | strongest adaptive | verdict |", "|---" * (len(eps) + 6) + "|"]
    for a in audits:
        key = (a.get("dataset"), a.get("model"), a.get("method", a.get("loss")))
        cells = []
        for e in eps:
            ours = a["accuracy"][PAPER].get(e)
            pp = paper.get((*key, PAPER, e))
            cells.append(("-" if ours is None else f"{ours:.1f}") + ("" if pp is None else f" ({pp:.1f})")
                         + f" / **{a['worst_case'][e]:.1f}**" if e in a["worst_case"] else "-")
        lines.append(f"| {'/'.join(map(str, key))} | `{a.get('run')}` | {a['n']} | {a['clean_accuracy']:.1f} | "
                     + " | ".join(cells) + f" | {_strongest(a)} | **{a['verdict']}** |")
    return lines


def write_audit_report(audits: list[dict], out_dir: Path, paper_rows: list[dict] | None = None,
                       title: str = "Robustness audit: adaptive attacks and gradient masking",
                       config_yaml: str | None = None) -> list[Path]:
    """``audit.md`` (per model: probe, accuracy table with the paper's numbers, worst case, flags, verdict),
    ``audit.csv`` (long: model, attack, eps, accuracy) and ``audit_eps.png``; each opens with provenance."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = _prov_lines(audits)
    paper = _paper_lookup(paper_rows)
    th = audits[0]["thresholds"] if audits else THRESHOLDS
    md = [f"# {title}", "", *[f"- {p}" for p in prov],
          "- accuracy: % of examples correct both clean and attacked; worst case: correct under every attack",
          f"- thresholds (accuracy points; shares 0-1): {json.dumps(th)}",
          f"- attack budgets: {json.dumps(audits[0]['profile']) if audits else '-'}",
          f"- verdict rules: {' '.join(verdict.__doc__.replace('``', '`').replace(':func:', '').split())}", "",
          *(config_block(config_yaml) if config_yaml else []), *overview(audits, paper), ""]
    for a in audits:
        md += _model_section(a, paper)
    paths = [out_dir / "audit.md", out_dir / "audit.csv", out_dir / "audit_eps.png"]
    atomic_write_text(paths[0], "\n".join(md))
    csv = pd.DataFrame([r for a in audits for r in _csv_rows(a)], columns=CSV_COLUMNS)
    config = [f"attack budgets: {json.dumps(audits[0]['profile']) if audits else '-'}", f"thresholds: {json.dumps(th)}"]
    if config_yaml:
        config.append(f"resolved config: in {paths[0].name}")
    atomic_write_text(paths[1], "".join(f"# {p}\n" for p in [*prov, *config]) + csv.to_csv(index=False))
    _plot(audits, paths[2], prov, paper)
    return paths


# ------------------------------------------------------------------------------------------
# Hydra entrypoint
# ------------------------------------------------------------------------------------------
def reference_cfg(cfg: DictConfig, loss: str, trainer: str | None = None) -> DictConfig:
    """The reference run's training config: the same one with loss ``loss`` (configs/loss/<loss>.yaml) and,
    when given, trainer ``trainer`` (the CE model of the same architecture for an adversarially trained one)."""
    from pclc.config import compose

    ref = cfg.copy()
    ref.loss = OmegaConf.load(CONFIG_DIR / "loss" / f"{loss}.yaml")
    if trainer is not None:
        ref.trainer = compose("train", [f"trainer={trainer}"]).trainer  # interpolations resolve in ``ref``
    return ref


def _paper_rows(dataset: str, model: str) -> list[dict]:
    from pclc.tables import paper_tables

    df = paper_tables()
    df = df[(df.dataset == dataset) & (df.model == model)]
    at = df.method.str.endswith("+at")  # Table 1 for the plain models, Table 5 for the adversarially trained
    return df[((df.table == "table1") & ~at) | ((df.table == "table5") & at)].to_dict("records")


def audit_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``audit_run``'s settings from an audit config (configs/audit.yaml): eps, budgets, subset, data, thresholds."""
    a = cfg.audit
    return {"eps_list": None if a.eps is None else list(a.eps),
            "profile": OmegaConf.to_container(a.profile, resolve=True), "subset": a.subset,
            "data_root": cfg.dataset.root, "thresholds": OmegaConf.to_container(a.thresholds)}


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit the run that the training config names (and its CE reference); write the report."""
    device = resolve_device(cfg.device)
    a = cfg.audit
    if a.get("run"):  # any run of the store, by key or path: its own training config names the reference
        path = Path(a.run) if "/" in str(a.run) else Path(cfg.store) / str(a.run)
        run = RunDir(path.parent, path.name)
        if not run.config.exists():
            raise ValueError(f"audit.run={a.run}: no run at {run.path} (expected {run.config})")
        cfg, resolved, root = cfg.copy(), OmegaConf.load(run.config).resolved, cfg.dataset.root
        with open_dict(cfg):
            for k in ("dataset", "model", "loss", "trainer", "seed"):
                cfg[k] = resolved[k]
            cfg.dataset.root = root  # where the data is on this machine, not where the run was trained
            cfg.store = str(run.path.parent)
    else:
        run = RunDir(cfg.store, run_key(cfg))
    if not run.finished:
        raise ValueError(f"run {run.key} is not finished; train it first: python -m pclc.train "
                         f"dataset={cfg.dataset.name} model={cfg.model.name} loss={cfg.loss.name}")
    ref_run = None
    if a.reference and (a.reference != cfg.loss.name or cfg.trainer.get("adversarial")):
        ref = reference_cfg(cfg, a.reference, a.get("reference_trainer"))
        ref_run = RunDir(cfg.store, run_key(ref))
        if not ref_run.finished:
            from pclc.train import train

            log.info("training the reference run %s", ref_run.key)
            train(ref)
    kw = audit_kwargs(cfg)
    audits = [audit_run(run, device, reference_run=ref_run, **kw)]
    if ref_run is not None and a.include_reference:
        audits.append(audit_run(ref_run, device, **kw))
    files = write_audit_report(audits, Path(a.out_dir), _paper_rows(cfg.dataset.name, cfg.model.name),
                               config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    for x in audits:
        log.info("%s: %s", x["run"], x["verdict_reason"])
    return {"audits": audits, "files": [str(f) for f in files]}


@hydra.main(config_path="../configs", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.train import run_job

    return run_job(audit, cfg)


if __name__ == "__main__":
    main()
