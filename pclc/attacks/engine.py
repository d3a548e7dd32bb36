"""Our engine for the paper's attacks: advertorch 0.2.3's exact update rules, computed with less work.

Bitwise the same adversarial examples as advertorch (``tests/test_engine.py``; the reference stays
selectable with ``attack.backend=advertorch``), from three levers that change no number:

- **chunks**: the model runs on row blocks of ``chunk`` examples, which fit a CPU's caches better than whole
  batches (measured in ``results/profile-cpu.md``);
- **frozen rows**: an example of BIM/PGD/MIM whose whole state (perturbation, and MIM's momentum) comes
  back bit-for-bit unchanged from a step is at a fixed point of a deterministic per-example map, so every
  later step returns it again: it leaves the batch (saturated CE examples, whose input gradient is exactly
  zero, leave after one step); in C&W, a row whose gradient and Adam moments are exactly zero gets a zero
  update for the rest of its search step (rows misclassified at the start), and skips the model;
- **no Python per example** (C&W's binary search is vectorised) and constants computed once.

Both levers rest on one property: a row's logits and input gradient do not depend on the other rows of
its batch. :func:`rows_independent` checks it on the batch at hand before every attack (oneDNN/MKL on
CPU hold it for blocks of >= 6 rows; we never run fewer than ``MIN_ROWS``); where it fails the engine runs
whole batches, like advertorch, and is still exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pclc.metrics import MIN_ROWS, PROBE_ROWS, default_chunk, forward_rows_independent, row_blocks  # noqa: F401
from pclc.progress import bar

_ONE_MINUS_EPS = 0.999999  # advertorch's C&W constants
_TARGET_MULT = 10000.0
_L2_UPPER = 1e10
_UPPER_CHECK = 1e9


def ce_grad(model, x: torch.Tensor, y: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """The input gradient of the summed cross-entropy (advertorch's ``CrossEntropyLoss(reduction="sum")``)."""
    out = []
    for a, b in row_blocks(len(x), chunk):
        xa = x[a:b].detach().requires_grad_()
        loss = F.cross_entropy(model(xa), y[a:b], reduction="sum")
        out.append(torch.autograd.grad(loss, xa)[0])
    return out[0] if len(out) == 1 else torch.cat(out)


def rows_independent(model, x: torch.Tensor, y: torch.Tensor, chunk: int | None) -> bool:
    """Whether logits and input gradients of up to ``PROBE_ROWS`` examples come out bit-for-bit the same in
    one batch, in ``chunk``-row blocks and in a ``MIN_ROWS`` block taken from the middle."""
    n = min(len(x), PROBE_ROWS)
    if n < 2 * MIN_ROWS:
        return False
    xs, ys = x[:n], y[:n]
    if not forward_rows_independent(model, xs, chunk or n // 2):  # the logits first (pclc.metrics)
        return False
    g = ce_grad(model, xs, ys, None)
    mid = slice(n // 2, n // 2 + MIN_ROWS)
    return torch.equal(g, ce_grad(model, xs, ys, chunk or n // 2)) and torch.equal(
        g[mid], ce_grad(model, xs[mid], ys[mid], None)
    )


def _all_zero(t: torch.Tensor) -> torch.Tensor:
    """Per row: every element is 0.0 or -0.0 (NaN is not): one pass, no boolean copy of ``t``."""
    return t.flatten(1).abs().amax(1) == 0


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row: every element of ``a`` has the bits of ``b`` (so 0.0 and -0.0 differ)."""
    bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return (a.view(bits) == b.view(bits)).flatten(1).all(1)


def fgsm(model, x, y, eps: float, chunk: int | None) -> torch.Tensor:
    """advertorch ``GradientSignAttack``: ``clamp(x + eps * sign(grad), 0, 1)``."""
    free = rows_independent(model, x, y, chunk)
    step = ce_grad(model, x, y, chunk if free else None).sign()
    step *= eps
    return torch.clamp(torch.clamp(x + step, min=0.0), max=1.0)


def sign_iterations(
    model,
    x,
    y,
    eps: float,
    nb_iter: int,
    eps_iter: float,
    chunk: int | None,
    delta: torch.Tensor | None = None,
    decay: float | None = None,
    trace: list | None = None,
) -> torch.Tensor:
    """advertorch's L-inf iterative attacks on CE, final iterate: ``perturb_iterative`` (BIM; PGD from
    ``delta``) or, with ``decay``, ``MomentumIterativeAttack`` (MIM: L1-normalised gradients accumulate
    in ``g``, the step follows ``sign(g)``, and the result is ``x + delta`` unclamped, as advertorch's).
    ``trace``: a list that receives, for the start and after every step, each example's CE loss and whether it is
    misclassified (the attack-failure indicators; whole batches every step, the same final iterate)."""
    delta = torch.zeros_like(x) if delta is None else delta.clone()
    g = torch.zeros_like(x) if decay is not None else None
    free = trace is None and rows_independent(model, x, y, chunk)

    def record():
        with torch.no_grad():
            adv = x + delta if g is not None else torch.clamp(torch.clamp(x + delta, min=0.0), max=1.0)
            logits = model(adv)
            trace.append((F.cross_entropy(logits, y, reduction="none").cpu(), (logits.argmax(1) != y).cpu()))

    if trace is not None:
        record()
    active = torch.arange(len(x), device=x.device)
    for _ in range(nb_iter):
        if len(active) == 0:
            break
        rows = active if free and len(active) >= MIN_ROWS else torch.arange(len(x), device=x.device)
        xr, dr = x[rows], delta[rows]
        grad = ce_grad(model, xr + dr, y[rows], chunk if free else None)
        if g is None:
            step = grad.sign()
            step *= eps_iter
            new = dr + step
        else:
            norm = grad.abs().pow(1).view(len(rows), -1).sum(dim=1).pow(1.0)
            norm = torch.max(norm, torch.ones_like(norm) * 1e-6)
            gr = decay * g[rows] + grad * (1.0 / norm).view(-1, *([1] * (x.dim() - 1)))
            step = torch.sign(gr)
            step *= eps_iter
            new = dr + step
        new = torch.clamp(torch.clamp(new, min=-eps), max=eps)
        new = torch.clamp(torch.clamp(xr + new, min=0.0), max=1.0) - xr
        if free:
            still = _same_bits(new, dr) if g is None else _same_bits(new, dr) & _same_bits(gr, g[rows])
        delta[rows] = new
        if g is not None:
            g[rows] = gr
        if trace is not None:
            record()
        if free:  # rows whose state did not change are fixed points: they leave the batch
            moving = rows[~still]
            active = moving if len(rows) == len(active) else active[torch.isin(active, moving)]
    if g is not None:
        return x + delta
    return torch.clamp(torch.clamp(x + delta, min=0.0), max=1.0)


def pgd_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """advertorch's L-inf random start (same draws from the default generator): uniform in [-eps, eps]^d,
    then clipped to the image domain."""
    delta = torch.zeros_like(x).uniform_(-1, 1)
    delta *= eps
    return torch.clamp(torch.clamp(x + delta, min=0.0), max=1.0) - x


def cw_l2(
    model,
    x,
    y,
    num_classes: int,
    chunk: int | None,
    *,
    confidence: float,
    learning_rate: float,
    binary_search_steps: int,
    max_iterations: int,
    abort_early: bool,
    initial_const: float,
) -> torch.Tensor:
    """advertorch ``CarliniWagnerL2Attack`` (untargeted, [0, 1]): per binary-search step a fresh Adam on
    the tanh-space perturbation, the batch's summed loss checked every ``max_iterations // 10`` steps for
    the early abort, the smallest successful L2 kept; constants bisected (x10 while no success)."""
    n = len(x)
    lower, upper = x.new_zeros(n), x.new_ones(n) * 1e10
    const = torch.ones_like(y).float() * initial_const
    best_l2 = torch.full((n,), _L2_UPPER, dtype=torch.float32, device=x.device)
    best = x.detach().clone()
    r = torch.clamp((x - 0.0) / (1.0 - 0.0), min=0.0, max=1.0) * 2 - 1
    r = r * _ONE_MINUS_EPS
    x_atanh = torch.log((1 + r) / (1 - r)) * 0.5
    onehot = x.new_zeros((n, num_classes), dtype=torch.long).scatter_(1, y.view(-1, 1), 1).float()
    others, big = 1.0 - onehot, onehot * _TARGET_MULT  # advertorch's terms that do not change
    target = torch.tanh(x_atanh) * 0.5 * 1.0 + 0.5
    rows = torch.arange(n, device=x.device)
    free = rows_independent(model, x, y, chunk)
    blocks = row_blocks(n, chunk if free else None)
    check_every = max_iterations // 10 or 1
    search = bar(binary_search_steps, "C&W search steps", unit="step", nested=True)  # under the cell's bar
    for outer in range(binary_search_steps):
        delta = torch.nn.Parameter(torch.zeros_like(x))
        opt = torch.optim.Adam([delta], lr=learning_rate)
        cur_l2 = torch.full((n,), _L2_UPPER, dtype=torch.float32, device=x.device)
        cur_label = torch.full((n,), -1, dtype=torch.long, device=x.device)
        prev = 1e6
        if binary_search_steps >= 10 and outer == binary_search_steps - 1:
            const = upper
        # A row whose gradient and Adam moments are all exactly zero gets a zero update: it is a fixed point
        # for the rest of this search step (a row misclassified at the start, say), so its logits, term and
        # gradient are kept from the step it froze and the model skips it.
        frozen = torch.zeros(n, dtype=torch.bool, device=x.device)
        out_all = term_all = grad_all = None
        for it in range(max_iterations):
            opt.zero_grad()
            adv = torch.tanh(delta + x_atanh) * 0.5 * 1.0 + 0.5
            active = (~frozen).nonzero().squeeze(1)
            part = free and len(active) < n and len(active) >= MIN_ROWS
            src, oh, ot, bg, cst = (
                (adv.detach()[active], onehot[active], others[active], big[active], const[active])
                if part
                else (adv.detach(), onehot, others, big, const)
            )
            # The classification term is a sum of per-example terms, so each block runs forward and backward
            # at once (its activations stay in cache); its value is summed over the whole batch as advertorch's.
            outs, terms, grads = [], [], []
            for a, b in row_blocks(len(src), chunk) if part else blocks:
                ab = src[a:b].detach().requires_grad_()
                out = model(ab)
                real = (oh[a:b] * out).sum(dim=1)
                other = (ot[a:b] * out - bg[a:b]).max(1)[0]
                term = torch.clamp(real - other + confidence, min=0.0)
                grads.append(torch.autograd.grad(torch.sum(cst[a:b] * term), ab)[0])
                outs.append(out.detach())
                terms.append(term.detach())
            if part:
                out_all[active], term_all[active], grad_all[active] = (
                    torch.cat(outs),
                    torch.cat(terms),
                    torch.cat(grads),
                )
            else:
                out_all, term_all, grad_all = torch.cat(outs), torch.cat(terms), torch.cat(grads)
            out, term = out_all, term_all
            l2 = ((adv - target) ** 2).view(n, -1).sum(dim=1)
            loss2 = l2.sum()
            torch.autograd.backward([loss2, adv], [None, grad_all])  # adv: model path + L2 path
            loss_value = (torch.sum(const * term) + loss2).item()
            if free:
                frozen = _all_zero(delta.grad)
                state = opt.state.get(delta)
                if state and bool(frozen.any()):  # the moments of the rows whose gradient is zero
                    idx = frozen.nonzero().squeeze(1)
                    frozen[idx] = _all_zero(state["exp_avg"][idx]) & _all_zero(state["exp_avg_sq"][idx])
            opt.step()
            if abort_early and it % check_every == 0:
                if loss_value > prev * _ONE_MINUS_EPS:
                    break
                prev = loss_value
            l2, adv = l2.detach(), adv.detach()
            label = torch.max(out, 1)[1]
            shifted = out.clone()
            shifted[rows, y] += confidence
            success = torch.argmax(shifted, dim=1) != y
            mask = (l2 < cur_l2) & success
            cur_l2[mask], cur_label[mask] = l2[mask], label[mask]
            mask = (l2 < best_l2) & success
            best_l2[mask] = l2[mask]
            best[mask] = adv[mask]
        won = (cur_label != -1) & (cur_label != y)
        upper = torch.where(won, torch.minimum(upper, const), upper)
        lower = torch.where(won, lower, torch.maximum(lower, const))
        bounded = upper < _UPPER_CHECK
        const = torch.where(bounded, (lower + upper) / 2, torch.where(won, const, const * 10))
        search.set_postfix(succeeded=int((best_l2 < _L2_UPPER).sum()), refresh=False)
        search.update(1)
    search.close()
    return best
