"""The attack registry and its checks: :data:`ATTACKS`, :func:`register_attack`, :func:`build_attack` (kept out
of the package's ``__init__``, so that the attack modules register themselves without importing it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from pclc.attacks.linf import project
from pclc.registry import Registry, params_of

# Call-time arguments: the model and data, the L-inf radius (None for C&W) and the batch's seed.
ATTACKS = Registry("attack", positional=("model", "x", "y", "eps", "seed"))

# The vocabulary's value ranges: counts are integers >= 1, step sizes and rates are > 0.
_COUNTS = (
    "nb_iter",
    "max_iterations",
    "binary_search_steps",
    "nb_sample",
    "max_batch_size",
    "batch_size",
    "restarts",
    "queries",
    "targets",
)
_POSITIVE = ("eps_iter", "rel_eps_iter", "lr", "learning_rate", "delta", "initial_const", "target_margin")
_NON_NEGATIVE = ("confidence", "decay_factor")


def check_budget(params: Mapping[str, Any]) -> None:
    """Refuse budgets that would silently report 100% robustness (0 steps, a step of 0 or below)."""
    for k, v in params.items():
        if k in _COUNTS and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"attack parameter {k}={v!r} must be an integer >= 1")
        if (
            k in _POSITIVE
            and v is not None
            and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"))
        ):
            raise ValueError(f"attack parameter {k}={v!r} must be a finite number > 0")
        if k in _NON_NEGATIVE and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
            raise ValueError(f"attack parameter {k}={v!r} must be a number >= 0")
    if "eps_iter" in params or "rel_eps_iter" in params:
        given = [k for k in ("eps_iter", "rel_eps_iter") if params.get(k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an iterative attack takes exactly one of eps_iter (absolute step) or rel_eps_iter "
                f"(step as a fraction of eps); got {given or 'neither'}"
            )


# Optional packages an attack imports when it runs, and how to install each (see pyproject's [audit] extra).
_INSTALL = {
    "torchattacks": "pip install --no-deps torchattacks==3.5.1 (what make setup does)",
    "pyautoattack": "pip install --no-deps pyautoattack==0.2.0 (what make setup does)",
}


def check_installed(attack: str, packages: tuple[str, ...]) -> None:
    """Refuse, before any work, an attack whose package is not installed (it would fail after the others ran)."""
    import importlib.util

    for pkg in packages:
        if importlib.util.find_spec(pkg) is None:
            raise ValueError(
                f"attack {attack} needs the {pkg} package, which is not installed: {_INSTALL.get(pkg, pkg)}"
            )


def register_attack(
    name: str, *, bounded: bool, passes: Callable[[dict], float], requires: tuple[str, ...] = (), **meta
):
    """Register ``fn(model, x, y, eps, seed, **params) -> x_adv`` (or ``(x_adv, {name: per-example tensor})``);
    ``passes(params)``: its cost per example;
    ``requires``: optional packages it imports (checked whenever a config naming it is checked)."""

    def check(params):
        check_budget(params)
        check_installed(name, requires)

    return ATTACKS.register(name, bounded=bounded, passes=passes, check=check, requires=requires, **meta)


def check_eps(eps: float | None, name: str) -> None:
    if eps is None:
        return
    if not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"attack {name}: eps={eps} is outside [0, 1] (pixels are in [0, 1])")


@dataclass(frozen=True)
class Attack:
    """A built attack: ``attack(model, x, y, eps, seed)`` returns examples projected exactly onto
    ``[x - eps, x + eps] ∩ [0, 1]`` (``[0, 1]`` for unbounded C&W)."""

    name: str
    fn: Callable
    params: dict[str, Any]
    bounded: bool
    passes: float  # forward + input-gradient passes per example (the planner's cost; a forward is 1/2)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, eps: float | None, seed: int = 0) -> torch.Tensor:
        return self.run(model, x, y, eps, seed)[0]

    def run(
        self, model, x: torch.Tensor, y: torch.Tensor, eps: float | None, seed: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The examples and what the attack reports per example beside them (``{name: tensor of len(x)}``: an
        attack function may return ``(x_adv, extras)``; the evaluation records each extra with the examples)."""
        if self.bounded and eps is None:
            raise ValueError(f"attack {self.name} needs an eps")
        check_eps(eps, self.name)
        out = self.fn(model, x, y, None if eps is None else float(eps), int(seed))
        adv, extras = out if isinstance(out, tuple) else (out, {})
        adv = adv.detach()
        return (adv.clamp(0.0, 1.0) if eps is None else project(adv, x, float(eps))), dict(extras)


def attack_entry(cfg: Mapping | DictConfig):
    """The registry entry of an attack config, checked (nothing is run)."""
    return ATTACKS.entry(cfg)


def build_attack(cfg: Mapping | DictConfig, engine: Mapping | None = None, **runtime) -> Attack:
    """An :class:`Attack` from its config; ``runtime``: arguments no config sets (a transfer source);
    ``engine``: ``{backend, chunk}`` (configs/evaluate.yaml ``attack:``) for the attacks that take them."""
    e = ATTACKS.entry(cfg)
    params = params_of(cfg)
    takes = set(e.meta.get("runtime", ()))
    runtime.update({k: v for k, v in (engine or {}).items() if k in takes})
    return Attack(
        e.name,
        ATTACKS.build(cfg, _convert_="all", **runtime),
        params,
        bool(e.meta["bounded"]),
        float(e.meta["passes"](params)),
    )


def list_attacks() -> list[str]:
    return ATTACKS.names()


def attack_config(name: str, **params) -> dict[str, Any]:
    """The config of registered attack ``name`` with ``params``: ``{_target_: ..., **params}``."""
    return {"_target_": ATTACKS.get(name).target, **params}
