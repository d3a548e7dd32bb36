"""The one attack layer: every attack is a registered function ``(model, x, y, eps, seed, **params) -> x_adv``.

- :mod:`pclc.attacks.paper`: the paper's attacks through advertorch 0.2.3 (FGSM, BIM, PGD, MIM, C&W, SPSA);
- :mod:`pclc.attacks.linf`: one projection and one sign-gradient PGD (adversarial training, the audit);
- :mod:`pclc.attacks.adaptive`: the audit's stronger attacks (CE-PGD ladder, margin and temperature PGD,
  APGD, targeted APGD, Square, transfer);
- :mod:`pclc.attacks.reference`: the authors' reference AutoAttack (pyautoattack), the standard evaluation.

An attack config is ``{_target_: <registered function>, <params>}`` (``configs/attack/``, the audit's in
``configs/audit.yaml``); :func:`build_attack` checks it before any work (unknown or missing parameters,
values out of range) and returns an :class:`Attack`. One PGD vocabulary throughout: ``nb_iter`` steps of
``eps_iter`` (absolute) or ``rel_eps_iter`` (a fraction of eps), ``rand_init``, ``restarts``.
"""

from pclc.attacks import adaptive, linf, paper, reference  # noqa: E402,F401,I001  (registers the attacks)
from pclc.attacks._registry import (
    ATTACKS,
    Attack,
    attack_config,
    attack_entry,
    build_attack,
    check_budget,
    check_eps,
    list_attacks,
    register_attack,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "attack_config",
    "attack_entry",
    "build_attack",
    "check_budget",
    "check_eps",
    "list_attacks",
    "register_attack",
]
