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
from dataclasses import dataclass
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pclc.attacks import HalfAdversarial
from pclc.config import CONFIG_DIR, resolve_device, validate_data_model
from pclc.data import build_data
from pclc.io import CorruptFileError, atomic_torch_save, atomic_write_json, atomic_write_text, load_tensors
from pclc.losses import get_loss
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
    get_loss(cfg.loss.name, **cfg.loss.params)
    if cfg.loss.get("warmup"):
        warm = warmup_loss_cfg(cfg)
        get_loss(warm.name, **warm.params)
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


def warmup_loss_cfg(cfg: DictConfig) -> DictConfig:
    """The loss config named by ``loss.warmup`` (read from ``configs/loss/``, as Hydra composes it)."""
    path = CONFIG_DIR / "loss" / f"{cfg.loss.warmup}.yaml"
    if not path.exists():
        raise ValueError(f"loss.warmup={cfg.loss.warmup!r}: no such loss config {path}")
    return OmegaConf.load(path)


def warmup_source(cfg: DictConfig) -> DictConfig:
    """The run whose phase 1 is this run's phase 1: the same config with the warm-up loss."""
    src = cfg.copy()
    src.loss = warmup_loss_cfg(cfg)
    return src


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


def lr_at(trainer: DictConfig, epoch_in_phase: int) -> float:
    """Adam lr with MultiStepLR(gamma) decays at ``milestones`` within each phase."""
    drops = sum(1 for m in trainer.milestones if epoch_in_phase >= int(m))
    return float(trainer.lr) * float(trainer.gamma) ** drops


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


