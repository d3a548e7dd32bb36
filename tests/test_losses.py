"""Tests for pclc.losses: hand-computed values, gradients, edge cases and validation."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from pclc.losses import (
    LOSSES,
    ce_loss,
    gce_loss,
    get_loss,
    logit_constraint,
    pc_loss,
    pclc_loss,
)


def _logits_from_probs(*rows):
    """Logits whose softmax is exactly the given probability rows (float64)."""
    return torch.tensor(rows, dtype=torch.float64).log()


def _complement_entropy(logits, target):
    p = torch.softmax(logits, dim=1)
    mask = F.one_hot(target, logits.shape[1]).bool()
    q = p.masked_fill(mask, 0.0)
    q = q / q.sum(dim=1, keepdim=True)
    return -(q * torch.log(q.clamp_min(1e-300))).sum(dim=1)


# --------------------------------------------------------------------------- hand values


def test_pc_loss_hand_values_with_k_minus_1_normalisation():
    # K=3, p = [0.2, 0.3, 0.5].
    logits = _logits_from_probs([0.2, 0.3, 0.5], [0.2, 0.3, 0.5])
    # y=2, xi=0.5: false classes 0.2+0.5-0.5=0.2 and 0.3+0.5-0.5=0.3 -> 0.5 / (K-1=2) = 0.25
    # y=0, xi=0.5: 0.3+0.5-0.2=0.6 and 0.5+0.5-0.2=0.8 -> 1.4 / 2 = 0.7
    assert pc_loss(logits[:1], torch.tensor([2]), xi=0.5).item() == pytest.approx(0.25, abs=1e-12)
    assert pc_loss(logits[1:], torch.tensor([0]), xi=0.5).item() == pytest.approx(0.7, abs=1e-12)
    # batch mean: (0.25 + 0.7) / 2
    assert pc_loss(logits, torch.tensor([2, 0]), xi=0.5).item() == pytest.approx(0.475, abs=1e-12)
    # y=2, xi=0.1: both hinges inactive (0.2+0.1<0.5, 0.3+0.1<0.5) -> 0
    assert pc_loss(logits[:1], torch.tensor([2]), xi=0.1).item() == 0.0
    # y=2, xi=0.25: only class 1 active: 0.3+0.25-0.5 = 0.05 -> 0.05/2 = 0.025
    assert pc_loss(logits[:1], torch.tensor([2]), xi=0.25).item() == pytest.approx(0.025, abs=1e-12)
    # default xi=0.995, y=0: (0.3+0.995-0.2) + (0.5+0.995-0.2) = 2.39 -> 1.195
    assert pc_loss(logits[1:], torch.tensor([0])).item() == pytest.approx(1.195, abs=1e-12)


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("xi", [0.995, 0.3])
def test_pc_loss_matches_official_formula(k, xi):
    g = torch.Generator().manual_seed(k)
    b = 32
    logits = 3 * torch.randn(b, k, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (b,), generator=g)
    p = torch.softmax(logits, dim=1)
    p_y = p.gather(1, target[:, None])
    official = (torch.relu(xi + p - p_y).sum() / b - xi) / (k - 1)
    assert pc_loss(logits, target, xi=xi).item() == pytest.approx(official.item(), abs=1e-12)


def test_logit_constraint_hand_values():
    logits = torch.tensor([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]], dtype=torch.float64)
    e = math.e
    # y=2, a_y=4. hard: j=1 (a=2) -> 4-2 = 2.
    # soft: w = softmax([1, 2]) = [1/(1+e), e/(1+e)], d = 3*w0 + 2*w1 = (3+2e)/(1+e) ~ 2.268941
    t = torch.tensor([2])
    assert logit_constraint(logits[:1], t, mode="hard").item() == pytest.approx(2.0, abs=1e-12)
    soft = logit_constraint(logits[:1], t, mode="soft").item()
    assert soft == pytest.approx((3 + 2 * e) / (1 + e), abs=1e-12)
    assert soft == pytest.approx(2.268941, abs=1e-6)
    assert logit_constraint(logits[:1], t).item() == soft  # soft is the default
    # y=0, a_y=1 is below every false logit -> 0 in both modes
    t0 = torch.tensor([0])
    assert logit_constraint(logits[1:], t0, mode="hard").item() == 0.0
    assert logit_constraint(logits[1:], t0, mode="soft").item() == 0.0
    # batch mean
    both = logit_constraint(logits, torch.tensor([2, 0]), mode="hard").item()
    assert both == pytest.approx(1.0, abs=1e-12)


def test_soft_weights_exclude_true_class_even_for_huge_logits():
    # The official -1e3 offset would leak weight to a true logit of 1e4; -inf masking does not.
    logits = torch.tensor([[1e4, 0.0, -1.0]], dtype=torch.float64)
    w = torch.softmax(torch.tensor([0.0, -1.0], dtype=torch.float64), dim=0)
    expected = w[0] * 1e4 + w[1] * (1e4 + 1)
    got = logit_constraint(logits, torch.tensor([0]), mode="soft")
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_pclc_is_pc_plus_lambda_lc():
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    target = torch.randint(0, 10, (16,), generator=g)
    for lc in ("soft", "hard"):
        expected = pc_loss(logits, target, xi=0.9) + 0.2 * logit_constraint(logits, target, mode=lc)
        got = pclc_loss(logits, target, xi=0.9, lam=0.2, lc=lc)
        assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    default = pc_loss(logits, target) + 0.05 * logit_constraint(logits, target, mode="soft")
    assert pclc_loss(logits, target).item() == pytest.approx(default.item(), abs=1e-12)


def test_gce_hand_value_and_sign():
    # K=3, p = [0.5, 0.25, 0.25], y=0, alpha=0.5:
    # q = [0.5, 0.5] -> sum q log q = log 0.5 = -0.693147; guide (0.5)^0.5 = 0.707107
    # loss = 0.707107 * (-0.693147) / 1.098612 = -0.490129 / 1.098612 = -0.446135
    logits = _logits_from_probs([0.5, 0.25, 0.25])
    got = gce_loss(logits, torch.tensor([0]), alpha=0.5).item()
    expected = math.sqrt(0.5) * math.log(0.5) / math.log(3)
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(-0.446135, abs=1e-6)
    assert got < 0  # negative complement entropy, scaled


def test_gce_matches_official_code_structure():
    g = torch.Generator().manual_seed(1)
    k, b, alpha = 10, 8, 0.333
    logits = 2 * torch.randn(b, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=g)
    # official GCE forward (henry8527/GCE), with K from the logits
    y_hat = F.softmax(logits, dim=1)
    yg = torch.gather(y_hat, 1, y[:, None])
    px = y_hat / ((1 - yg) + 1e-7)
    out = px * torch.log(px + 1e-10) * torch.ones_like(y_hat).scatter_(1, y[:, None], 0)
    official = ((yg + 1e-7) ** alpha).squeeze() * out.sum(dim=1)
    official = official.sum() / b / math.log(k)
    assert gce_loss(logits, y, alpha=alpha).item() == pytest.approx(official.item(), abs=1e-12)


def test_ce_loss():
    logits = _logits_from_probs([0.2, 0.3, 0.5])
    assert ce_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.3), abs=1e-12)


# --------------------------------------------------------------------------- gradients


def _random_smooth_input(k=6, b=5, seed=0):
    """Random float64 logits away from every hinge kink and argmax tie (asserted)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64)
    target = torch.randint(0, k, (b,), generator=g)
    return logits, target


