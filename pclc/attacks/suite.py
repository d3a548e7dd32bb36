"""Attack suites: a suite config (``configs/attack/suite/``) expanded into (attack, eps, source) items for one
dataset, every attack config checked against the registry before any work."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from pclc.attacks._registry import attack_entry, check_eps
from pclc.registry import params_of


@dataclass(frozen=True)
class SuiteItem:
    """One item of an expanded suite: an attack config at one eps, white-box or transferred from the substitute.
    Its result file's name is :func:`pclc.results.result_stem`'s."""

    config: str  # the attack config's name (configs/attack/<config>.yaml)
    kind: str  # the registered attack (fgsm, bim, pgd, mim, cw, spsa)
    eps: float | None
    source: str  # white | transfer
    params: dict = field(hash=False, compare=False)
    attack: dict = field(hash=False, compare=False, default_factory=dict)  # the config to build it from


def _grid(eps, dataset: DictConfig, attack: str) -> list:
    if eps == "dataset":
        return list(dataset.eps)
    if eps is None:
        return [None]
    if isinstance(eps, DictConfig):
        if dataset.family not in eps:
            raise ValueError(f"suite entry {attack} has no eps for family {dataset.family!r}")
        eps = eps[dataset.family]
    if not list(eps):
        raise ValueError(f"suite entry {attack}: eps=[] names no epsilon (omit the entry, or give eps values)")
    return list(eps)


def expand_suite(suite: DictConfig, dataset: DictConfig, param_overrides=None) -> list[SuiteItem]:
    """Suite entries -> (attack, eps, source) cells for ``dataset``; refuses a suite for another family and
    any attack config that names no registered attack or sets a parameter it does not take.

    ``param_overrides`` ({attack config: {param: value}}) changes attack budgets (tiny smoke profiles);
    the parameters used are recorded in each result and its file name's hash.
    """
    families = list(suite.get("families") or [])
    if families and dataset.family not in families:
        raise ValueError(
            f"this attack suite is for {families} datasets; {dataset.name} is {dataset.family!r} "
            f"(its eps grid is {list(dataset.eps)})"
        )
    attacks = suite.get("attacks") or {}
    out = []
    for e in suite.entries:
        if e.attack not in attacks:
            raise ValueError(
                f"suite entry {e.attack!r} has no attack config (the suite's defaults list "
                f"`/attack@attacks.{e.attack}: {e.attack}`); known: {sorted(attacks)}"
            )
        cfg = {
            **OmegaConf.to_container(attacks[e.attack], resolve=True),
            **dict((param_overrides or {}).get(e.attack, {})),
        }
        try:
            spec = attack_entry(cfg)
        except ValueError as err:
            raise ValueError(f"attack config {e.attack}: {err}") from None
        source = e.get("source") or "white"
        if source not in ("white", "transfer"):
            raise ValueError(f"attack source must be white or transfer, got {source!r}")
        for v in _grid(e.get("eps"), dataset, e.attack):
            if spec.meta["bounded"] and v is None:
                raise ValueError(f"attack {e.attack} needs eps")
            check_eps(v, e.attack)
            out.append(SuiteItem(e.attack, spec.name, None if v is None else float(v), source, params_of(cfg), cfg))
    if not out:
        raise ValueError("the attack suite has no (attack, eps) cells: suite.entries is empty")
    return out
