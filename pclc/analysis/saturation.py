"""Float32 saturation of a classifier's softmax: which examples have p_y == 1.0 exactly and an all-zero CE input
gradient, where a gradient attack has nothing to follow (the audit's probe; the deviations study's finding 6)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pclc.attacks.linf import margin


def saturation_probe(
    model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, bins: int = 20, indices: bool = False
) -> dict:
    """Float32 saturation: share with p_y == 1.0 exactly, share with an all-zero CE input gradient, margins
    (``indices``: also which examples, ``p_y_one_idx`` and ``zero_grad_idx``).

    The CE is summed (not averaged) so that a tiny per-example gradient is not scaled into underflow.
    """
    p1, zero, margins = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].clone().requires_grad_(True), y[i : i + batch_size]
        logits = model(xb).float()
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, yb, reduction="sum"), xb)
        logits = logits.detach()
        p1.append(logits.softmax(1).gather(1, yb[:, None]).squeeze(1) == 1.0)
        zero.append((grad.flatten(1) == 0).all(1))
        margins.append(margin(logits, yb))
    p1, zero, m = (torch.cat(t).cpu() for t in (p1, zero, margins))
    finite = m[torch.isfinite(m)].double().numpy()
    counts, edges = np.histogram(finite, bins=bins) if len(finite) else (np.zeros(0), np.zeros(0))
    return {
        "n": len(m),
        "share_p_y_one": float(p1.float().mean()),
        "share_zero_grad": float(zero.float().mean()),
        "margin_mean": float(finite.mean()) if len(finite) else math.nan,
        "margin_median": float(np.median(finite)) if len(finite) else math.nan,
        "margin_q10": float(np.quantile(finite, 0.1)) if len(finite) else math.nan,
        "margin_q90": float(np.quantile(finite, 0.9)) if len(finite) else math.nan,
        "margin_hist": {"counts": [int(c) for c in counts], "edges": [float(e) for e in edges]},
        **(
            {
                "p_y_one_idx": p1.nonzero().flatten().tolist(),
                "zero_grad_idx": zero.nonzero().flatten().tolist(),
            }
            if indices
            else {}
        ),
    }
