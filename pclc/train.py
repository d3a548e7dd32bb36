"""Training: the paper's two-phase protocol through the run store.

Every run has two phases of ``T`` epochs, each with a fresh Adam and learning-rate schedule (Experiments: "we
first warm up ... for T epochs using CE loss, and then train the model using our method ... for another T epochs
whereas we directly train the baseline using CE loss for 2T epochs"). Phase 1 uses ``loss.warmup`` when the loss
names one (PC+LC: CE): a PC+LC run starts from the matching CE run's epoch-T checkpoint, trained once.

``python -m pclc.train dataset=fmnist model=lenet5 loss=pclc`` (Hydra overrides; ``-m`` for sweeps).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pclc import progress
from pclc.attacks.linf import HalfAdversarial, Trades
from pclc.config import CONFIG_DIR, resolve_device, validate_data_model
from pclc.data import build_data
from pclc.derived import warmup_source
from pclc.errors import UserError
from pclc.files import atomic_torch_save, atomic_write_json, load_tensors
from pclc.inputs import seed, whole
from pclc.locks import held, lock_path
from pclc.losses import build_loss
from pclc.metrics import clean_metrics
from pclc.monitor import RobustMonitor
from pclc.resume import CheckpointMismatchError, open_run, record_config, restore_rng, rng_state, start_state
from pclc.store import RunDir, accel_numerics, build_model, digest, provenance, run_key, weights_digest
from pclc.tracking import build_tracker, run_identity

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


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
    for k in ("epochs_per_phase", "batch_size", "eval_batch_size"):  # 1.7 is refused, never truncated
        whole(f"trainer.{k}", t[k])
    if not (float(t.lr) > 0 and math.isfinite(float(t.lr))):
        raise ValueError(f"trainer.lr must be a finite number > 0, got {t.lr}")
    seed(cfg.seed)
    if not 0 < float(t.gamma) <= 1:
        raise ValueError(f"trainer.gamma must be in (0, 1], got {t.gamma}")
    build_adversary(t)
    RobustMonitor(cfg)
    if list(t.milestones) != sorted(int(m) for m in t.milestones):
        raise ValueError(f"trainer.milestones must be increasing integers, got {list(t.milestones)}")


def build_adversary(trainer: DictConfig) -> HalfAdversarial | Trades | None:
    """``trainer.adversarial``: adversarial examples in place of part of each batch (``fgsm``/``pgd``: Table 5,
    PGD-AT, fast AT), or TRADES' regulariser (``trades``); None: plain training."""
    adv = trainer.get("adversarial")
    if adv is None:
        return None
    spec = OmegaConf.to_container(adv, resolve=True)
    return Trades(**spec) if spec.get("attack") == "trades" else HalfAdversarial(**spec)


@dataclass
class Accel:
    """Speed options (``accel`` config): bf16 and channels_last change the weights and are part of the run's key
    when on (pclc.store.accel_numerics); compile is speed only. Recorded in the run's summary."""

    bf16: bool = False
    channels_last: bool = False
    forward: Callable | None = None  # a compiled forward, when compile is on

    @classmethod
    def build(cls, cfg: DictConfig | None, model: torch.nn.Module, device: torch.device) -> Accel:
        cfg = cfg or {}
        acc = cls(**accel_numerics(cfg, device.type))  # as the run's key has them (pclc.store.identity)
        if cfg.get("deterministic"):  # bit-for-bit on one GPU type, at a cost (README: the GPU path)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", True)) and not cfg.get("deterministic")
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
    betas = tuple(float(b) for b in trainer.get("betas") or (0.9, 0.999))  # absent: torch's (and the paper's) default
    optimizer = torch.optim.Adam(model.parameters(), lr=float(trainer.lr), betas=betas)
    if state is not None:
        optimizer.load_state_dict(state)
    for g in optimizer.param_groups:  # a checkpoint's lr is replaced by the schedule's below
        g["lr"] = float(trainer.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(m) for m in trainer.milestones], float(trainer.gamma)
    )
    with warnings.catch_warnings():  # fast-forward to in_phase (no optimizer step is due in between)
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(in_phase):
            schedule.step()
    return optimizer, schedule


