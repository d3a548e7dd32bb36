"""Clean-data metrics computed on the device with one host sync per call."""

from __future__ import annotations

import torch

from pclc.data import DeviceData


def probability_gap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per example ``p_y - max_{k != y} p_k`` (the paper's probability gap, Introduction and Fig. 3)."""
    p = logits.float().softmax(1)
    p_y = p.gather(1, target[:, None]).squeeze(1)
    p_false = p.scatter(1, target[:, None], float("-inf")).amax(1)
    return p_y - p_false


@torch.no_grad()
def clean_metrics(model: torch.nn.Module, data: DeviceData, batch_size: int = 2048) -> dict[str, float]:
    """Accuracy (%) and mean probability gap of ``model`` (in eval mode) on ``data``."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=data.device)
    gap = torch.zeros((), device=data.device, dtype=torch.float64)
    for x, y in data.batches(batch_size):
        logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        gap += probability_gap(logits, y).double().sum()
    model.train(was_training)
    n = len(data)
    return {"accuracy": 100.0 * float(correct) / n, "prob_gap": float(gap) / n}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in batches (on ``x``'s device)."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
