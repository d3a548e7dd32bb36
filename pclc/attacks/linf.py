"""L-inf building blocks: the one projection and the one sign-gradient PGD, for adversarial training and
the audit, and the seeding every attack runs under."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Exact projection onto ``[x - eps, x + eps] ∩ [0, 1]`` (``eps`` a number or broadcastable per example)."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch's RNGs for the block and restore them afterwards (reproducible, no side effects)."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin a_y - max_{k != y} a_k (negative: misclassified)."""
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return logits.gather(1, y[:, None]).squeeze(1) - other


def ce_loss(logits, y, temperature=1.0):
    """Per-example CE of ``logits / temperature``."""
    return F.cross_entropy(logits / temperature, y, reduction="none")


def margin_loss(logits, y, temperature=1.0):
    """The C&W margin max_{k!=y} a_k - a_y (no softmax: cannot saturate)."""
    return -margin(logits, y)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (x.dim() - 1)))


def sign_pgd(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    nb_iter: int,
    step: float | torch.Tensor,
    loss: Callable = ce_loss,
    temperature=1.0,
    rand_init: bool = True,
    generator: torch.Generator | None = None,
    decay: bool = False,
    keep_first: bool = False,
    compact_every: int = 10,
) -> torch.Tensor:
    """Sign-gradient ascent on ``loss(logits, y, temperature).sum()`` in the eps-ball ∩ [0, 1].

    ``eps``/``step``: numbers, or tensors of shape (B,) (one per example: adversarial training).
    ``rand_init``: a uniform start in the ball (from ``generator`` when given, else torch's RNG).
    ``decay``: step ``step * (1 + cos(pi t / nb_iter)) / 2`` (cosine to 0), else constant.
    ``keep_first``: return, per example, the first iterate that fools ``model`` (else the last); every
    ``compact_every`` steps the fooled examples then leave the batch (one host sync each time): the
    trajectories are per example, so this changes no result, only the cost (scalar eps and step only).
    """
    per_example = isinstance(eps, torch.Tensor)
    e = _bcast(eps, x).to(x) if per_example else eps
    a0 = _bcast(step, x).to(x) if isinstance(step, torch.Tensor) else step
    x_adv = x.detach()
    if rand_init:
        noise = torch.rand(x.shape, generator=generator).to(x.device) if generator is not None else torch.rand_like(x)
        x_adv = project(x_adv + (noise * 2 - 1) * e, x, e)
    if keep_first and per_example:
        raise ValueError("sign_pgd: keep_first needs a scalar eps")
    if keep_first:
        best, fooled = x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        idx = torch.arange(len(x), device=x.device)  # the examples still attacked
    xs, ys, temp = x, y, temperature
    per_example_t = isinstance(temperature, torch.Tensor) and temperature.dim() > 0
    for t in range(int(nb_iter)):
        if keep_first and compact_every and t and t % int(compact_every) == 0:
            keep = ~fooled[idx]
            if not bool(keep.all()):
                idx, x_adv, xs, ys = idx[keep], x_adv[keep], xs[keep], ys[keep]
                temp = temp[keep] if per_example_t else temp
                if len(idx) == 0:
                    break
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if keep_first:
            new = (logits.argmax(1) != ys) & ~fooled[idx]
            best[idx] = torch.where(_bcast(new, xs), x_adv.detach(), best[idx])
            fooled[idx] = fooled[idx] | new
        (grad,) = torch.autograd.grad(loss(logits, ys, temp).sum(), x_adv)
        a = a0 * 0.5 * (1 + math.cos(math.pi * t / nb_iter)) if decay else a0
        x_adv = project(x_adv.detach() + a * grad.sign(), xs, e)
    if not keep_first:
        return x_adv.detach()
    out = best.clone()
    out[idx] = torch.where(_bcast(fooled[idx], xs), best[idx], x_adv.detach())
    return out


def _ce_sum(logits, y, temperature=1.0):
    return F.cross_entropy(logits, y, reduction="sum")


@contextlib.contextmanager
def crafting(model: nn.Module):
    """Craft training examples with inference-mode BatchNorm/Dropout and no weight gradients; the model's mode
    and flags are restored after, whatever happens."""
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)


