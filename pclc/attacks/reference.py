"""The authors' reference AutoAttack (``pyautoattack`` 0.2.0, Croce & Hein 2020, MIT): the field's standard
evaluation, run as it ships. ``version="standard"`` is the published L-inf ensemble at its own budgets (APGD-CE;
APGD-T and FAB-T on the 9 most likely wrong classes, 100 iterations; Square with 5,000 queries), each attack on
what the ones before left robust. ``version="custom"`` runs the same four attacks at the budgets given (smoke
tests only: a result records its parameters, so it is never mistaken for the standard number).

Beside its examples it returns, per example, which of its attacks broke it (``aa_stage``: 0 misclassified
unattacked, 1-4 the attack of :data:`STANDARD` that first succeeded, -1 robust to all four): a point that only
Square breaks is one the gradient attacks missed, AutoAttack's own sign of masked gradients (its
``check_square_sr`` warning), which reports can then show and judge instead of leaving it in a log.
"""

from __future__ import annotations

import logging

import torch

from pclc.attacks._registry import register_attack
from pclc.attacks.linf import project

log = logging.getLogger(__name__)

STANDARD = ["apgd-ce", "apgd-t", "fab-t", "square"]
ROBUST, UNATTACKED = -1, 0  # aa_stage values besides 1 + the index in STANDARD
_ATTACKER = {"apgd-ce": "apgd", "apgd-t": "apgd_targeted", "fab-t": "fab", "square": "square"}  # AutoAttack's fields


def _track_stages(aa, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Wrap each of ``aa``'s attacks so that, as AutoAttack runs them on the points still robust (one batch: all
    of them, in index order), the points each one breaks are marked with its stage; AutoAttack's own test (the
    model's prediction on the attack's output) decides, so the marks follow its robust flags exactly."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    stage = torch.where(robust, ROBUST, UNATTACKED).to(torch.int8)
    for k, name in enumerate(STANDARD, start=1):
        attacker = getattr(aa, _ATTACKER[name])
        perturb = attacker.perturb

        def tracked(xs, ys, *args, _perturb=perturb, _k=k, _name=name, **kw):
            idx = robust.nonzero().flatten()
            if len(idx) != len(xs) or not torch.equal(ys.to(y.device), y[idx]):
                raise RuntimeError(f"autoattack-ref: {_name} ran on other points than the ones left robust")
            adv = _perturb(xs, ys, *args, **kw)
            with torch.no_grad():
                broke = model(adv.to(x.device)).argmax(1) != ys.to(y.device)
            stage[idx[broke]] = _k
            robust[idx[broke]] = False
            return adv

        attacker.perturb = tracked
    return stage


def _passes(p: dict) -> float:
    """Worst case per example (every example survives every attack): APGD-CE, then APGD-T and FAB-T (forward and
    backward per step, per target class), then Square's forward-only queries. The planner uses it only until a
    measured time exists: the store's results of the suite, else the audit's of the same code (pclc.plan)."""
    if p.get("version", "standard") == "standard":
        return 100.0 * (1 + 2 * 9) + 5000 / 2
    return float(p.get("nb_iter", 100)) * (1 + 2 * p.get("targets", 9)) + float(p.get("queries", 5000)) / 2


@register_attack("autoattack-ref", bounded=True, passes=_passes, requires=("pyautoattack",))
def autoattack_ref(
    model,
    x,
    y,
    eps,
    seed,
    version: str = "standard",
    nb_iter: int = 100,
    targets: int = 9,
    queries: int = 5000,
):
    """Reference AutoAttack at ``eps`` (L-inf) on a batch: its adversarial examples, projected onto the ball, and
    ``{"aa_stage": ...}`` (which attack broke each example)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise ImportError(
            "the reference AutoAttack needs pyautoattack==0.2.0: make setup installs it "
            "(pip install -c constraints.txt pyautoattack)"
        ) from e
    if version not in ("standard", "custom"):
        raise ValueError(f"autoattack-ref: version must be standard or custom, got {version!r}")
    if version == "standard" and (nb_iter, targets, queries) != (100, 9, 5000):
        raise ValueError(
            "autoattack-ref: version=standard runs the published budgets; use version=custom to change "
            "nb_iter, targets or queries"
        )
    aa = AutoAttack(
        model,
        attacks=None if version == "standard" else STANDARD,
        device=x.device,
        eps=float(eps),
        norm="Linf",
        seed=int(seed),
        version=version,
    )
    aa.verbose = False
    aa.logger.setLevel(logging.WARNING)
    if version == "custom":
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = int(nb_iter)
        aa.apgd.n_restarts = aa.fab.n_restarts = 1
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = int(targets)
        aa.square.n_queries = int(queries)
    stage = _track_stages(aa, model, x, y)
    with torch.enable_grad():
        x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=len(x))  # (examples, their predicted labels)
    adv = project(x_adv.to(x), x, eps)
    if not torch.equal(stage == ROBUST, y_adv.to(y.device) == y):  # a mark is shown only if it is AutoAttack's
        log.warning("autoattack-ref: the stage marks disagree with AutoAttack's robust points; left out")
        return adv, {}
    return adv, {"aa_stage": stage}
