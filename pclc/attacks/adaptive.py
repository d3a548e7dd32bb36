"""The audit's attacks, stronger than the paper's (Carlini et al. 2019; Croce & Hein 2020).

CE-PGD (the step ladder, and FGSM as one full step), logit-margin PGD, CE on temperature-scaled logits,
APGD-CE/DLR and targeted APGD (torchattacks), the black-box Square attack, and CE-PGD transferred from a
source model. Same signature as every attack: ``(model, x, y, eps, seed, **params) -> x_adv``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pclc.attacks._registry import _INSTALL, register_attack
from pclc.attacks.linf import ce_loss, margin, margin_loss, project, seeded, sign_pgd
from pclc.files import cached_tensor


def _num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _torchattacks():
    try:
        import torchattacks
    except ImportError as e:
        raise ImportError("the audit's APGD and Square attacks need torchattacks: " + _INSTALL["torchattacks"]) from e
    return torchattacks


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


def _steps(p: dict) -> float:
    return float(p["nb_iter"]) * float(p.get("restarts", 1))


@register_attack("ce-pgd", bounded=True, passes=_steps)
def ce_pgd(model, x, y, eps, seed, nb_iter: int, rel_eps_iter: float, rand_init: bool = True, restarts: int = 1):
    """CE-PGD with a constant step ``rel_eps_iter * eps``; each example keeps its first fooling iterate.
    ``nb_iter=1, rel_eps_iter=1, rand_init=false`` is FGSM."""
    once = partial(
        sign_pgd,
        model,
        eps=eps,
        nb_iter=int(nb_iter),
        step=float(rel_eps_iter) * eps,
        rand_init=bool(rand_init),
        keep_first=True,
    )
    with seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


@register_attack("margin-pgd", bounded=True, passes=_steps)
def margin_pgd(
    model,
    x,
    y,
    eps,
    seed,
    nb_iter: int,
    rel_eps_iter: float | None = None,
    restarts: int = 1,
    eps_iter: float | None = None,
    decay: bool = True,
    keep_first: bool = True,
    rand_init: bool = True,
):
    """PGD on the C&W margin loss max_{k!=y} a_k - a_y (no softmax: cannot saturate); first step
    ``rel_eps_iter * eps`` (or ``eps_iter``), cosine-decayed (``decay``), random start (``rand_init``; off, one
    step of eps is FGSM's update and 10 of 0.01 BIM's); per example the first iterate that fools the model
    (``keep_first``, else the last, as the paper's PGD)."""
    if (rel_eps_iter is None) == (eps_iter is None):
        raise ValueError("margin_pgd takes one of rel_eps_iter and eps_iter")
    step = float(eps_iter) if eps_iter is not None else float(rel_eps_iter) * eps
    once = partial(
        sign_pgd,
        model,
        eps=eps,
        nb_iter=int(nb_iter),
        step=step,
        loss=margin_loss,
        decay=bool(decay),
        keep_first=bool(keep_first),
        rand_init=bool(rand_init),
    )
    with seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


def _temperature(model, x, y, temperature, target_margin: float):
    """``auto``: per example, T = max(1, |clean margin| / target_margin), so that logits / T has a margin of
    ``target_margin`` (p_y well below 1 at any logit scale); else the fixed number."""
    if temperature != "auto":
        return float(temperature)
    with torch.no_grad():
        return (margin(model(x), y).abs() / target_margin).clamp_min(1.0)[:, None]


@register_attack("temp-pgd", bounded=True, passes=_steps)
def temp_pgd(
    model,
    x,
    y,
    eps,
    seed,
    nb_iter: int,
    rel_eps_iter: float,
    restarts: int,
    temperature: float | str = "auto",
    target_margin: float = 2.0,
):
    """PGD on CE of temperature-scaled logits (logits / T) to un-saturate softmax; first step
    ``rel_eps_iter * eps``, cosine-decayed, random start."""

    def once(xs, ys):
        t = _temperature(model, xs, ys, temperature, float(target_margin))
        return sign_pgd(
            model,
            xs,
            ys,
            eps,
            int(nb_iter),
            float(rel_eps_iter) * eps,
            ce_loss,
            t,
            decay=True,
            keep_first=True,
        )

    with seeded(seed, x.device):
        return _restarts(model, x, y, restarts, once)


@register_attack("apgd", bounded=True, passes=_steps, requires=("torchattacks",))
def apgd(model, x, y, eps, seed, loss: str, nb_iter: int, restarts: int):
    """APGD-CE or APGD-DLR (torchattacks); DLR needs at least 3 classes."""
    if loss == "dlr" and _num_classes(model, x) < 3:
        raise ValueError("APGD-DLR needs at least 3 classes")
    atk = _torchattacks().APGD(
        model,
        norm="Linf",
        eps=float(eps),
        steps=int(nb_iter),
        n_restarts=int(restarts),
        seed=int(seed),
        loss=loss,
    )
    with seeded(seed, x.device):
        return project(atk(x, y), x, eps)


@register_attack(
    "apgdt",
    bounded=True,
    passes=lambda p: float(p["nb_iter"]) * p["restarts"] * p["targets"],
    requires=("torchattacks",),
)
def apgdt(model, x, y, eps, seed, nb_iter: int, restarts: int, targets: int):
    """Targeted APGD-DLR (torchattacks) against the min(targets, K-1) most likely wrong classes; K >= 4."""
    k = _num_classes(model, x)
    if k < 4:
        raise ValueError("targeted APGD needs at least 4 classes")
    atk = _torchattacks().APGDT(
        model,
        norm="Linf",
        eps=float(eps),
        steps=int(nb_iter),
        n_restarts=int(restarts),
        seed=int(seed),
        n_classes=k,
    )
    atk.n_target_classes = min(int(targets), k - 1)
    with seeded(seed, x.device):
        return project(atk(x, y), x, eps)


@register_attack(
    "square", bounded=True, passes=lambda p: float(p["queries"]) * p["restarts"] / 2, requires=("torchattacks",)
)
def square(model, x, y, eps, seed, queries: int, restarts: int):
    """Square attack (torchattacks): black-box random search on the margin loss, ``queries`` per example."""
    atk = _torchattacks().Square(
        model,
        norm="Linf",
        eps=float(eps),
        n_queries=int(queries),
        n_restarts=int(restarts),
        seed=int(seed),
        loss="margin",
    )
    with seeded(seed, x.device):
        return project(atk(x, y), x, eps)


@register_attack("transfer-pgd", bounded=True, passes=lambda p: float(p["nb_iter"]), runtime=("source", "cache_dir"))
def transfer_pgd(model, x, y, eps, seed, nb_iter: int, rel_eps_iter: float, source=None, cache_dir: Path | None = None):
    """CE-PGD crafted on ``source`` (its last iterate), to be evaluated on ``model``.

    The examples depend on the source alone, so with ``cache_dir`` (the source run's) they are saved under
    a hash of the batch's pixels, labels and budget, and every model audited from that source reuses them.
    """
    if source is None:
        raise ValueError("transfer-pgd needs a source model")
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(x.detach().cpu().numpy().tobytes())
        h.update(y.cpu().numpy().astype(np.int64).tobytes())
        h.update(json.dumps([float(eps), int(nb_iter), float(rel_eps_iter), int(seed)]).encode())
        path = Path(cache_dir) / f"transfer-pgd-{h.hexdigest()[:20]}.pt"

    def run() -> torch.Tensor:
        with seeded(seed, x.device):
            return sign_pgd(source, x, y, eps, int(nb_iter), float(rel_eps_iter) * eps)

    return cached_tensor(path, run, x.device)
