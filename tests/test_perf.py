"""Fast paths are correct on CPU: channels_last/compile keep results; bf16 attacks agree with fp32; bench runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pclc.attacks import build_attack
from pclc.config import compose
from pclc.data import load_splits
from pclc.evaluate import load_run, with_precision
from pclc.store import RunDir
from pclc.train import train

ROOT = Path(__file__).resolve().parents[1]
BASE = ["dataset=fake", "model=lenet5", "loss=ce", "logger=none", "trainer.epochs_per_phase=2"]


@pytest.mark.parametrize("accel", [["accel.channels_last=true"], ["accel.compile=aot_eager"]],
                         ids=["channels_last", "compile"])
def test_same_seed_same_accuracy_with_fast_paths(tmp_path, accel):
    plain = train(compose("train", [*BASE, f"store={tmp_path / 'a'}"]))
    fast = train(compose("train", [*BASE, f"store={tmp_path / 'b'}", *accel]))
    assert fast["key"] == plain["key"]  # speed options are not part of a run's identity
    assert abs(fast["test_accuracy"] - plain["test_accuracy"]) <= 2.0
    assert fast["accel"]["channels_last"] == ("channels_last" in accel[0]) and \
        fast["accel"]["compiled"] == ("compile" in accel[0])


def test_bf16_attacks_stay_within_one_point_of_fp32(tmp_path):
    s = train(compose("train", [*BASE, f"store={tmp_path}", "dataset.n_test=400"]))
    cfg, model = load_run(RunDir(tmp_path, s["key"]), torch.device("cpu"))
    _, test = load_splits(cfg.dataset)
    x, y = test.x.float() / 255, test.y
    params = {"nb_iter": 10, "eps_iter": 0.01, "rand_init": False}
    acc = {}
    for prec in ("fp32", "bf16"):
        m = with_precision(model, prec)
        adv = build_attack("bim", m, 0.05, 10, params).perturb(x, y)
        with torch.no_grad():
            acc[prec] = 100.0 * float((model(adv).argmax(1) == y).float().mean())
    assert abs(acc["bf16"] - acc["fp32"]) <= 1.0, acc
    with pytest.raises(ValueError, match="precision"):
        with_precision(model, "fp8")


def test_bench_runs_end_to_end_in_tiny_mode(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--models", "fmnist:lenet5",
                        "--root", str(tmp_path / "no-data"), "--out", str(tmp_path / "bench")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    m = res["models"][0]
    assert m["model"] == "lenet5" and m["forward_flops_per_image"] > 4e5  # LeNet-5: ~0.4 MMAC = ~0.8 MFLOP
    for k in ("epoch_ours_s", "epoch_reference_s", "pgd40_ours_s", "pgd40_reference_s", "step_ce_s", "step_pclc_s"):
        assert m[k] > 0
    assert res["peak_tflops"] > 0 and "PC+LC / CE" in (tmp_path / "bench.md").read_text()
