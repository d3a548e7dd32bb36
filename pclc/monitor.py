"""Robust accuracy during training: a learning curve for adversarial training (issue 31 chooses its epochs from
one). Every ``monitor.every`` epochs, the accuracy under ``monitor.attack`` (an attack config of configs/attack/)
on the first ``monitor.subset`` test images is added to the epoch's metrics row as ``robust_accuracy``.

Not part of a run's identity (train.yaml's ``monitor``, outside ``trainer``): it reads the model in eval mode,
changes no weight, and the attacks run in a forked RNG (``pclc.attacks.linf.seeded``), so a monitored run trains
the same weights as an unmonitored one (tests/test_monitor.py).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pclc.attacks import build_attack
from pclc.config import group_config
from pclc.data import DeviceData
from pclc.inputs import whole
from pclc.metrics import percent, predict

SEED = 1000  # the attack's seed: the same examples' random starts at every epoch


class RobustMonitor:
    """``monitor(model, epoch)`` -> ``{"robust_accuracy": %, "robust_attack": name}`` on the epochs it measures,
    else ``{}``. Built (and checked) from the config before any work; :meth:`on` gives it the test data."""

    def __init__(self, cfg: DictConfig):
        self.attack = None
        monitor = cfg.get("monitor")
        if not monitor or not monitor.get("attack"):
            return
        self.every = whole("monitor.every", monitor.get("every", 1))
        self.n = whole("monitor.subset", monitor.get("subset", 500))
        adv = cfg.trainer.get("adversarial") or {}
        eps = monitor.get("eps")
        if eps is None:  # the training eps when there is one, else the dataset's smallest
            eps = adv.get("eps_range", [None])[-1] if adv else None
        self.eps = float(eps if eps is not None else min(cfg.dataset.eps))
        if not 0 < self.eps <= 1:
            raise ValueError(f"monitor.eps must be in (0, 1], got {self.eps}")
        self.attack = build_attack(group_config("attack", str(monitor.attack)))
        self.name = f"{monitor.attack}@{self.eps:g}"
        self.batch_size = int(cfg.trainer.eval_batch_size)

    def on(self, test_data: DeviceData) -> RobustMonitor:
        """The first ``monitor.subset`` test images, as every evaluation sees them (floats in [0, 1])."""
        if self.attack is not None:
            self.x = test_data.x[: self.n].float().div(255)
            self.y = test_data.y[: self.n]
        return self

    def __call__(self, model, epoch: int) -> dict[str, float | str]:
        if self.attack is None or epoch % self.every:
            return {}
        was_training = model.training
        model.eval()
        try:
            adv = self.attack(model, self.x, self.y, self.eps, SEED)
            acc = percent(predict(model, adv, self.batch_size).argmax(1) == self.y)
        finally:
            model.train(was_training)
        return {"robust_accuracy": acc, "robust_attack": self.name}
