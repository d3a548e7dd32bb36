"""Cost model of the reproduce planner: predicted seconds from what this device has measured.

Two sources, best first: the run store (per-epoch seconds in ``metrics.json``, per-example seconds of every
evaluation) and, for what the store has not measured yet, ``results/bench-<device>.json`` (``make bench``):
its measured seconds per FLOP of training and of attack steps, scaled by each model's FLOPs, the dataset's
size and the attack's number of gradient steps.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from pclc.models import create_model

TRAIN_SIZES = {"mnist": 60000, "kmnist": 60000, "fmnist": 60000, "cifar10": 50000, "cifar100": 50000,
               "svhn": 73257, "tinyimagenet": 100000}
TEST_SIZES = {"svhn": 26032}  # every other dataset of the paper has 10,000 test images (Tiny ImageNet: val/)


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's model (``h100``): the suffix of ``results/bench-<slug>.json``."""
    return "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).split()[-1].lower()


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs of one forward pass of ``x`` (torch's FLOP counter: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


@functools.lru_cache(maxsize=None)
def model_flops(model: str, num_classes: int, channels: int, size: int) -> float:
    """Forward FLOPs per image of a registered model on this input shape."""
    return forward_flops(create_model(model, num_classes, channels, size).eval(), torch.zeros(1, channels, size, size))


def split_sizes(ds: DictConfig) -> tuple[int, int]:
    """(train, test) examples of a dataset config, honouring ``subset``."""
    name = ds.name
    n_train = int(ds.get("n_train") or TRAIN_SIZES.get(name, 50000))
    n_test = int(ds.get("n_test") or TEST_SIZES.get(name, 10000))
    sub = ds.get("subset") or {}
    return (min(n_train, int(sub.get("train") or n_train)), min(n_test, int(sub.get("test") or n_test)))


def load_bench(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(bench: dict, model: str, channels: int, key: str) -> float | None:
    """Measured seconds per FLOP of ``key`` ("epoch" or "pgd"), from the same model, else one of the same
    channel count (same kind of data), else any benchmarked model."""
    rows = bench.get("models", [])
    for pick in (lambda r: r["model"] == model, lambda r: _channels(r) == channels, lambda r: True):
        for r in rows:
            if pick(r):
                if key == "epoch":
                    return r["epoch_ours_s"] / (3 * r["forward_flops_per_image"] * r["train_images"])
                return r["pgd40_ours_s"] / (40 * 2 * r["forward_flops_per_image"] * 10000)
    return None


def _channels(row: dict) -> int:
    return 1 if row["dataset"] in ("mnist", "kmnist", "fmnist") else 3


def adversarial_factor(trainer: DictConfig) -> float:
    """Extra cost of adversarial training: each attack step is a forward and input-gradient pass (about 2/3 of
    a training step) over the adversarial share of the batch."""
    adv = trainer.get("adversarial")
    if not adv:
        return 1.0
    steps = int(adv.get("steps") or 1)
    return 1.0 + float(adv.fraction) * steps * 2 / 3


def epoch_seconds(bench: dict, ds: DictConfig, model: str, trainer: DictConfig) -> float | None:
    """Predicted seconds of one training epoch from the benchmark's seconds per training FLOP."""
    rate = _rate(bench, model, int(ds.channels), "epoch")
    if rate is None:
        return None
    flops = model_flops(model, int(ds.num_classes), int(ds.channels), int(ds.size))
    return rate * 3 * flops * split_sizes(ds)[0] * adversarial_factor(trainer)


def attack_passes(name: str, params: DictConfig) -> float:
    """Forward + input-gradient passes per example of an attack config (a forward alone counts 1/2)."""
    p = params or {}
    if name == "fgsm":
        return 1.0
    if name == "cw" or name.startswith("cw"):
        return float(p.get("max_iterations", 1000)) * float(p.get("binary_search_steps", 9))
    if name == "spsa":
        return float(p.get("nb_iter", 1)) * float(p.get("nb_sample", 128)) * 2 / 2
    return float(p.get("nb_iter", 40))  # bim, pgd, mim and their variants


def attack_seconds_per_example(bench: dict, ds: DictConfig, model: str, name: str, params: DictConfig) -> float | None:
    """Predicted seconds per attacked example from the benchmark's seconds per attack-step FLOP."""
    rate = _rate(bench, model, int(ds.channels), "pgd")
    if rate is None:
        return None
    flops = model_flops(model, int(ds.num_classes), int(ds.channels), int(ds.size))
    return rate * 2 * flops * attack_passes(name, params)
