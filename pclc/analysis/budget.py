"""A minimum-norm attack's accuracy against a norm budget (issue 30: C&W beside its budget).

C&W looks for the smallest L2 perturbation that changes the prediction, so one run gives a whole curve: at budget
r an example counts as robust when it is correct clean and the attack found no misclassified point within r.
The paper reports one number per model, set by its step budget (lr x iterations); the curve and the median norm
of the successful perturbations say how far the examples it did break were from the boundary.
"""

from __future__ import annotations

import math

import torch


def _tensors(label, clean_pred, adv_pred, norms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    label, clean_pred, adv_pred = (torch.as_tensor(v) for v in (label, clean_pred, adv_pred))
    norms = torch.as_tensor(norms, dtype=torch.float64)
    if not len(label) == len(clean_pred) == len(adv_pred) == len(norms):
        raise ValueError("label, predictions and norms must have one entry per example")
    return clean_pred == label, adv_pred != label, norms


def broken_norms(label, clean_pred, adv_pred, norms) -> torch.Tensor:
    """The norms of the successful perturbations: examples correct clean and misclassified after the attack."""
    correct, fooled, norms = _tensors(label, clean_pred, adv_pred, norms)
    return norms[correct & fooled]


def budget_curve(label, clean_pred, adv_pred, norms, budgets) -> list[float]:
    """Accuracy (%) at each norm budget: correct clean, and not broken within the budget."""
    correct, fooled, norms = _tensors(label, clean_pred, adv_pred, norms)
    n = len(correct)
    return [100.0 * int((correct & ~(fooled & (norms <= r))).sum()) / n if n else math.nan for r in budgets]


def median(values: torch.Tensor) -> float:
    """The median of a 1-D tensor (NaN when empty): the lower middle value, as ``torch.median``."""
    return float(values.median()) if len(values) else math.nan
