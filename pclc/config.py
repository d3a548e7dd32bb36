"""Config helpers: where the configs live, composing them, and checks that run before any work."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pclc.data import LOADERS
from pclc.models import check_model_fits

# configs/ beside the package in a checkout (and an editable install); pclc/configs in an installed wheel
_HERE = Path(__file__).resolve().parent
CONFIG_DIR = _HERE.parent / "configs" if (_HERE.parent / "configs" / "train.yaml").exists() else _HERE / "configs"


_COMPOSED: dict[tuple, DictConfig] = {}


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config from ``configs/`` with Hydra's compose API; returns a fresh copy of a cached result
    (composition costs ~0.2 s and the planner composes the same configs many times). Interpolations such
    as ``${oc.env:PCLC_RUNS,runs}`` stay unresolved in the cache, so they still follow the environment.
    ``PCLC_CONFIG_PATH`` (folders, ``os.pathsep``-separated) adds config groups of your own (a dataset, an
    attack) beside configs/, as Hydra's ``hydra.searchpath`` does for the command-line apps."""
    import copy

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = [d for d in os.environ.get("PCLC_CONFIG_PATH", "").split(os.pathsep) if d]
    search = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in extra)}]"] if extra else []
    key = (config_name, (*search, *(overrides or [])))
    if key not in _COMPOSED:
        if len(_COMPOSED) > 1024:
            _COMPOSED.clear()
        if GlobalHydra.instance().is_initialized():  # inside a Hydra app: same search path (configs/)
            full = hydra_compose(config_name=config_name, overrides=list(key[1]), return_hydra_config=True)
        else:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                full = hydra_compose(config_name=config_name, overrides=list(key[1]), return_hydra_config=True)
        choices = {_CHOSEN[g]: c[g] for g in _CHOSEN if g in (c := full.hydra.runtime.choices)}
        with open_dict(full):
            del full["hydra"]
            if choices and config_name in ("train", "evaluate", "audit"):
                full.choices = choices  # the config chosen in each group (a run's config.yaml records it)
        _COMPOSED[key] = full
    return copy.deepcopy(_COMPOSED[key])


# The config groups whose choice a run records (``choices``: its config.yaml, W&B names): group -> key.
_CHOSEN = {"dataset": "dataset", "model": "model", "loss": "loss", "trainer": "trainer", "attack/suite": "suite"}


def group_names(group: str) -> list[str]:
    """The configs of a group (``configs/<group>/*.yaml``, and in ``$PCLC_CONFIG_PATH``'s folders)."""
    dirs = [CONFIG_DIR, *(Path(d) for d in os.environ.get("PCLC_CONFIG_PATH", "").split(os.pathsep) if d)]
    return sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})


def group_config(group: str, name: str) -> DictConfig:
    """One config of a group (``configs/<group>/<name>.yaml``) as Hydra composes it into ``train``: its
    interpolations (``${dataset.num_classes}``) stay unresolved, to resolve in the config it joins."""
    known = group_names(group)
    if name not in known:
        raise ValueError(f"unknown {group} config {name!r}; known: {known}")
    add = "" if group in ("dataset", "model", "loss", "trainer", "logger") else "+"  # groups train.yaml lacks
    return compose("train", [f"{add}{group}={name}"])[group]


def variant(
    cfg: DictConfig,
    *,
    loss: str | None = None,
    model: str | None = None,
    trainer: str | None = None,
    values: dict | None = None,
) -> DictConfig:
    """The one way to derive a config: ``cfg`` with whole groups swapped for other configs of the group (the
    warm-up's loss, the black-box substitute's model, the audit reference's trainer), composed by Hydra, and
    ``values`` set at dotted keys. A swapped group's own overrides are not carried over (they were for
    another config); everything else (data, seed, store, other groups) is ``cfg``'s."""
    out = cfg.copy()
    with open_dict(out):
        for group, name in (("loss", loss), ("model", model), ("trainer", trainer)):
            if name is not None:
                out[group] = group_config(group, name)
        for key, value in (values or {}).items():
            OmegaConf.update(out, key, value, force_add=True)
        if out.get("choices") is not None:
            out.choices.update({g: n for g, n in (("loss", loss), ("model", model), ("trainer", trainer)) if n})
    return out


def hydra_choices(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the config chosen in each group recorded under ``choices`` (inside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return cfg
    runtime = HydraConfig.get().runtime.choices
    with open_dict(cfg):
        cfg.choices = {_CHOSEN[g]: runtime[g] for g in _CHOSEN if g in runtime}
    return cfg


def validate_data_model(cfg: DictConfig) -> None:
    """Refuse an unknown dataset or a model that does not fit the dataset, before any work starts."""
    d = cfg.dataset
    LOADERS.get(d.name)  # an unknown dataset: one line listing the known ones
    check_model_fits(cfg.model.name, int(d.channels), int(d.size), int(d.num_classes))
    if int(cfg.model.num_classes) != int(d.num_classes):
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but dataset {d.name} has {d.num_classes} classes")
    for split in ("train", "test"):
        n = (d.get("subset") or {}).get(split)
        if n is not None and int(n) <= 0:
            raise ValueError(f"dataset.subset.{split} must be a positive number of examples, got {n}")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        _warn_unusable_gpu()
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but no CUDA device is available")
    return dev


def quoted(value) -> str:
    """``value`` as a Hydra override value: as it is when plain, else single-quoted with ``'`` escaped, so a path
    with a space, ``,``, ``'``, ``=``, ``[ ]`` or non-ASCII letters survives the override grammar
    (``f"store={quoted(path)}"``)."""
    import re

    v = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:+-]+", v):
        return v
    v = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, v)  # Hydra unescapes backslashes only before a quote
    return "'" + v.replace("'", "\\'") + "'"


@functools.cache
def _warn_unusable_gpu() -> None:
    """One line when a GPU is there (``nvidia-smi``) but torch cannot use it (a driver older than its CUDA build,
    or an unsupported GPU): ``device=auto`` then runs on the CPU, which should not happen silently."""
    import logging
    import shutil

    if shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia/version"):
        logging.getLogger(__name__).warning(
            "a GPU is present but torch %s (CUDA %s) cannot use it (driver too old for this build, or an unsupported "
            "GPU): device=auto runs on the CPU",
            torch.__version__,
            torch.version.cuda,
        )