def _assert_away_from_kinks(logits, target, xi):
    p = torch.softmax(logits, dim=1)
    mask = F.one_hot(target, logits.shape[1]).bool()
    a_y = logits.gather(1, target[:, None])
    pc_margin = (p + xi - p.gather(1, target[:, None])).abs().masked_fill(mask, math.inf)
    lc_margin = (a_y - logits).abs().masked_fill(mask, math.inf)
    top2 = logits.masked_fill(mask, -math.inf).topk(2, dim=1).values
    assert pc_margin.min() > 1e-3
    assert lc_margin.min() > 1e-3
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-3


GRAD_CASES = {
    "ce": ce_loss,
    "gce": functools.partial(gce_loss, alpha=0.333),
    "pc_xi0.995": functools.partial(pc_loss, xi=0.995),
    "pc_xi0.3": functools.partial(pc_loss, xi=0.3),  # mix of active and inactive hinges
    "lc_soft": functools.partial(logit_constraint, mode="soft"),
    "lc_hard": functools.partial(logit_constraint, mode="hard"),
    "pclc_soft": functools.partial(pclc_loss, xi=0.995, lam=0.05, lc="soft"),
    "pclc_hard": functools.partial(pclc_loss, xi=0.3, lam=0.5, lc="hard"),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradcheck(name):
    fn = GRAD_CASES[name]
    logits, target = _random_smooth_input(seed=3)
    logits = 2 * logits
    for xi in (0.995, 0.3):
        _assert_away_from_kinks(logits, target, xi)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fn(z, target), (x,), eps=1e-6, atol=1e-6)