def train(cfg: DictConfig, until_epoch: int | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) the run that ``cfg`` describes; return its summary.

    ``until_epoch`` stops early (used to train a CE run's warm-up for PC+LC); the run stays resumable.
    """
    validate(cfg)
    device = resolve_device(cfg.device)
    key = run_key(cfg)
    run = RunDir(cfg.store, key)
    T = int(cfg.trainer.epochs_per_phase)
    total = 2 * T
    stop = total if until_epoch is None else min(int(until_epoch), total)

    if run.finished and cfg.get("force") and until_epoch is None:
        log.warning("force=true: moving the finished run %s to %s", key, _set_aside(run))
    if run.finished:
        log.info("run %s is finished; reusing it (force=true retrains)", key)
        return {**run.read_summary(), "reused": True}
    if run.config.exists():
        stored = OmegaConf.load(run.config)
        if OmegaConf.to_container(stored.identity) != identity(cfg):
            raise CheckpointMismatchError(f"{run.config} belongs to another config (hash collision?)")
    else:
        atomic_write_text(run.config, OmegaConf.to_yaml(OmegaConf.create(
            {"key": key, "identity": identity(cfg), "resolved": OmegaConf.to_container(cfg, resolve=True)})))
    if until_epoch is not None and run.checkpoint.exists() and int(load_tensors(run.checkpoint).get("epoch", 0)) >= stop:
        return {"key": key, "finished": False, "epoch": stop, "path": str(run.path)}

    torch.manual_seed(int(cfg.seed))
    generator = torch.Generator().manual_seed(int(cfg.seed))  # shuffling and augmentation
    train_data, test_data = build_data(cfg.dataset, device)
    model = instantiate(cfg.model).to(device)

    state, warmup_from = None, None
    if run.checkpoint.exists():
        state = _read_checkpoint(run.checkpoint, model)
        warmup_from = state.get("warmup_from")
        log.info("resuming %s from epoch %d", key, state["epoch"])
    elif cfg.loss.get("warmup") and stop > T:
        src_cfg = warmup_source(cfg)
        src = RunDir(cfg.store, run_key(src_cfg))
        if not src.warmup.exists():
            log.info("training the warm-up (first %d epochs of %s)", T, src.key)
            train(src_cfg, until_epoch=T)
        state = _read_checkpoint(src.warmup, model)
        state["metrics"] = [dict(m, source=src.key) for m in state["metrics"]]
        warmup_from = src.key
        log.info("reusing the epoch-%d warm-up of %s", T, src.key)
    start = int(state["epoch"]) if state else 0
    metrics: list[dict[str, Any]] = list(state["metrics"]) if state else []
    if state:
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    phase_loss = [get_loss(c.name, check_inputs=False, **c.params)
                  for c in ((warmup_loss_cfg(cfg) if cfg.loss.get("warmup") else cfg.loss), cfg.loss)]
    adversary = build_adversary(cfg.trainer)
    accel = Accel.build(cfg.get("accel"), model, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.trainer.lr))
    if state and "optimizer" in state and start % T != 0:  # mid-phase: keep Adam's moments
        optimizer.load_state_dict(state["optimizer"])

    group = cfg.get("run_group") or f"{cfg.dataset.name}-{cfg.model.name}"
    tracker = build_tracker(cfg.logger, name=f"{cfg.dataset.name}-{cfg.model.name}-{cfg.loss.name}-s{cfg.seed}",
                            group=group, config={"key": key, **OmegaConf.to_container(cfg, resolve=True)})
    prov = provenance(device)
    t0 = time.perf_counter()
    try:
        for epoch in range(start, stop):
            phase, in_phase = divmod(epoch, T)
            if in_phase == 0 and epoch != start:  # a new phase: fresh Adam (the optimizer above is fresh at start)
                optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg.trainer.lr))
            lr = lr_at(cfg.trainer, in_phase)
            for g in optimizer.param_groups:
                g["lr"] = lr
            te = time.perf_counter()
            bar = _progress(train_data.num_batches(int(cfg.trainer.batch_size)), f"{key} epoch {epoch + 1}/{total}")
            row = train_epoch(model, train_data, phase_loss[phase], optimizer, int(cfg.trainer.batch_size),
                              generator, bar, adversary, accel)
            if bar is not None:
                bar.close()
            if not math.isfinite(row["train_loss"]):
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {epoch + 1} of {key}; the last good checkpoint "
                    f"(epoch {epoch}) is kept in {run.checkpoint}. Lower trainer.lr or check the loss.")
            clean = clean_metrics(model, test_data, int(cfg.trainer.eval_batch_size))
            row = {"epoch": epoch + 1, "phase": phase + 1, "lr": lr, **row,
                   "test_accuracy": clean["accuracy"], "prob_gap": clean["prob_gap"],
                   "seconds": time.perf_counter() - te}
            metrics.append(row)
            ckpt = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "metrics": metrics, "warmup_from": warmup_from}
            atomic_torch_save(ckpt, run.checkpoint)
            if epoch + 1 == T:
                atomic_torch_save(ckpt, run.warmup)
            atomic_write_json(run.metrics, metrics)
            tracker.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            if bar is None:
                log.info("%s epoch %d/%d phase %d loss %.4f train %.2f%% test %.2f%% gap %.3f (%.1fs)", key,
                         epoch + 1, total, phase + 1, row["train_loss"], row["train_accuracy"],
                         row["test_accuracy"], row["prob_gap"], row["seconds"])
        if stop < total:
            tracker.finish(0)
            return {"key": key, "finished": False, "epoch": stop, "path": str(run.path)}
        atomic_torch_save(model.state_dict(), run.model)
        final = metrics[-1]
        summary = {
            "key": key, "finished": True, "path": str(run.path), "epochs": total,
            "dataset": cfg.dataset.name, "model": cfg.model.name, "loss": cfg.loss.name, "seed": int(cfg.seed),
            "test_accuracy": final["test_accuracy"], "prob_gap": final["prob_gap"],
            "train_accuracy": final["train_accuracy"], "train_loss": final["train_loss"],
            "warmup_from": warmup_from, "accel": accel.describe(),
            "train_seconds": sum(m["seconds"] for m in metrics if "source" not in m),
            "wall_seconds_this_invocation": time.perf_counter() - t0,
            "provenance": prov,
        }
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
def run_job(fn: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job; in a multirun a failure is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return fn(cfg)
    except Exception as e:
        hc = HydraConfig.get() if HydraConfig.initialized() else None
        if hc is None or hc.mode != RunMode.MULTIRUN:
            raise
        log.exception("job %s failed; the sweep goes on", hc.job.num)
        atomic_write_json(Path(hc.sweep.dir) / "failures" / f"job{hc.job.num}.json",
                          {"job": hc.job.num, "overrides": list(hc.overrides.task), "error": f"{type(e).__name__}: {e}"})
        return {"failed": True, "error": str(e)}


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    return run_job(train, cfg)


if __name__ == "__main__":
    main()
