"""Config helpers: where the configs live, composing them, and checks that run before any work."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from pclc.data import LOADERS
from pclc.models import check_model_fits

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


_COMPOSED: dict[tuple, DictConfig] = {}


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config from ``configs/`` with Hydra's compose API; returns a fresh copy of a cached result
    (composition costs ~0.2 s and the planner composes the same configs many times). Interpolations such
    as ``${oc.env:PCLC_RUNS,runs}`` stay unresolved in the cache, so they still follow the environment."""
    import copy

    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    key = (config_name, tuple(overrides or []))
    if key not in _COMPOSED:
        if len(_COMPOSED) > 1024:
            _COMPOSED.clear()
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: same search path (configs/)
            _COMPOSED[key] = hydra_compose(config_name=config_name, overrides=list(key[1]))
        else:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                _COMPOSED[key] = hydra_compose(config_name=config_name, overrides=list(key[1]))
    return copy.deepcopy(_COMPOSED[key])


def validate_data_model(cfg: DictConfig) -> None:
    """Refuse an unknown dataset or a model that does not fit the dataset, before any work starts."""
    d = cfg.dataset
    if d.name not in LOADERS:
        raise ValueError(f"unknown dataset {d.name!r}; known: {sorted(LOADERS)}")
    check_model_fits(cfg.model.name, int(d.channels), int(d.size), int(d.num_classes))
    if int(cfg.model.num_classes) != int(d.num_classes):
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but dataset {d.name} has {d.num_classes} classes")
    for split in ("train", "test"):
        n = (d.get("subset") or {}).get(split)
        if n is not None and int(n) <= 0:
            raise ValueError(f"dataset.subset.{split} must be a positive number of examples, got {n}")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but no CUDA device is available")
    return dev