# ------------------------------------------------------------------------------------------
# One epoch
# ------------------------------------------------------------------------------------------
def train_epoch(
    model: torch.nn.Module,
    data,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    progress=None,
    adversary: Callable | None = None,
    accel: Accel | None = None,
) -> dict[str, float]:
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
        if hasattr(adversary, "loss"):  # TRADES: clean and adversarial halves, one loss
            loss, logits = adversary.loss(loss_fn, logits.float(), y)
        else:
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
def _run_threads(state: dict | None, run: RunDir, accel: Accel) -> int:
    """The CPU threads of a run: those it started with (a resume adopts them, so the weights do not depend
    on where it was interrupted), else this process's. A resume with other speed options (bf16,
    channels_last: they change the weights) is refused."""
    if state is None or state.get("threads") is None:
        return torch.get_num_threads()
    was = state.get("accel") or {}
    now = accel.describe()
    for k in ("bf16", "channels_last"):
        if k in was and was[k] != now[k]:
            raise CheckpointMismatchError(
                f"{run.checkpoint} was trained with accel.{k}={was[k]}; resuming with "
                f"{now[k]} would mix two numerics in one run. Resume with "
                f"accel.{k}={str(was[k]).lower()}, or force=true to retrain."
            )
    if int(state["threads"]) != torch.get_num_threads():
        log.info(
            "resuming %s with its %d CPU threads (this process had %d)",
            run.key,
            state["threads"],
            torch.get_num_threads(),
        )
        torch.set_num_threads(int(state["threads"]))
    return int(state["threads"])


def _diverged(summary: dict, num_classes: int) -> bool:
    """A finished run at chance accuracy (or worse): it is kept, with a warning in the log and its summary."""
    chance = 100.0 / num_classes
    if (
        summary["test_accuracy"] <= chance + 1.0
        or not math.isfinite(summary["train_loss"])
        or summary["train_loss"] > 1e6
    ):
        log.warning(
            "run %s finished at %.2f%% test accuracy (chance %.1f%%, train loss %.3g): it looks diverged; "
            "lower trainer.lr",
            summary["key"],
            summary["test_accuracy"],
            chance,
            summary["train_loss"],
        )
        return True
    return False


def _summary(
    cfg: DictConfig,
    run: RunDir,
    metrics: list[dict],
    warmup_from,
    accel: Accel,
    prov: dict,
    t0: float,
    threads: int,
    model: torch.nn.Module,
) -> dict[str, Any]:
    final = metrics[-1]
    summary = {
        "key": run.key,
        "finished": True,
        "path": str(run.path),
        "epochs": 2 * int(cfg.trainer.epochs_per_phase),
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "loss": cfg.loss.name,
        "seed": int(cfg.seed),
        "test_accuracy": final["test_accuracy"],
        "prob_gap": final["prob_gap"],
        "train_accuracy": final["train_accuracy"],
        "train_loss": final["train_loss"],
        "warmup_from": warmup_from,
        "accel": accel.describe(),
        "train_seconds": sum(m["seconds"] for m in metrics if "source" not in m),
        "wall_seconds_this_invocation": time.perf_counter() - t0,
        "provenance": prov,
        "threads": threads,
        "weights": weights_digest(model.state_dict()),
    }
    summary["diverged"] = _diverged(summary, int(cfg.dataset.num_classes))
    return summary


