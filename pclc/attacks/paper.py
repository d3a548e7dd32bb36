"""The paper's attacks with advertorch 0.2.3's semantics (configs/attack/: the paper's settings).

Two backends, the same adversarial examples bit for bit (``tests/test_engine.py``):
``backend="pclc"`` (the default: :mod:`pclc.attacks.engine`, the same update rules with less work) and
``backend="advertorch"`` (the reference: advertorch's classes as they ship). SPSA runs on advertorch in
both. ``chunk``: rows per model call for our engine ("auto": 100 on CPU, whole batches on GPU). Both are
set by ``attack.backend`` / ``attack.chunk`` (configs/evaluate.yaml) and are not part of a result's name.

advertorch 0.2.3 (its last release) imports ``torch.autograd.gradcheck.zero_gradients``, which torch
removed in 1.9; :func:`advertorch_attacks` installs that one function before importing it.
Every attack is untargeted on inputs in [0, 1]; the batch's ``seed`` seeds random starts and SPSA's noise.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from pclc.attacks import engine as engine_mod
from pclc.attacks._registry import register_attack
from pclc.attacks.linf import seeded

BACKENDS = ("pclc", "advertorch")
_ENGINE = ("backend", "chunk")  # runtime arguments (never in an attack's config or a result's hash)


def check_engine(attack) -> dict:
    """``attack.{backend,chunk}`` (configs/evaluate.yaml), checked before any work."""
    engine = {"backend": attack.get("backend", "pclc"), "chunk": attack.get("chunk", "auto")}
    unknown = sorted(set(attack) - set(engine))
    if unknown:
        raise ValueError(f"attack.{unknown[0]}: unknown; attack takes backend and chunk")
    if engine["backend"] not in BACKENDS:
        raise ValueError(f"attack.backend={engine['backend']!r}; known: {list(BACKENDS)}")
    c = engine["chunk"]
    if c not in ("auto", None) and (isinstance(c, bool) or not isinstance(c, int) or c < engine_mod.MIN_ROWS):
        raise ValueError(f"attack.chunk={c!r} must be 'auto' or an integer >= {engine_mod.MIN_ROWS}")
    return engine


def _ours(backend: str, chunk, x: torch.Tensor) -> tuple[bool, int | None]:
    """Whether to use our engine, and its block size."""
    e = check_engine({"backend": backend, "chunk": chunk})
    auto = e["chunk"] in ("auto", None)
    return e["backend"] == "pclc", engine_mod.default_chunk(x.device) if auto else int(e["chunk"])


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


def step_size(eps: float, eps_iter: float | None, rel_eps_iter: float | None) -> float:
    """Step size: absolute ``eps_iter``, or ``rel_eps_iter`` times eps (Table 4: eps/10)."""
    return float(rel_eps_iter) * eps if rel_eps_iter is not None else float(eps_iter)


def _run(attack, x, y, seed: int) -> torch.Tensor:
    with seeded(seed, x.device):
        return attack.perturb(x.clone(), y)


def _num_classes(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@register_attack("fgsm", bounded=True, passes=lambda p: 1.0, runtime=_ENGINE)
def fgsm(model, x, y, eps, seed, backend: str = "pclc", chunk="auto"):
    """FGSM (Goodfellow et al. 2014): one step of eps along the sign of the CE gradient."""
    ours, chunk = _ours(backend, chunk, x)
    if ours:
        return engine_mod.fgsm(model, x, y, eps, chunk)
    return _run(
        advertorch_attacks().GradientSignAttack(
            model, loss_fn=_ce_sum(), eps=eps, clip_min=0.0, clip_max=1.0, targeted=False
        ),
        x,
        y,
        seed,
    )


def _iterative(
    cls: str, model, x, y, eps, seed, nb_iter, eps_iter, rel_eps_iter, backend, chunk, **extra
) -> torch.Tensor:
    """An L-inf iterative attack (BIM, PGD, MIM) on CE, ``nb_iter`` steps of the step size."""
    step = step_size(eps, eps_iter, rel_eps_iter)
    ours, chunk = _ours(backend, chunk, x)
    if ours:
        with seeded(seed, x.device):
            start = engine_mod.pgd_start(x, eps) if extra.get("rand_init") else None
        return engine_mod.sign_iterations(model, x, y, eps, int(nb_iter), step, chunk, start, extra.get("decay_factor"))
    attack = getattr(advertorch_attacks(), cls)(
        model,
        loss_fn=_ce_sum(),
        eps=eps,
        nb_iter=int(nb_iter),
        eps_iter=step,
        clip_min=0.0,
        clip_max=1.0,
        targeted=False,
        **extra,
    )
    return _run(attack, x, y, seed)


@register_attack("bim", bounded=True, passes=lambda p: p["nb_iter"], runtime=_ENGINE)
def bim(
    model,
    x,
    y,
    eps,
    seed,
    nb_iter: int,
    eps_iter: float | None = None,
    rel_eps_iter: float | None = None,
    backend: str = "pclc",
    chunk="auto",
):
    """BIM (Kurakin et al. 2016): ``nb_iter`` sign steps, no random start."""
    return _iterative(
        "LinfBasicIterativeAttack", model, x, y, eps, seed, nb_iter, eps_iter, rel_eps_iter, backend, chunk
    )


@register_attack("pgd", bounded=True, passes=lambda p: p["nb_iter"], runtime=_ENGINE)
def pgd(
    model,
    x,
    y,
    eps,
    seed,
    nb_iter: int,
    rand_init: bool,
    eps_iter: float | None = None,
    rel_eps_iter: float | None = None,
    backend: str = "pclc",
    chunk="auto",
):
    """PGD (Madry et al. 2017): ``nb_iter`` sign steps from a random start (``rand_init``)."""
    return _iterative(
        "LinfPGDAttack",
        model,
        x,
        y,
        eps,
        seed,
        nb_iter,
        eps_iter,
        rel_eps_iter,
        backend,
        chunk,
        rand_init=bool(rand_init),
    )


@register_attack("mim", bounded=True, passes=lambda p: p["nb_iter"], runtime=_ENGINE)
def mim(
    model,
    x,
    y,
    eps,
    seed,
    nb_iter: int,
    decay_factor: float,
    eps_iter: float | None = None,
    rel_eps_iter: float | None = None,
    backend: str = "pclc",
    chunk="auto",
):
    """MIM (Dong et al. 2018): momentum iterative sign steps."""
    return _iterative(
        "MomentumIterativeAttack",
        model,
        x,
        y,
        eps,
        seed,
        nb_iter,
        eps_iter,
        rel_eps_iter,
        backend,
        chunk,
        decay_factor=float(decay_factor),
    )


@register_attack("cw", bounded=False, passes=lambda p: p["max_iterations"] * p["binary_search_steps"], runtime=_ENGINE)
def cw(
    model,
    x,
    y,
    eps,
    seed,
    max_iterations: int,
    learning_rate: float,
    confidence: float,
    binary_search_steps: int,
    initial_const: float,
    abort_early: bool,
    backend: str = "pclc",
    chunk="auto",
):
    """C&W L2 (Carlini & Wagner 2017), untargeted and unbounded (``eps`` is None)."""
    settings = {
        "confidence": float(confidence),
        "learning_rate": float(learning_rate),
        "binary_search_steps": int(binary_search_steps),
        "max_iterations": int(max_iterations),
        "abort_early": bool(abort_early),
        "initial_const": float(initial_const),
    }
    ours, chunk = _ours(backend, chunk, x)
    if ours:
        return engine_mod.cw_l2(model, x, y, _num_classes(model, x), chunk, **settings)
    return _run(
        advertorch_attacks().CarliniWagnerL2Attack(
            model, _num_classes(model, x), targeted=False, clip_min=0.0, clip_max=1.0, **settings
        ),
        x,
        y,
        seed,
    )


@register_attack("spsa", bounded=True, passes=lambda p: p["nb_iter"] * p["nb_sample"] * 2 / 2)
def spsa(
    model,
    x,
    y,
    eps,
    seed,
    lr: float,
    delta: float,
    nb_iter: int,
    nb_sample: int,
    max_batch_size: int,
    batch_size: int = 10,
):
    """SPSA (Uesato et al. 2018), gradient-free. ``batch_size``: examples per call, read by pclc.evaluate
    (SPSA forwards ``max_batch_size`` copies of each example, so it runs in smaller batches than the others)."""
    return _run(
        advertorch_attacks().LinfSPSAAttack(
            model,
            eps=eps,
            delta=float(delta),
            lr=float(lr),
            nb_iter=int(nb_iter),
            nb_sample=int(nb_sample),
            max_batch_size=int(max_batch_size),
            targeted=False,
            clip_min=0.0,
            clip_max=1.0,
        ),
        x,
        y,
        seed,
    )