def test_pc_hinge_derivative_matches_eq7():
    # d(p_y' + xi - p_y)/d a_y = -p_y (1 - p_y + p_y')   (paper Eq. 7)
    g = torch.Generator().manual_seed(7)
    a = torch.randn(10, generator=g, dtype=torch.float64, requires_grad=True)
    y, y_prime, xi = 3, 8, 0.995
    p = torch.softmax(a, dim=0)
    (grad,) = torch.autograd.grad(p[y_prime] + xi - p[y], a)
    p = p.detach()
    expected = -p[y] * (1 - p[y] + p[y_prime])
    assert grad[y].item() == pytest.approx(expected.item(), abs=1e-12)


def test_soft_weights_carry_gradient():
    # Weights are not detached: soft LC gradient w.r.t. a false logit includes dw/da terms.
    logits = torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    logit_constraint(logits, torch.tensor([0]), mode="soft").backward()
    w = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), dim=0)
    h = torch.tensor([2.0, 3.0], dtype=torch.float64)  # a_y - a_k
    d = (w * h).sum()
    # d/d a_1 = -w_1 + w_1 (h_1 - d)
    expected = -w[0] + w[0] * (h[0] - d)
    assert logits.grad[0, 1].item() == pytest.approx(expected.item(), abs=1e-12)
    assert logits.grad[0, 0].item() == pytest.approx(1.0, abs=1e-12)  # sum of weights


# --------------------------------------------------------------------------- behaviour


def test_soft_and_hard_lc_agree_when_one_false_logit_dominates():
    g = torch.Generator().manual_seed(11)
    b, k = 64, 10
    logits = 2 * torch.randn(b, k, generator=g)
    target = torch.randint(0, k, (b,), generator=g)
    rows = torch.arange(b)
    j = (target + 1 + torch.randint(0, k - 1, (b,), generator=g)) % k  # a false class
    logits[rows, j] = logits.max(dim=1).values + 30.0
    # half the samples: true logit above the dominant one (positive d), half below (d = 0)
    u = 5 * torch.rand(b, generator=g)
    offset = torch.where(rows % 2 == 0, u, -u)
    logits[rows, target] = logits[rows, j] + offset
    soft = logit_constraint(logits, target, mode="soft").item()
    hard = logit_constraint(logits, target, mode="hard").item()
    assert hard > 0.5
    assert soft == pytest.approx(hard, abs=1e-4)