def train(cfg: DictConfig, until_epoch: int | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) the run that ``cfg`` describes; return its summary.

    ``until_epoch`` stops early (used to train a CE run's warm-up for PC+LC); the run stays resumable.
    One process at a time trains a run: another identical command waits, then reuses it.
    """
    validate(cfg)
    run = RunDir(cfg.store, run_key(cfg))
    with held(lock_path(cfg.store, run.key), f"run {run.key}"):
        if cfg.get("from_zoo"):  # weights from results/zoo, never trained here (another CPU trains other weights)
            from pclc.zoo import restore, uses_records

            restore(run.key, cfg.store, cfg.get("zoo_dir"), records=uses_records(cfg))
        return _train(cfg, run, until_epoch)


def _train(cfg: DictConfig, run: RunDir, until_epoch: int | None) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    T = int(cfg.trainer.epochs_per_phase)
    total = 2 * T
    stop = total if until_epoch is None else min(int(until_epoch), total)
    reused = open_run(cfg, run, until_epoch)
    if reused is not None:
        return reused
    unfinished = {"key": run.key, "finished": False, "epoch": stop, "path": str(run.path)}
    if (
        until_epoch is not None
        and run.checkpoint.exists()
        and int(load_tensors(run.checkpoint).get("epoch", 0)) >= stop
    ):
        return unfinished

    torch.manual_seed(int(cfg.seed))
    generator = torch.Generator().manual_seed(int(cfg.seed))  # shuffling and augmentation
    train_data, test_data = build_data(cfg.dataset, device)
    monitor = RobustMonitor(cfg).on(test_data)
    model = build_model(cfg.model).to(device)
    accel = Accel.build(cfg.get("accel"), model, device)
    state, warmup_from = start_state(
        cfg, run, model, T, stop, train, warmup_source(cfg) if cfg.loss.get("warmup") else None
    )
    record_config(cfg, run)  # the data loaded and the model built: the run starts
    threads_before = torch.get_num_threads()
    threads = _run_threads(state, run, accel)
    start = int(state["epoch"]) if state else 0
    metrics: list[dict[str, Any]] = list(state["metrics"]) if state else []
    if state:
        restore_rng(state, generator)

    phase_loss = [
        build_loss(c.loss, check_inputs=False) for c in (warmup_source(cfg) if cfg.loss.get("warmup") else cfg, cfg)
    ]
    adversary = build_adversary(cfg.trainer)
    mid_phase = state is not None and "optimizer" in state and start % T != 0  # keep Adam's moments
    optimizer, schedule = phase_optimizer(model, cfg.trainer, start % T, state["optimizer"] if mid_phase else None)

    name, tags = run_identity(cfg)
    tracker = build_tracker(
        cfg.logger,
        name=name,
        group=f"{cfg.dataset.name}-{cfg.model.name}",  # the experiment is a tag: a model serves many experiments
        config={"key": run.key, **OmegaConf.to_container(cfg, resolve=True)},
        run_id=f"train-{digest(run.key, 16)}",
        tags=tags,
    )  # the same W&B run across resumes
    prov = provenance(device)
    t0 = time.perf_counter()
    try:
        for epoch in range(start, stop):
            phase, in_phase = divmod(epoch, T)
            if in_phase == 0 and epoch != start:  # a new phase: fresh Adam and schedule
                optimizer, schedule = phase_optimizer(model, cfg.trainer)
            lr = optimizer.param_groups[0]["lr"]
            te = time.perf_counter()
            bar = progress.bar(
                train_data.num_batches(int(cfg.trainer.batch_size)), f"{run.key} epoch {epoch + 1}/{total}", "batch"
            )
            row = train_epoch(
                model,
                train_data,
                phase_loss[phase],
                optimizer,
                int(cfg.trainer.batch_size),
                generator,
                bar,
                adversary,
                accel,
            )
            schedule.step()
            bar.close()
            if not math.isfinite(row["train_loss"]):
                kept = (
                    f"the last good checkpoint (epoch {epoch}) is kept in {run.checkpoint}"
                    if epoch
                    else "no checkpoint was written"
                )
                raise NonFiniteLossError(
                    f"non-finite training loss at epoch {epoch + 1} of {run.key}; {kept}. "
                    "Lower trainer.lr or check the loss."
                )
            clean = clean_metrics(model, test_data, int(cfg.trainer.eval_batch_size))
            row = {
                "epoch": epoch + 1,
                "phase": phase + 1,
                "lr": lr,
                **row,
                "test_accuracy": clean["accuracy"],
                "prob_gap": clean["prob_gap"],
                **monitor(model, epoch + 1),
                "seconds": time.perf_counter() - te,
            }
            metrics.append(row)
            ckpt = {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                **rng_state(generator),
                "metrics": metrics,
                "warmup_from": warmup_from,
                "threads": threads,
                "accel": accel.describe(),
                "machine": prov["machine"],  # what trained these epochs (a resume elsewhere is refused)
            }
            if epoch + 1 == T:  # the warm-up first: a kill between the two writes leaves a resumable run
                atomic_torch_save(ckpt, run.warmup)
            atomic_torch_save(ckpt, run.checkpoint)
            atomic_write_json(run.metrics, metrics)
            tracker.log({k: v for k, v in row.items() if k not in ("epoch", "robust_attack")}, step=epoch + 1)
            # every epoch line goes to the log (train.log too), also when a bar showed the batches
            log.info(
                "%s epoch %d/%d phase %d loss %.4f train %.2f%% test %.2f%% gap %.3f (%.1fs)",
                run.key,
                epoch + 1,
                total,
                phase + 1,
                row["train_loss"],
                row["train_accuracy"],
                row["test_accuracy"],
                row["prob_gap"],
                row["seconds"],
            )
            if "robust_accuracy" in row:
                log.info(
                    "%s epoch %d robust %.2f%% (%s)", run.key, epoch + 1, row["robust_accuracy"], row["robust_attack"]
                )
        if stop < total:
            tracker.finish(0)
            return unfinished
        atomic_torch_save(model.state_dict(), run.model)
        summary = _summary(cfg, run, metrics, warmup_from, accel, prov, t0, threads, model)
        atomic_write_json(run.summary, summary)
        tracker.summary(summary)
        tracker.log_artifact(
            f"model-{run.key}",
            "model",
            [run.model, run.summary, run.config],
            {"key": run.key, "weights": summary["weights"], "test_accuracy": summary["test_accuracy"]},
        )
        tracker.finish(0)
        return summary
    except BaseException:
        tracker.finish(1)
        raise
    finally:
        torch.set_num_threads(threads_before)


# ------------------------------------------------------------------------------------------
# Hydra entrypoint
# ------------------------------------------------------------------------------------------
@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.jobs import run_job

    return run_job(train, cfg)


if __name__ == "__main__":  # run the importable module's main, so that launchers pickle its task by reference
    from pclc.train import main as _main

    _main()
