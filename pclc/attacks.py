"""Attacks: advertorch classes built from configs (the paper's), and batched FGSM/PGD for adversarial training.

advertorch 0.2.3 (its last release) imports ``torch.autograd.gradcheck.zero_gradients``, which torch
removed in 1.9; :func:`advertorch_attacks` installs that one function before importing it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn as nn


def _zero_gradients(x) -> None:
    """torch<1.9's ``zero_gradients``: zero the ``.grad`` of a tensor or of every tensor in an iterable."""
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for t in x:
            _zero_gradients(t)


@functools.cache
def advertorch_attacks():
    """``advertorch.attacks``, importable on current torch (the compatibility shim lives only here)."""
    import importlib

    gradcheck = importlib.import_module("torch.autograd.gradcheck")  # the module (the attribute is a function)
    if not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = _zero_gradients
    import advertorch.attacks

    return advertorch.attacks


def _ce_sum() -> nn.Module:
    return nn.CrossEntropyLoss(reduction="sum")


def _step(params: dict[str, Any], eps: float) -> float:
    """Step size: absolute ``eps_iter``, or ``rel_eps_iter`` times eps (Table 4: eps/10)."""
    if params.get("rel_eps_iter") is not None:
        return float(params["rel_eps_iter"]) * eps
    return float(params["eps_iter"])


def _fgsm(model, eps, num_classes, p):
    return advertorch_attacks().GradientSignAttack(model, loss_fn=_ce_sum(), eps=eps, clip_min=0.0, clip_max=1.0,
                                                   targeted=False)


def _bim(model, eps, num_classes, p):
    return advertorch_attacks().LinfBasicIterativeAttack(model, loss_fn=_ce_sum(), eps=eps, nb_iter=int(p["nb_iter"]),
                                                         eps_iter=_step(p, eps), clip_min=0.0, clip_max=1.0,
                                                         targeted=False)


def _pgd(model, eps, num_classes, p):
    return advertorch_attacks().LinfPGDAttack(model, loss_fn=_ce_sum(), eps=eps, nb_iter=int(p["nb_iter"]),
                                              eps_iter=_step(p, eps), rand_init=bool(p["rand_init"]),
                                              clip_min=0.0, clip_max=1.0, targeted=False)


def _mim(model, eps, num_classes, p):
    return advertorch_attacks().MomentumIterativeAttack(model, loss_fn=_ce_sum(), eps=eps, nb_iter=int(p["nb_iter"]),
                                                        eps_iter=_step(p, eps), decay_factor=float(p["decay_factor"]),
                                                        clip_min=0.0, clip_max=1.0, targeted=False)


def _cw(model, eps, num_classes, p):
    return advertorch_attacks().CarliniWagnerL2Attack(
        model, num_classes, confidence=float(p["confidence"]), targeted=False, learning_rate=float(p["learning_rate"]),
        binary_search_steps=int(p["binary_search_steps"]), max_iterations=int(p["max_iterations"]),
        abort_early=bool(p["abort_early"]), initial_const=float(p["initial_const"]), clip_min=0.0, clip_max=1.0)


def _spsa(model, eps, num_classes, p):
    return advertorch_attacks().LinfSPSAAttack(model, eps=eps, delta=float(p["delta"]), lr=float(p["lr"]),
                                               nb_iter=int(p["nb_iter"]), nb_sample=int(p["nb_sample"]),
                                               max_batch_size=int(p["max_batch_size"]), targeted=False,
                                               clip_min=0.0, clip_max=1.0)


# name -> (builder, uses an L-inf eps). C&W (L2, unbounded) takes no eps.
ATTACKS: dict[str, tuple[Callable, bool]] = {
    "fgsm": (_fgsm, True), "bim": (_bim, True), "pgd": (_pgd, True), "mim": (_mim, True),
    "cw": (_cw, False), "spsa": (_spsa, True),
}


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