def test_pc_loss_zero_with_zero_gradient_when_gap_exceeds_xi():
    logits = torch.tensor([[20.0, 0.0, 0.0], [-1.0, 25.0, 2.0]], requires_grad=True)
    target = torch.tensor([0, 1])
    p = torch.softmax(logits.detach(), dim=1)
    p_y = p[torch.arange(2), target]
    gaps = p_y[:, None] - p
    gaps[torch.arange(2), target] = math.inf
    assert gaps.min() > 0.995
    loss = pc_loss(logits, target, xi=0.995)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_minimising_gce_flattens_false_classes_and_keeps_argmax():
    target = torch.tensor([0])
    logits = torch.tensor([[4.0, 3.0, 1.0, -1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    h0 = _complement_entropy(logits.detach(), target).item()
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        gce_loss(logits, target).backward()
        opt.step()
        assert logits.detach().argmax(dim=1).item() == 0
    h1 = _complement_entropy(logits.detach(), target).item()
    assert h1 > h0 + 0.1
    assert h1 <= math.log(4) + 1e-9


@pytest.mark.parametrize("k", [10, 100, 200])
@pytest.mark.parametrize("name", ["ce", "gce", "pclc_soft", "pclc_hard", "lc_soft", "pc"])
def test_any_k_and_huge_logits_are_finite(k, name):
    fns = {
        "ce": ce_loss,
        "gce": gce_loss,
        "pclc_soft": functools.partial(pclc_loss, lc="soft"),
        "pclc_hard": functools.partial(pclc_loss, lc="hard"),
        "lc_soft": logit_constraint,
        "pc": pc_loss,
    }
    g = torch.Generator().manual_seed(k)
    b = 8
    target = torch.randint(0, k, (b,), generator=g)
    for scale in (1.0, 1e4):
        logits = (scale * torch.randn(b, k, generator=g)).requires_grad_(True)
        loss = fns[name](logits, target)
        loss.backward()
        assert loss.dim() == 0
        assert torch.isfinite(loss)
        assert torch.isfinite(logits.grad).all()


def test_int32_targets_accepted():
    logits = torch.randn(4, 10)
    t = torch.tensor([1, 2, 3, 9])
    assert pclc_loss(logits, t.int()).item() == pytest.approx(pclc_loss(logits, t).item())


# --------------------------------------------------------------------------- registry


def test_registry_and_get_loss():
    assert set(LOSSES) == {"ce", "gce", "pclc"}
    logits = torch.randn(6, 10, dtype=torch.float64)
    target = torch.randint(0, 10, (6,))
    fn = get_loss("pclc", xi=0.9, lam=0.1, lc="hard")
    assert isinstance(fn, functools.partial)
    assert fn(logits, target).item() == pclc_loss(logits, target, xi=0.9, lam=0.1, lc="hard").item()
    assert get_loss("ce")(logits, target).item() == ce_loss(logits, target).item()
    assert get_loss("gce", alpha=0.5)(logits, target).item() == gce_loss(logits, target, 0.5).item()


def test_get_loss_unknown_name_lists_names():
    with pytest.raises(ValueError, match=r"unknown loss 'foo'.*'ce'.*'gce'.*'pclc'"):
        get_loss("foo")


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("pclc", {"xi": 0.0}, "xi"),
        ("pclc", {"xi": 1.5}, "xi"),
        ("pclc", {"lam": -0.1}, "lam"),
        ("pclc", {"lc": "medium"}, "lc"),
        ("gce", {"alpha": 0.0}, "alpha"),
        ("gce", {"alpha": -1.0}, "alpha"),
        ("ce", {"xi": 0.5}, "xi"),  # parameter the loss does not take
        ("pclc", {"alpha": 0.3}, "alpha"),
    ],
)
def test_get_loss_validates_params(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name, **params)


# --------------------------------------------------------------------------- validation

_L = torch.randn(4, 10)
_T = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pc_loss(_L, _T, xi=0.0), "xi"),
        (lambda: pc_loss(_L, _T, xi=-0.5), "xi"),
        (lambda: pc_loss(_L, _T, xi=1.01), "xi"),
        (lambda: pc_loss(_L, _T, xi=float("nan")), "xi"),
        (lambda: pclc_loss(_L, _T, xi=2.0), "xi"),
        (lambda: pclc_loss(_L, _T, lam=-1e-3), "lam"),
        (lambda: pclc_loss(_L, _T, lc="sft"), "lc"),
        (lambda: gce_loss(_L, _T, alpha=0.0), "alpha"),
        (lambda: gce_loss(_L, _T, alpha=-0.3), "alpha"),
        (lambda: logit_constraint(_L, _T, mode="max"), "mode"),
        (lambda: pc_loss(_L, torch.tensor([0, 1, 2, 10])), "target"),
        (lambda: pclc_loss(_L, torch.tensor([0, -1, 2, 3])), "target"),
        (lambda: ce_loss(_L, torch.tensor([0, 1, 2, 10])), "target"),
        (lambda: gce_loss(_L, torch.tensor([0, 1, 2, 99])), "target"),
        (lambda: logit_constraint(_L, torch.tensor([0, 1, 2, 10])), "target"),
        (lambda: pc_loss(_L.reshape(4, 2, 5), _T), "logits"),
        (lambda: pc_loss(_L[0], _T), "logits"),
        (lambda: pc_loss(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)), "K >= 2"),
        (lambda: pclc_loss(_L, _T[:3]), "batch size"),
        (lambda: gce_loss(_L[:2], _T), "batch size"),
        (lambda: pc_loss(_L, _T.float()), "target"),
        (lambda: pc_loss(_L, _T[:, None]), "target"),
    ],
)
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "name,params", [("ce", {}), ("gce", {"alpha": 0.5}), ("pclc", {"xi": 0.9, "lc": "hard"}), ("pclc", {})]
)
def test_unchecked_losses_equal_the_checked_ones(name, params):
    logits = torch.randn(16, 7, dtype=torch.float64)
    target = torch.randint(0, 7, (16,))
    checked = get_loss(name, **params)(logits, target)
    fast = get_loss(name, check_inputs=False, **params)(logits, target)
    assert torch.allclose(checked, fast, rtol=0, atol=1e-12)
