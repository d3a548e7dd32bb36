"""Where a training run starts: reuse a finished run (repairing what a kill can break), set one aside
(``force``), resume from its checkpoint, or start from the warm-up run's epoch-T checkpoint (rebuilt when
a kill left it missing). Nothing here trains: :func:`pclc.train.train` passes itself in for the warm-up."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pclc.errors import UserError
from pclc.files import (
    CorruptFileError,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    read_json,
    remove_stale_temp,
    writer_gone,
    writer_tag,
)
from pclc.store import (
    RunDir,
    identity,
    machine,
    machine_line,
    model_state,
    run_key,
    run_numerics,
    same_machine_type,
)

log = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint does not belong to this run's model or config."""


def read_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """A pclc checkpoint, its weights loaded into ``model``."""
    state = load_tensors(path)
    needed = {"epoch", "model", "generator", "torch_rng", "metrics"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise CorruptFileError(f"{path} is not a pclc checkpoint (missing {sorted(needed - set(state or {}))})")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{path} does not fit this model: {e}") from e
    return state


def check_machine(state: dict[str, Any], path: Path, here: dict[str, Any], remedy: str) -> None:
    """Refuse to go on from a checkpoint that another machine type trained: its epochs and this machine's would
    make weights that neither machine gives, and the result set holds one machine type's trainings. A checkpoint
    written before pclc recorded machines is taken as this machine's, with a warning naming it."""
    was = state.get("machine")
    if not was:
        log.warning(
            "%s does not record the machine that trained it (written before pclc recorded it); "
            "taking it as this machine's, %s",
            path,
            machine_line(here),
        )
        return
    if not same_machine_type(was, here):
        raise CheckpointMismatchError(
            f"{path} was trained (to epoch {state['epoch']}) on {machine_line(was)}, this machine is "
            f"{machine_line(here)}: going on here would mix two machines' trainings in one run. Finish it on its "
            f"machine type and evaluate its zoo weights here, or {remedy}."
        )


def set_aside(run: RunDir, why: str) -> Path:
    """Move a run (or an unreadable file of it) out of the way instead of deleting it."""
    dest = run.path.with_name(f"{run.key}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(run.path), dest)
    return dest


def _repair_finished(run: RunDir) -> dict[str, Any] | None:
    """A finished run's summary, with ``model.pt`` and ``metrics.json`` restored from the final checkpoint
    when a kill or a disk left them missing or unreadable; None when the summary itself is unreadable (it
    is set aside, and the run resumes from its checkpoint and writes it again)."""
    try:
        summary = run.read_summary()
    except CorruptFileError as e:
        dest = run.summary.with_name(f"summary.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.json")
        run.summary.rename(dest)
        log.warning("%s; moved to %s, resuming from the checkpoint", e, dest.name)
        return None
    model_state(run)  # restores model.pt from the final checkpoint if needed
    try:
        read_json(run.metrics)
    except (CorruptFileError, FileNotFoundError):
        atomic_write_json(run.metrics, load_tensors(run.checkpoint)["metrics"])
        log.warning("%s was missing or unreadable; written again from the final checkpoint", run.metrics)
    return summary


def open_run(cfg: DictConfig, run: RunDir, until_epoch: int | None) -> dict[str, Any] | None:
    """A finished run's summary (reuse), or None when training is to run: ``force`` sets a finished or
    unfinished run aside; a run directory that belongs to another config is refused."""
    remove_stale_temp(run.path)
    if cfg.get("force") and until_epoch is None and run.path.exists():
        log.warning("force=true: moving the run %s to %s", run.key, set_aside(run, "replaced"))
    if run.finished:
        summary = _repair_finished(run)
        if summary is not None:
            log.info("run %s is finished; reusing it (force=true retrains)", run.key)
            return {**summary, "reused": True}
    if run.config.exists() and run.stored_identity() != identity(cfg):
        raise CheckpointMismatchError(f"{run.config} belongs to another config (hash collision?)")
    return None


def record_config(cfg: DictConfig, run: RunDir) -> None:
    """Write the run's ``config.yaml`` (key, identity, Hydra's choices, the resolved config) once: only when
    the run is about to train (its data loaded, its model built), so a failed start leaves no run folder."""
    if run.config.exists():
        return
    from pclc.tracking import scrub

    resolved = scrub(OmegaConf.to_container(cfg, resolve=True))
    resolved["accel"] = {
        **(resolved.get("accel") or {}),
        **run_numerics(resolved),
    }  # "auto" pinned, as the key has it
    atomic_write_text(
        run.config,
        OmegaConf.to_yaml(
            OmegaConf.create(
                {
                    "key": run.key,
                    "identity": identity(cfg),
                    "choices": resolved.pop("choices", None),
                    "resolved": resolved,
                }
            )
        ),
    )


def _rebuild_warmup(src_cfg: DictConfig, src: RunDir, T: int, train: Callable) -> None:
    """A finished warm-up run without ``warmup.pt`` (a kill between its writes, by code before the warm-up
    was written first): train its first T epochs again, elsewhere, and keep their checkpoint (same seed, same
    weights); the finished run itself is untouched."""
    log.warning("%s is finished but has no warmup.pt; training its first %d epochs again to rebuild it", src.key, T)
    for old in src.path.parent.glob(f".{src.key}.rebuild-*"):  # left by a killed rebuild: .<key>.rebuild-<host>.<pid>-x
        tag = old.name.split(".rebuild-", 1)[1].rsplit("-", 1)[0]
        host, _, pid = tag.rpartition(".")
        if pid.isdigit() and writer_gone(host, int(pid), time.time() - old.stat().st_mtime):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=src.path.parent, prefix=f".{src.key}.rebuild-{writer_tag()}-") as tmp:
        train(OmegaConf.merge(src_cfg, {"store": tmp, "force": False}), until_epoch=T)
        shutil.copyfile(RunDir(tmp, src.key).warmup, src.warmup.with_suffix(".rebuilt.tmp"))
        src.warmup.with_suffix(".rebuilt.tmp").replace(src.warmup)


def start_state(
    cfg: DictConfig,
    run: RunDir,
    model: torch.nn.Module,
    T: int,
    stop: int,
    train: Callable,
    warmup_cfg: DictConfig | None,
):
    """Where training starts: this run's checkpoint (resume), the warm-up run's epoch-T checkpoint (trained
    first if missing), or nothing; either checkpoint only if this machine type trained it (:func:`check_machine`).
    Returns (state or None, the warm-up run's key or None)."""
    here = machine(next(model.parameters()).device)
    if run.checkpoint.exists():
        state = read_checkpoint(run.checkpoint, model)
        check_machine(state, run.checkpoint, here, "force=true to retrain it here from the start")
        log.info("resuming %s from epoch %d", run.key, state["epoch"])
        return state, state.get("warmup_from")
    if warmup_cfg is None or stop <= T:
        return None, None
    src = RunDir(cfg.store, run_key(warmup_cfg))
    remove_stale_temp(src.path)  # a kill in the warm-up run's writes, which it may never open again
    if not src.warmup.exists():
        if src.finished:
            _rebuild_warmup(warmup_cfg, src, T, train)
        else:
            log.info("training the warm-up (first %d epochs of %s)", T, src.key)
            train(warmup_cfg, until_epoch=T)
    state = read_checkpoint(src.warmup, model)
    check_machine(state, src.warmup, here, f"retrain its warm-up run {src.key} here first (force=true on it)")
    state["metrics"] = [dict(m, source=src.key) for m in state["metrics"]]
    log.info("reusing the epoch-%d warm-up of %s", T, src.key)
    return state, src.key


def has_cuda() -> bool:
    """Whether CUDA's generators exist to be saved with a checkpoint and restored on resume."""
    return torch.cuda.is_available()


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a checkpoint keeps: the data generator's, torch's CPU generator and, on CUDA, every
    GPU's (VGG-13's Dropout draws there): a resumed run ends with the uninterrupted weights."""
    return {
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if has_cuda() else None,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and has_cuda():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