class HalfAdversarial:
    """Make the first ``fraction`` of every training batch adversarial (Table 5: adversarial and clean 1:1;
    PGD-AT and fast AT, configs/trainer/{pgd_at,fast_at}.yaml: every example).

    eps is drawn per example uniformly from ``eps_range``; FGSM is one step of eps, PGD ``nb_iter`` steps of
    ``rel_eps_iter * eps`` (configs/trainer/adv_pgd.yaml: 2.5 eps / 5, Madry et al.'s rule; the paper gives
    only the steps). Crafted with CE on the model in eval mode, without weight gradients.
    """

    def __init__(
        self,
        attack: str,
        eps_range,
        nb_iter: int = 1,
        rel_eps_iter: float | None = None,
        rand_init: bool = False,
        fraction: float = 0.5,
    ):
        if attack not in ("fgsm", "pgd"):
            raise ValueError(f"adversarial training supports fgsm or pgd, got {attack!r}")
        lo, hi = (float(v) for v in eps_range)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"adversarial eps_range must satisfy 0 <= lo <= hi <= 1, got {list(eps_range)}")
        if not 0 < fraction <= 1:
            raise ValueError(f"adversarial fraction must be in (0, 1], got {fraction}")
        if attack == "pgd" and (int(nb_iter) < 1 or rel_eps_iter is None or not float(rel_eps_iter) > 0):
            raise ValueError(f"adversarial PGD needs nb_iter >= 1 and rel_eps_iter > 0, got {nb_iter}, {rel_eps_iter}")
        self.attack, self.lo, self.hi = attack, lo, hi
        self.nb_iter = 1 if attack == "fgsm" else int(nb_iter)
        self.rel_eps_iter = 1.0 if attack == "fgsm" else float(rel_eps_iter)
        self.rand_init, self.fraction = bool(rand_init), float(fraction)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        n = int(round(len(x) * self.fraction))
        if n == 0:
            return x
        eps = (self.lo + (self.hi - self.lo) * torch.rand(n, generator=generator)).to(x.device)
        step = eps if self.attack == "fgsm" else eps * self.rel_eps_iter
        with crafting(model):
            adv = sign_pgd(
                model,
                x[:n],
                y[:n],
                eps,
                self.nb_iter,
                step,
                _ce_sum,
                rand_init=self.rand_init,
                generator=generator,
            )
        return torch.cat([adv, x[n:]])


class Trades:
    """TRADES (Zhang et al. 2019), beyond the paper (issue 31): the loss on clean examples plus
    ``beta * KL(p(x) || p(x_adv))``, ``x_adv`` maximising that KL: ``nb_iter`` sign steps of ``rel_eps_iter * eps``
    from ``x + 0.001 * N(0, 1)``, crafted in eval mode without weight gradients, as the TRADES code does.
    ``__call__`` returns the clean and adversarial batches stacked; :meth:`loss` splits the logits again."""

    def __init__(self, attack: str, eps_range, beta: float, nb_iter: int, rel_eps_iter: float, **unused):
        lo, hi = (float(v) for v in eps_range)
        if attack != "trades" or lo != hi or not 0 < hi <= 1:
            raise ValueError(f"TRADES takes one eps in (0, 1] (eps_range [e, e]), got {list(eps_range)}")
        if not float(beta) >= 0 or int(nb_iter) < 1 or not float(rel_eps_iter) > 0:
            raise ValueError(
                f"TRADES needs beta >= 0, nb_iter >= 1, rel_eps_iter > 0; got {beta}, {nb_iter}, {rel_eps_iter}"
            )
        if unused.get("fraction", 1.0) != 1.0:
            raise ValueError("TRADES regularises every example: fraction must be 1.0")
        self.eps, self.beta, self.nb_iter, self.step = hi, float(beta), int(nb_iter), float(rel_eps_iter) * hi

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        with crafting(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x), 1)
            noise = (
                torch.randn(x.shape, generator=generator).to(x.device) if generator is not None else torch.randn_like(x)
            )
            x_adv = (x + 0.001 * noise).detach()
            for _ in range(self.nb_iter):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = project(x_adv.detach() + self.step * grad.sign(), x, self.eps)
        return torch.cat([x, x_adv.detach()])

    def loss(self, loss_fn: Callable, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training loss, the clean logits): ``loss_fn`` on the clean half plus beta times the batch-mean KL."""
        clean, adv = logits[: len(y)], logits[len(y) :]
        kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
        return loss_fn(clean, y) + self.beta * kl, clean
