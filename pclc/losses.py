"""Training losses: CE, GCE (Chen et al. 2019) and PC loss with logit constraints (PC+LC).

All functional losses take logits ``(B, K)`` (any ``K >= 2``) and integer targets ``(B,)`` and
return the batch mean as a scalar tensor. Equation numbers refer to Li et al., "Improving
Adversarial Robustness via Probabilistically Compact Loss with Logit Constraints", AAAI 2021.

Inputs and hyperparameters are validated before anything is computed; problems raise
``ValueError`` naming the offending parameter.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pclc.registry import Registry

__all__ = [
    "ce_loss",
    "gce_loss",
    "pc_loss",
    "logit_constraint",
    "pclc_loss",
    "LOSSES",
    "get_loss",
    "build_loss",
]

LC_MODES = ("soft", "hard")

# --------------------------------------------------------------------------- validation


def _is_real_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_xi(xi) -> None:
    if not _is_real_number(xi) or not (0.0 < xi <= 1.0):
        raise ValueError(f"xi must be a number in (0, 1], got {xi!r}")


def _check_lam(lam) -> None:
    if not _is_real_number(lam) or not (0.0 <= lam < math.inf):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")


def _check_alpha(alpha) -> None:
    if not _is_real_number(alpha) or not (0.0 < alpha < math.inf):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")


def _check_mode(mode, name: str = "mode") -> None:
    if mode not in LC_MODES:
        raise ValueError(f"{name} must be one of {LC_MODES}, got {mode!r}")


def _check_inputs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validate shapes/dtypes/range; return ``target`` as int64 on the logits' device."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor (B, K), got shape {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    b, k = logits.shape
    if k < 2:
        raise ValueError(f"logits must have K >= 2 classes, got K={k}")
    if not isinstance(target, torch.Tensor) or target.dim() != 1:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a 1-D tensor (B,), got shape {shape}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got dtype {target.dtype}")
    if target.shape[0] != b:
        raise ValueError(f"batch size mismatch: logits has B={b} rows but target has {target.shape[0]} entries")
    if b == 0:
        raise ValueError("logits/target: empty batch (B=0), the batch mean is undefined")
    lo, hi = torch.aminmax(target)  # one reduction, one sync
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= k:
        raise ValueError(f"target values must lie in [0, {k}) for K={k} classes, got range [{lo}, {hi}]")
    return target.to(device=logits.device, dtype=torch.long)


def _true_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Boolean (B, K) mask that is True at the true class."""
    return F.one_hot(target, logits.shape[1]).bool()


_PARAM_CHECKS = {
    "xi": _check_xi,
    "lam": _check_lam,
    "alpha": _check_alpha,
    "mode": lambda v: _check_mode(v, "mode"),
    "lc": lambda v: _check_mode(v, "lc"),
}


def _check_params(params) -> None:
    for key, value in params.items():
        _PARAM_CHECKS[key](value)


# --------------------------------------------------------------------------- losses

# Registered losses: ``fn(logits, target, **params)``; a loss config's ``params`` is ``{_target_: <fn>, ...}``.
LOSSES = Registry("loss", positional=("logits", "target"))


