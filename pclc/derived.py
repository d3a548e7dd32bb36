"""Configs derived from a run's training config: the one home of every rule "this run implies that run". Each is
:func:`pclc.config.variant` of the run's config, so data, seed, schedule and any overrides carry over, and each
derived run has one key wherever it is derived (training, evaluation, the planner, tables, the audit)."""

from __future__ import annotations

from omegaconf import DictConfig

from pclc.config import variant


def warmup_source(cfg: DictConfig) -> DictConfig:
    """The run whose phase 1 is this run's phase 1: the same config with the warm-up loss (``loss.warmup``)."""
    try:
        return variant(cfg, loss=cfg.loss.warmup)
    except ValueError as e:
        raise ValueError(f"loss.warmup={cfg.loss.warmup!r}: {e}") from None


def substitute_cfg(cfg: DictConfig, substitutes: DictConfig) -> DictConfig:
    """The black-box substitute's training config: same data, trainer (without adversarial training) and
    seed; CE; the mapped model (``eval.substitute``)."""
    if cfg.model.name not in substitutes:
        raise ValueError(
            f"no black-box substitute is defined for model {cfg.model.name!r} "
            f"(eval.substitute maps {dict(substitutes)})"
        )
    return variant(cfg, model=substitutes[cfg.model.name], loss="ce", values={"trainer.adversarial": None})


def audit_reference(cfg: DictConfig, loss: str | None) -> DictConfig | None:
    """The audit's reference run for this run: the same config with loss ``loss`` and no adversarial training
    (the trainer's schedule and overrides kept: a quick-profile run's reference is quick too); None when there
    is none (``loss`` null) or this run is it."""
    if not loss or (loss == cfg.loss.name and not cfg.trainer.get("adversarial")):
        return None
    return variant(cfg, loss=loss, values={"trainer.adversarial": None})
