"""Issue 30 item 3: Pintor et al.'s indicators of attack failure, each tripped by a model built to trip it and
quiet on a model where the attack works."""

from __future__ import annotations

import pytest
import torch

from pclc.attacks.engine import sign_iterations
from pclc.audit.indicators import attack_indicators, trace_attack


class OnMean(torch.nn.Module):
    """Two classes decided by the mean pixel m: class 0's logit is 0, class 1's is ``f(m)`` (class 0 is right)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([torch.zeros_like(m), self.f(m)], 1)


def linear(boundary: float, slope: float = 20.0):
    return OnMean(lambda m: slope * (m - boundary))


def data(n: int = 64, value: float = 0.5):
    return torch.full((n, 1, 2, 2), value), torch.zeros(n, dtype=torch.long)


BIM = {"nb_iter": 2, "eps_iter": 0.04}


def test_the_trace_is_the_attack():
    model, (x, y) = linear(0.52), data(8)
    adv, loss, wrong = trace_attack(model, x, y, 0.1, {"nb_iter": 5, "eps_iter": 0.01}, seed=0)
    assert torch.equal(adv, sign_iterations(model, x, y, 0.1, 5, 0.01, None)) and loss.shape == wrong.shape == (6, 8)
    assert not wrong[0].any() and wrong[-1].all()


def test_silent_success_fires_when_an_iterate_was_adversarial_and_the_final_one_is_not():
    bump = OnMean(lambda m: 10 - 400 * (m - 0.55).abs())  # wrong only for m in (0.525, 0.575): 0.54 then 0.58
    assert attack_indicators(bump, *data(), 0.1, BIM)["silent_success"] == 1.0
    assert attack_indicators(linear(0.52), *data(), 0.1, BIM)["silent_success"] == 0.0


def test_incomplete_optimisation_fires_when_the_loss_still_rises_at_the_last_step():
    far = {"nb_iter": 10, "eps_iter": 0.01}
    assert attack_indicators(linear(0.9, 5.0), *data(), 0.3, far)["incomplete_optimisation"] == 1.0
    clipped = {"nb_iter": 20, "eps_iter": 0.01}  # at the eps-ball's edge after 5 steps: the loss stops moving
    assert attack_indicators(linear(0.9, 5.0), *data(), 0.05, clipped)["incomplete_optimisation"] == 0.0


def test_non_converging_restarts_fire_when_the_random_start_decides():
    # m >= 0.5: class 1 wins beyond 0.62; m < 0.5: its logit rises as m falls but never wins
    two_sided = OnMean(lambda m: torch.where(m >= 0.5, 50 * (m - 0.62), 5 * (0.5 - m) - 5))
    pgd = {"nb_iter": 5, "eps_iter": 0.05, "rand_init": True}
    share = attack_indicators(two_sided, *data(200), 0.15, pgd, restarts=3)["non_converging_restarts"]
    assert 0.2 < share < 1.0
    assert attack_indicators(linear(0.52), *data(200), 0.15, pgd, restarts=3)["non_converging_restarts"] == 0.0


def test_transfer_failure_fires_when_transfer_breaks_what_the_white_box_attack_cannot():
    masked = OnMean(lambda m: 20 * (torch.round(m * 10) / 10 - 0.52))  # a zero gradient everywhere
    x, y = data()
    broken_by_transfer = torch.zeros(len(y), dtype=torch.bool)  # correct under transfer: none
    assert attack_indicators(masked, x, y, 0.1, BIM, transfer_correct=broken_by_transfer)["transfer_failure"] == 1.0
    assert (
        attack_indicators(linear(0.52), x, y, 0.1, BIM, transfer_correct=broken_by_transfer)["transfer_failure"] == 0.0
    )


@pytest.mark.parametrize("step, fires", [({"eps_iter": 0.01}, True), ({"rel_eps_iter": 0.25}, False)])
def test_unbounded_failure_fires_when_eps_1_still_leaves_examples(step, fires):
    """The paper's PGD moves at most 40 x 0.01 whatever eps is; a step relative to eps reaches every pixel."""
    out = attack_indicators(linear(0.9, 5.0), *data(), 0.1, {"nb_iter": 10, **step})
    assert out["unbounded_failure"] == (1.0 if fires else 0.0)