@LOSSES.register("ce", runtime=("check_inputs",), check=_check_params)
def ce_loss(logits: torch.Tensor, target: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
    """Standard softmax cross-entropy, batch mean (the paper's CE baseline / warm-up loss)."""
    if check_inputs:
        target = _check_inputs(logits, target)
    return F.cross_entropy(logits, target)


def _pc_loss(logits: torch.Tensor, target: torch.Tensor, xi: float) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    p_y = p.gather(1, target[:, None])
    hinge = torch.relu(p + xi - p_y).masked_fill(_true_mask(logits, target), 0.0)
    return (hinge.sum(dim=1) / (logits.shape[1] - 1)).mean()


def pc_loss(logits: torch.Tensor, target: torch.Tensor, xi: float = 0.995) -> torch.Tensor:
    """Probabilistically compact loss, paper Eq. 6.

    Per sample ``sum_{k != y} max(0, p_k + xi - p_y) / (K - 1)`` with ``p = softmax(logits)``;
    the ``1/(K-1)`` normalisation follows the official code. Batch mean.
    """
    _check_xi(xi)
    target = _check_inputs(logits, target)
    return _pc_loss(logits, target, xi)


def _logit_constraint(logits: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
    true = _true_mask(logits, target)
    a_y = logits.gather(1, target[:, None])
    false_logits = logits.masked_fill(true, -math.inf)
    if mode == "hard":
        j = false_logits.argmax(dim=1, keepdim=True)
        d = torch.relu(a_y - logits.gather(1, j)).squeeze(1)
    else:
        w = torch.softmax(false_logits, dim=1)  # exactly 0 at the true class; NOT detached
        d = (w * torch.relu(a_y - logits)).sum(dim=1)  # true-class term: relu(0) = 0
    return d.mean()


def logit_constraint(logits: torch.Tensor, target: torch.Tensor, mode: str = "soft") -> torch.Tensor:
    """Logit constraint ``d_yj = max(0, a_y - a_j)`` of paper Eq. 16, batch mean.

    ``mode="hard"``: ``j`` is the false class with the largest logit.
    ``mode="soft"`` (official code, default): ``sum_{k != y} w_k max(0, a_y - a_k)`` with
    ``w = softmax`` of the logits with the true class masked to ``-inf``; gradient flows through
    ``w`` as in the official code.
    """
    _check_mode(mode, "mode")
    target = _check_inputs(logits, target)
    return _logit_constraint(logits, target, mode)


@LOSSES.register("pclc", runtime=("check_inputs",), check=_check_params)
def pclc_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    xi: float = 0.995,
    lam: float = 0.05,
    lc: str = "soft",
    check_inputs: bool = True,
) -> torch.Tensor:
    """PC loss with logit constraints, paper Eq. 16: ``pc_loss + lam * logit_constraint``.

    The constant ``C'`` of Eq. 16 has no gradient and is dropped. ``lc`` selects the
    logit-constraint mode (``"soft"`` or ``"hard"``).
    """
    if check_inputs:
        _check_xi(xi)
        _check_lam(lam)
        _check_mode(lc, "lc")
        target = _check_inputs(logits, target)
    return _pclc_loss(logits, target, xi, lam, lc)


def _pclc_loss(logits: torch.Tensor, target: torch.Tensor, xi: float, lam: float, lc: str) -> torch.Tensor:
    return _pc_loss(logits, target, xi) + lam * _logit_constraint(logits, target, lc)


@LOSSES.register("gce", runtime=("check_inputs",), check=_check_params)
def gce_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.333, check_inputs: bool = True
) -> torch.Tensor:
    """Guided Complement Entropy (Chen et al., ICCV 2019), as in the official GCE code.

    With ``p = softmax(logits)`` and ``q_k = p_k / (1 - p_y + 1e-7)`` for ``k != y``::

        loss = 1/(N log K) * sum_i (p_y + 1e-7)^alpha * sum_{k != y} q_k log(q_k + 1e-10)

    Sign: the inner sum is the *negative* complement entropy ``-H(q)``, so the loss is <= 0
    (down to about ``-log(K-1)/log K`` per sample). Chen et al. *maximise* the guided complement
    entropy; minimising this loss does exactly that: it flattens the false-class distribution
    ``q`` (raising ``H(q)``) and, since ``p_y^alpha`` multiplies a non-positive term, also raises
    ``p_y``. ``K`` is taken from ``logits.shape[1]`` (the official code hard-codes 10).
    """
    if check_inputs:
        _check_alpha(alpha)
        target = _check_inputs(logits, target)
    return _gce_loss(logits, target, alpha)


def _gce_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    n, k = logits.shape
    p = torch.softmax(logits, dim=1)
    p_y = p.gather(1, target[:, None])
    q = p / (1.0 - p_y + 1e-7)
    q_log_q = (q * torch.log(q + 1e-10)).masked_fill(_true_mask(logits, target), 0.0)
    guided = (p_y.squeeze(1) + 1e-7) ** alpha * q_log_q.sum(dim=1)
    return guided.sum() / (n * math.log(k))


# --------------------------------------------------------------------------- building from configs


def get_loss(name: str, check_inputs: bool = True, **params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``functools.partial`` of the registered loss ``name`` with ``params``, as ``fn(logits, target)``.

    Hyperparameters are validated here so a bad config fails before training starts.
    ``check_inputs=False`` skips the per-call shape/label checks (and their host sync).
    """
    return LOSSES.build({"_target_": LOSSES.get(name).target, **params}, check_inputs=check_inputs)


def build_loss(cfg, check_inputs: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a loss config (``configs/loss/``: ``name`` and ``params``, a Hydra ``_target_``)."""
    entry = LOSSES.entry(cfg.params)
    if entry.name != cfg.name:
        raise ValueError(f"loss config {cfg.name!r} names the function of loss {entry.name!r} ({entry.target})")
    return LOSSES.build(cfg.params, check_inputs=check_inputs)
