"""Indicators of attack failure (Pintor et al., NeurIPS 2022), for the paper's iterative attacks.

Each indicator is the share (0-1) of examples showing it; one that exceeds ``audit.thresholds.indicator_share``
fires, saying the attack's number overstates robustness for a reason of the attack's own making:

- **silent success**: an iterate was misclassified, the returned (final) one is not: the attack found an
  adversarial example and threw it away (advertorch returns the last iterate);
- **incomplete optimisation**: among examples the attack failed on, the loss still rose by more than
  ``indicator_rise`` (relative) over the last 10% of steps: more steps would have gone further;
- **non-converging restarts**: random starts with other seeds disagree on whether an example breaks: one run
  decides by chance;
- **transfer failure**: examples a transfer attack breaks and the white-box attack does not: the white-box
  gradient misleads (the transfer examples are the audit's own, ``transfer-*``);
- **unbounded failure**: at eps 1 (every pixel reachable) the attack still leaves examples correct: it is the
  attack's budget or its gradient, not the model, that stops it.
"""

from __future__ import annotations

import torch

from pclc.attacks.engine import pgd_start, sign_iterations
from pclc.attacks.linf import seeded
from pclc.attacks.paper import step_size

INDICATORS = (
    "silent_success",
    "incomplete_optimisation",
    "non_converging_restarts",
    "transfer_failure",
    "unbounded_failure",
)


def trace_attack(model, x, y, eps: float, params: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's BIM / PGD / MIM (``params``: ``nb_iter``, ``eps_iter`` or ``rel_eps_iter``, ``rand_init``,
    ``decay_factor``) with the engine's update rules, traced: (final examples, per-step loss [T+1, n], per-step
    misclassified [T+1, n]). Batch seed ``seed`` draws the random start, as the attack itself does."""
    step = step_size(eps, params.get("eps_iter"), params.get("rel_eps_iter"))
    with seeded(seed, x.device):
        start = pgd_start(x, eps) if params.get("rand_init") else None
    trace: list = []
    adv = sign_iterations(
        model, x, y, eps, int(params["nb_iter"]), step, None, start, params.get("decay_factor"), trace
    )
    return adv, torch.stack([t[0] for t in trace]), torch.stack([t[1] for t in trace])


def _share(mask: torch.Tensor, of: torch.Tensor | None = None) -> float:
    base = torch.ones_like(mask) if of is None else of
    return float((mask & base).sum()) / max(1, int(base.sum()))


def attack_indicators(
    model,
    x,
    y,
    eps: float,
    params: dict,
    seed: int = 0,
    restarts: int = 2,
    rise: float = 0.01,
    transfer_correct: torch.Tensor | None = None,
) -> dict[str, float]:
    """The indicators' shares for one attack at one eps on ``x`` (those that apply: restarts need a random
    start, transfer failure the transfer attack's per-example correctness on the same examples)."""
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).cpu()
    _, loss, wrong = trace_attack(model, x, y, eps, params, seed)
    final_correct = ~wrong[-1] & clean
    out = {"silent_success": _share(wrong[:-1].any(0) & ~wrong[-1], clean)}
    t = len(loss) - 1
    late = max(0, t - max(1, t // 10))
    rose = loss[-1] > loss[late] * (1 + rise) + 1e-12
    out["incomplete_optimisation"] = _share(rose, final_correct)
    if params.get("rand_init") and restarts > 1:
        outcomes = [wrong[-1]] + [
            trace_attack(model, x, y, eps, params, seed + 7919 * k)[2][-1] for k in range(1, restarts)
        ]
        agree = torch.stack(outcomes).all(0) | ~torch.stack(outcomes).any(0)
        out["non_converging_restarts"] = _share(~agree, clean)
    if transfer_correct is not None:
        out["transfer_failure"] = _share(~transfer_correct.cpu() & final_correct, clean)
    _, _, wrong1 = trace_attack(model, x, y, 1.0, params, seed)
    out["unbounded_failure"] = _share(~wrong1[-1], clean)
    return out
