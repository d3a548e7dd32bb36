"""What a profile changes from the paper's protocol, read from its overlays (configs/profiles/), so that a
short run says exactly how it is not the paper's (``make demo``'s closing lines)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _shown(v: Any) -> str:
    return "off" if v is None else str(v)


def profile_changes(cfg: DictConfig) -> list[str]:
    """``key value (paper: value)`` for every setting of the first cell's training and evaluation configs that
    ``cfg.profile`` changes from the full protocol's (the profile's name itself left out)."""
    from pclc.experiment import cell_suites, eval_cfg, experiment_cells, train_cfg

    cell = experiment_cells(cfg)[0]
    paper = cfg.copy()
    paper.profile = "full"
    pairs = [(train_cfg(cell, paper), train_cfg(cell, cfg))]
    pairs += [(eval_cfg(cell, paper, s), eval_cfg(cell, cfg, s)) for s in cell_suites(cell, cfg)]
    changes: dict[str, str] = {}
    for full, ours in pairs:
        a = _leaves(OmegaConf.to_container(full, resolve=True))
        b = _leaves(OmegaConf.to_container(ours, resolve=True))
        used = {f"eval.param_overrides.{e.attack}." for e in ours.get("suite", {}).get("entries", [])}
        for k in sorted(set(a) | set(b)):
            if k.startswith("eval.param_overrides.") and not any(k.startswith(u) for u in used):
                continue  # budgets of attacks this suite does not run
            if k != "profile" and a.get(k) != b.get(k):
                changes.setdefault(k, f"{k} {_shown(b.get(k))} (paper: {_shown(a.get(k))})")
    return list(changes.values())


def profile_line(cfg: DictConfig) -> str:
    """One line: the paper's protocol, or which profile this is and what it changes."""
    if cfg.profile == "full":
        return "profile full: the paper's protocol"
    note = cfg.experiment.get("note")
    return (
        f"profile {cfg.profile}, NOT the paper's protocol: "
        + "; ".join(profile_changes(cfg))
        + (f". {note}" if note else "")
    )
