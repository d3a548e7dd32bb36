"""Adding a component is one config file and one registered function: a new attack and a new dataset,
from configs outside configs/ (PCLC_CONFIG_PATH), trained, evaluated and planned on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pclc.attacks import register_attack
from pclc.config import compose
from pclc.costs import split_sizes
from pclc.data import Split, register_loader
from pclc.evaluate import evaluate
from pclc.train import train


@register_attack("uniform-noise", bounded=True, passes=lambda p: p["draws"] / 2)
def uniform_noise(model, x, y, eps, seed, draws: int):
    """The best of ``draws`` uniform perturbations in the eps-ball (per example, lowest true-class logit)."""
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU, moved to x's device: the same noise on any device
    best, score = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
    with torch.no_grad():
        for _ in range(draws):
            cand = (x + eps * (2 * torch.rand(x.shape, generator=g).to(x.device) - 1)).clamp(0, 1)
            s = model(cand).gather(1, y[:, None]).squeeze(1)
            better = s < score
            best[better], score[better] = cand[better], s[better]
    return best


@register_loader("stripes")
def stripes(root: Path, download: bool, cfg) -> tuple[Split, Split]:
    """Synthetic 4-class data: horizontal or vertical stripes, dark or bright."""

    def make(n: int, seed: int) -> Split:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 4
        s = int(cfg.size)
        line = (torch.arange(s) % 4 < 2).float()
        img = torch.where(
            (y % 2 == 0)[:, None, None],
            line[None, :, None].expand(n, s, s),
            line[None, None, :].expand(n, s, s),
        )
        img = img * (0.5 + 0.5 * (y >= 2).float())[:, None, None] + 0.1 * torch.randn(n, s, s, generator=g)
        return Split((img.clamp(0, 1)[:, None] * 255).round().to(torch.uint8), y)

    return make(int(cfg.examples.train), 0), make(int(cfg.examples.test), 1)


DATASET = """# Stripes: synthetic 4-class data (a test's own dataset)
name: stripes
root: ${oc.env:PCLC_DATA,data}
download: false
examples: {train: 256, test: 64}
subset: {train: null, test: null}
channels: 1
size: 28
num_classes: 4
family: grey
augment: null
eps: [0.1, 0.3]
protocol: {T: 1, milestones: []}
"""
ATTACK = """# Uniform noise: a test's own attack
_target_: test_extend.uniform_noise
draws: 8
"""


@pytest.fixture
def own_configs(tmp_path, monkeypatch):
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "attack").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "stripes.yaml").write_text(DATASET)
    (tmp_path / "conf" / "attack" / "uniform_noise.yaml").write_text(ATTACK)
    monkeypatch.setenv("PCLC_CONFIG_PATH", str(tmp_path / "conf"))
    monkeypatch.setenv("PCLC_DATA", str(tmp_path / "data"))
    return tmp_path


def test_a_new_attack_and_dataset_run_through_train_evaluate_and_the_planner(own_configs):
    over = ["dataset=stripes", "model=lenet5", "loss=ce", "logger=none", f"store={own_configs / 'runs'}"]
    summary = train(compose("train", over))
    assert summary["finished"] and summary["dataset"] == "stripes" and summary["epochs"] == 2
    cfg = compose("evaluate", over)
    from omegaconf import OmegaConf

    from pclc.config import group_config

    cfg.suite = OmegaConf.create(
        {
            "families": ["grey"],
            "entries": [{"attack": "uniform_noise", "eps": "dataset"}],
            "attacks": {"uniform_noise": group_config("attack", "uniform_noise")},
        }
    )
    out = evaluate(cfg)
    assert [r["eps"] for r in out["results"]] == [0.1, 0.3] and out["n"] == 64
    r = json.loads(Path(out["results"][1]["file"]).read_text())
    assert r["kind"] == "uniform-noise" and r["params"] == {"draws": 8} and r["max_linf"] <= 0.3 + 1e-6
    assert r["adv_accuracy"] <= r["clean_accuracy"]
    # the planner's sizes and costs come from the config and the registration, not from lists elsewhere
    from pclc.attacks import build_attack

    assert split_sizes(cfg.dataset) == (256, 64) and build_attack(group_config("attack", "uniform_noise")).passes == 4
    bad = {**OmegaConf.to_container(group_config("attack", "uniform_noise")), "drawz": 3}
    with pytest.raises(ValueError, match="unknown parameter.*drawz"):
        build_attack(bad)