def check_eps(eps: float | None, name: str) -> None:
    if eps is None:
        return
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"attack {name}: eps={eps} is outside [0, 1] (pixels are in [0, 1])")


class Projected:
    """An advertorch attack whose output is projected exactly onto ``[x - eps, x + eps] ∩ [0, 1]``.

    advertorch's own clamps leave float rounding (SPSA returns values like -5e-10); this removes it.
    """

    def __init__(self, attack, eps: float | None):
        self.attack, self.eps = attack, eps

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = self.attack.perturb(x, y).detach()
        if self.eps is not None:
            adv = torch.min(torch.max(adv, x - self.eps), x + self.eps)
        return adv.clamp(0.0, 1.0)


def build_attack(kind: str, model: nn.Module, eps: float | None, num_classes: int, params: dict[str, Any]) -> Projected:
    """An advertorch attack on ``model`` (which must return logits)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}; known: {list_attacks()}")
    builder, bounded = ATTACKS[kind]
    if bounded and eps is None:
        raise ValueError(f"attack {kind} needs an eps")
    check_eps(eps, kind)
    eps = None if eps is None else float(eps)
    return Projected(builder(model, eps, int(num_classes), dict(params)), eps)


# ------------------------------------------------------------------------------------------
# Adversarial training (Table 5): our own batched FGSM/PGD with a per-example eps
# ------------------------------------------------------------------------------------------
def linf_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, steps: int,
                step_size: torch.Tensor | None = None, random_start: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Untargeted L-inf attack maximising cross-entropy, ``eps`` of shape (B,) (one per example).

    ``steps=1`` without random start is FGSM; ``steps>1`` is PGD (BIM without random start).
    No host synchronisation; the result is detached and lies in ``[x - eps, x + eps] ∩ [0, 1]``.
    """
    e = eps.view(-1, *([1] * (x.dim() - 1))).to(x)
    a = e if step_size is None else step_size.view_as(e).to(x)
    x_adv = x.detach()
    if random_start:
        noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
        x_adv = (x_adv + noise * e).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + a * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - e), x + e).clamp(0, 1)
    return x_adv.detach()


class HalfAdversarial:
    """Make the first half of every training batch adversarial (Table 5: adversarial and clean 1:1).

    eps is drawn per example uniformly from ``eps_range``; PGD uses ``steps`` steps of
    ``step_scale * eps / steps`` (2.5 eps / steps, Madry et al.'s rule; the paper gives only the steps).
    """

    def __init__(self, attack: str, eps_range, steps: int = 1, step_scale: float = 2.5, random_start: bool = False,
                 fraction: float = 0.5):
        if attack not in ("fgsm", "pgd"):
            raise ValueError(f"adversarial training supports fgsm or pgd, got {attack!r}")
        lo, hi = (float(v) for v in eps_range)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"adversarial eps_range must satisfy 0 <= lo <= hi <= 1, got {list(eps_range)}")
        if not 0 < fraction <= 1:
            raise ValueError(f"adversarial fraction must be in (0, 1], got {fraction}")
        self.attack, self.lo, self.hi = attack, lo, hi
        self.steps = 1 if attack == "fgsm" else int(steps)
        self.step_scale, self.random_start, self.fraction = float(step_scale), bool(random_start), float(fraction)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        n = int(round(len(x) * self.fraction))
        if n == 0:
            return x
        eps = (self.lo + (self.hi - self.lo) * torch.rand(n, generator=generator)).to(x.device)
        step = eps if self.attack == "fgsm" else eps * self.step_scale / self.steps
        was_training = model.training
        model.eval()  # craft with inference-mode BatchNorm/Dropout, then train on the mixed batch
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:  # no weight gradients while crafting
            p.requires_grad_(False)
        try:
            adv = linf_attack(model, x[:n], y[:n], eps, self.steps, step, self.random_start, generator)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            model.train(was_training)
        return torch.cat([adv, x[n:]])
