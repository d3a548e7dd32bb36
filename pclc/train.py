"""Training: the paper's two-phase protocol through the run store.

Every run has two phases of ``T`` epochs, each with a fresh Adam and learning-rate schedule
(Experiments: "we first warm up ... for T epochs using CE loss, and then train the model using our
method ... for another T epochs whereas we directly train the baseline using CE loss for 2T epochs").
Phase 1 uses ``loss.warmup`` when the loss names one (PC+LC: CE), else the loss itself. A PC+LC
run therefore starts from the matching CE run's epoch-T checkpoint, which is trained once.

``python -m pclc.train dataset=fmnist model=lenet5 loss=pclc`` (Hydra overrides; ``-m`` for sweeps).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pclc.attacks.linf import HalfAdversarial
from pclc.config import resolve_device, validate_data_model, variant
from pclc.data import build_data
from pclc.io import CorruptFileError, atomic_torch_save, atomic_write_json, atomic_write_text, load_tensors
from pclc.losses import build_loss
from pclc.metrics import clean_metrics
from pclc.store import RunDir, identity, provenance, run_key
from pclc.tracking import build_tracker

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not belong to this run's model or config."""


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
def validate(cfg: DictConfig) -> None:
    """Every check that can fail before data is loaded or a model is built."""
    validate_data_model(cfg)
    build_loss(cfg.loss)
    if cfg.loss.get("warmup"):
        build_loss(warmup_source(cfg).loss)
    t = cfg.trainer
    if int(t.epochs_per_phase) < 1:
        raise ValueError(f"trainer.epochs_per_phase must be >= 1, got {t.epochs_per_phase}")
    if int(t.batch_size) < 1 or int(t.eval_batch_size) < 1:
        raise ValueError("trainer.batch_size and trainer.eval_batch_size must be >= 1")
    if not float(t.lr) > 0:
        raise ValueError(f"trainer.lr must be > 0, got {t.lr}")
    if not 0 < float(t.gamma) <= 1:
        raise ValueError(f"trainer.gamma must be in (0, 1], got {t.gamma}")
    build_adversary(t)
    if list(t.milestones) != sorted(int(m) for m in t.milestones):
        raise ValueError(f"trainer.milestones must be increasing integers, got {list(t.milestones)}")


def warmup_source(cfg: DictConfig) -> DictConfig:
    """The run whose phase 1 is this run's phase 1: the same config with the warm-up loss (``loss.warmup``)."""
    try:
        return variant(cfg, loss=cfg.loss.warmup)
    except ValueError as e:
        raise ValueError(f"loss.warmup={cfg.loss.warmup!r}: {e}") from None


def build_adversary(trainer: DictConfig) -> HalfAdversarial | None:
    adv = trainer.get("adversarial")
    return None if adv is None else HalfAdversarial(**OmegaConf.to_container(adv, resolve=True))


@dataclass
class Accel:
    """Speed options (``accel`` config): not part of a run's identity; recorded in its summary."""

    bf16: bool = False
    channels_last: bool = False
    forward: Callable | None = None  # a compiled forward, when compile is on

    @classmethod
    def build(cls, cfg: DictConfig | None, model: torch.nn.Module, device: torch.device) -> "Accel":
        cfg = cfg or {}
        cuda = device.type == "cuda"
        pick = lambda v: cuda if v in (None, "auto") else bool(v)  # noqa: E731
        acc = cls(bf16=pick(cfg.get("bf16")), channels_last=pick(cfg.get("channels_last")))
        if cuda:
            torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True))
        if acc.channels_last:
            model.to(memory_format=torch.channels_last)
        comp = cfg.get("compile") or False
        if comp:
            acc.forward = torch.compile(model, backend="inductor" if comp is True else str(comp))
        return acc

    def describe(self) -> dict[str, Any]:
        return {"bf16": self.bf16, "channels_last": self.channels_last, "compiled": self.forward is not None}


def phase_optimizer(model: torch.nn.Module, trainer: DictConfig, in_phase: int = 0, state: dict | None = None):
    """A phase's fresh Adam and MultiStepLR (gamma at ``milestones``, stepped after each epoch), positioned at
    epoch ``in_phase`` of the phase; ``state``: a mid-phase checkpoint's Adam moments."""
    optimizer = torch.optim.Adam(model.parameters(), lr=float(trainer.lr))
    if state is not None:
        optimizer.load_state_dict(state)
    for g in optimizer.param_groups:  # a checkpoint's lr is replaced by the schedule's below
        g["lr"] = float(trainer.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(m) for m in trainer.milestones],
                                                    float(trainer.gamma))
    with warnings.catch_warnings():  # fast-forward to in_phase (no optimizer step is due in between)
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(in_phase):
            schedule.step()
    return optimizer, schedule


# ------------------------------------------------------------------------------------------
# One epoch
# ------------------------------------------------------------------------------------------
def train_epoch(model: torch.nn.Module, data, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                batch_size: int, generator: torch.Generator, progress=None,
                adversary: Callable | None = None, accel: Accel | None = None) -> dict[str, float]:
    """One pass over ``data``; sums stay on the device (one host sync, at the end).

    ``adversary(model, x, y, generator)`` replaces part of each batch with adversarial examples (Table 5).
    ``accel`` sets bf16 autocast, channels_last and a compiled forward (speed only).
    """
    accel = accel or Accel()
    forward = model if accel.forward is None else accel.forward
    model.train()
    loss_sum = torch.zeros((), device=data.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.device)
    for x, y in data.batches(batch_size, shuffle=True, generator=generator):
        if adversary is not None:
            x = adversary(model, x, y, generator)
        if accel.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=accel.bf16):
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        if progress is not None:
            progress.update(1)
    n = len(data)
    return {"train_loss": float(loss_sum) / n, "train_accuracy": 100.0 * float(correct) / n}


# ------------------------------------------------------------------------------------------
# A run
# ------------------------------------------------------------------------------------------
def _read_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    state = load_tensors(path)
    needed = {"epoch", "model", "generator", "torch_rng", "metrics"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise CorruptFileError(f"{path} is not a pclc checkpoint (missing {sorted(needed - set(state or {}))})")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{path} does not fit this model: {e}") from e
    return state


def _set_aside(run: RunDir) -> Path:
    """``force``: move an existing run out of the way instead of deleting it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run.path.with_name(f"{run.key}.replaced-{stamp}")
    shutil.move(str(run.path), dest)
    return dest


def _open_run(cfg: DictConfig, run: RunDir, until_epoch: int | None) -> dict[str, Any] | None:
    """Reuse a finished run (its summary), set it aside (``force``), or record a new run's config; refuse a
    run directory that belongs to another config."""
    if run.finished and cfg.get("force") and until_epoch is None:
        log.warning("force=true: moving the finished run %s to %s", run.key, _set_aside(run))
    if run.finished:
        log.info("run %s is finished; reusing it (force=true retrains)", run.key)
        return {**run.read_summary(), "reused": True}
    if run.config.exists():
        if run.stored_identity() != identity(cfg):
            raise CheckpointMismatchError(f"{run.config} belongs to another config (hash collision?)")
    else:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_text(run.config, OmegaConf.to_yaml(OmegaConf.create(
            {"key": run.key, "identity": identity(cfg), "choices": resolved.pop("choices", None),
             "resolved": resolved})))
    return None


def _start_state(cfg: DictConfig, run: RunDir, model: torch.nn.Module, T: int, stop: int):
    """Where training starts: this run's checkpoint (resume), the warm-up run's epoch-T checkpoint (trained
    first if missing), or nothing. Returns (state or None, the warm-up run's key or None)."""
    if run.checkpoint.exists():
        state = _read_checkpoint(run.checkpoint, model)
        log.info("resuming %s from epoch %d", run.key, state["epoch"])
        return state, state.get("warmup_from")
    if not (cfg.loss.get("warmup") and stop > T):
        return None, None
    src_cfg = warmup_source(cfg)
    src = RunDir(cfg.store, run_key(src_cfg))
    if not src.warmup.exists():
        log.info("training the warm-up (first %d epochs of %s)", T, src.key)
        train(src_cfg, until_epoch=T)
    state = _read_checkpoint(src.warmup, model)
    state["metrics"] = [dict(m, source=src.key) for m in state["metrics"]]
    log.info("reusing the epoch-%d warm-up of %s", T, src.key)
    return state, src.key


def _summary(cfg: DictConfig, run: RunDir, metrics: list[dict], warmup_from, accel: Accel, prov: dict,
             t0: float) -> dict[str, Any]:
    final = metrics[-1]
    return {"key": run.key, "finished": True, "path": str(run.path), "epochs": 2 * int(cfg.trainer.epochs_per_phase),
            "dataset": cfg.dataset.name, "model": cfg.model.name, "loss": cfg.loss.name, "seed": int(cfg.seed),
            "test_accuracy": final["test_accuracy"], "prob_gap": final["prob_gap"],
            "train_accuracy": final["train_accuracy"], "train_loss": final["train_loss"],
            "warmup_from": warmup_from, "accel": accel.describe(),
            "train_seconds": sum(m["seconds"] for m in metrics if "source" not in m),
            "wall_seconds_this_invocation": time.perf_counter() - t0, "provenance": prov}


def train(cfg: DictConfig, until_epoch: int | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) the run that ``cfg`` describes; return its summary.

    ``until_epoch`` stops early (used to train a CE run's warm-up for PC+LC); the run stays resumable.
    """
    validate(cfg)
    device = resolve_device(cfg.device)
    run = RunDir(cfg.store, run_key(cfg))
    T = int(cfg.trainer.epochs_per_phase)
    total = 2 * T
    stop = total if until_epoch is None else min(int(until_epoch), total)
    reused = _open_run(cfg, run, until_epoch)
    if reused is not None:
        return reused
    unfinished = {"key": run.key, "finished": False, "epoch": stop, "path": str(run.path)}
    if until_epoch is not None and run.checkpoint.exists() and int(load_tensors(run.checkpoint).get("epoch", 0)) >= stop:
        return unfinished

    torch.manual_seed(int(cfg.seed))
    generator = torch.Generator().manual_seed(int(cfg.seed))  # shuffling and augmentation
    train_data, test_data = build_data(cfg.dataset, device)
    model = instantiate(cfg.model).to(device)
    state, warmup_from = _start_state(cfg, run, model, T, stop)
    start = int(state["epoch"]) if state else 0
    metrics: list[dict[str, Any]] = list(state["metrics"]) if state else []
    if state:
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    phase_loss = [build_loss(c.loss, check_inputs=False) for c in (warmup_source(cfg) if cfg.loss.get("warmup")
                                                                   else cfg, cfg)]
    adversary = build_adversary(cfg.trainer)
    accel = Accel.build(cfg.get("accel"), model, device)
    mid_phase = state is not None and "optimizer" in state and start % T != 0  # keep Adam's moments
    optimizer, schedule = phase_optimizer(model, cfg.trainer, start % T, state["optimizer"] if mid_phase else None)

    tracker = build_tracker(cfg.logger, name=f"{cfg.dataset.name}-{cfg.model.name}-{cfg.loss.name}-s{cfg.seed}",
                            group=cfg.get("run_group") or f"{cfg.dataset.name}-{cfg.model.name}",
                            config={"key": run.key, **OmegaConf.to_container(cfg, resolve=True)})
    prov = provenance(device)
    t0 = time.perf_counter()
    try:
        for epoch in range(start, stop):
            phase, in_phase = divmod(epoch, T)
            if in_phase == 0 and epoch != start:  # a new phase: fresh Adam and schedule
                optimizer, schedule = phase_optimizer(model, cfg.trainer)
            lr = optimizer.param_groups[0]["lr"]
            te = time.perf_counter()
            bar = _progress(train_data.num_batches(int(cfg.trainer.batch_size)), f"{run.key} epoch {epoch + 1}/{total}")
            row = train_epoch(model, train_data, phase_loss[phase], optimizer, int(cfg.trainer.batch_size),
                              generator, bar, adversary, accel)
            schedule.step()
            if bar is not None:
                bar.close()
            if not math.isfinite(row["train_loss"]):
                kept = f"the last good checkpoint (epoch {epoch}) is kept in {run.checkpoint}" if epoch else \
                    "no checkpoint was written"
                raise NonFiniteLossError(f"non-finite training loss at epoch {epoch + 1} of {run.key}; {kept}. "
                                         "Lower trainer.lr or check the loss.")
            clean = clean_metrics(model, test_data, int(cfg.trainer.eval_batch_size))
            row = {"epoch": epoch + 1, "phase": phase + 1, "lr": lr, **row,
                   "test_accuracy": clean["accuracy"], "prob_gap": clean["prob_gap"],
                   "seconds": time.perf_counter() - te}
            metrics.append(row)
            ckpt = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "metrics": metrics, "warmup_from": warmup_from}
            if epoch + 1 == T:  # the warm-up first: a kill between the two writes leaves a resumable run
                atomic_torch_save(ckpt, run.warmup)
            atomic_torch_save(ckpt, run.checkpoint)
            atomic_write_json(run.metrics, metrics)
            tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            if bar is None:
                log.info("%s epoch %d/%d phase %d loss %.4f train %.2f%% test %.2f%% gap %.3f (%.1fs)", run.key,
                         epoch + 1, total, phase + 1, row["train_loss"], row["train_accuracy"],
                         row["test_accuracy"], row["prob_gap"], row["seconds"])
        if stop < total:
            tracker.finish(0)
            return unfinished
        atomic_torch_save(model.state_dict(), run.model)
        summary = _summary(cfg, run, metrics, warmup_from, accel, prov, t0)
        atomic_write_json(run.summary, summary)
        tracker.summary(summary)
        tracker.finish(0)
        return summary
    except BaseException:
        tracker.finish(1)
        raise


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal; None (plain log lines per epoch) otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# ------------------------------------------------------------------------------------------
# Hydra entrypoint
# ------------------------------------------------------------------------------------------
@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.callbacks import run_job

    return run_job(train, cfg)


if __name__ == "__main__":
    main()
