"""The single-GPU path, tested on CPU (issue 33): the code paths a CUDA machine takes, with torch.cuda's answers
monkeypatched where a GPU would give them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import pclc.train as train_mod
from pclc.config import compose, resolve_device
from pclc.costs import device_slug

FAKE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2", "device=cpu"]


@pytest.mark.parametrize(
    "name,slug",
    [
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
        ("NVIDIA A100 80GB PCIe", "nvidia-a100-80gb-pcie"),
        ("NVIDIA H100 PCIe", "nvidia-h100-pcie"),
        ("NVIDIA H200", "nvidia-h200"),
    ],
)
def test_bench_files_are_named_by_the_whole_gpu_name(monkeypatch, name, slug):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    assert device_slug(torch.device("cuda")) == slug
    assert device_slug(torch.device("cpu")) == "cpu"


def test_checkpoints_carry_the_cuda_rng_and_a_resume_restores_it(tmp_path, monkeypatch):
    """VGG-13's Dropout draws on the GPU: a resume restores the CUDA generators as well as the CPU one."""
    from pclc.files import load_tensors

    state = [torch.arange(8, dtype=torch.uint8)]
    restored = []
    import pclc.resume as resume

    monkeypatch.setattr(resume, "has_cuda", lambda: True)  # the rest of torch stays on the CPU
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [t.clone() for t in state])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append([t.clone() for t in s]))
    cfg = compose("train", [*FAKE, f"store={tmp_path}", "loss=ce"])
    first = train_mod.train(cfg, until_epoch=1)
    ckpt = load_tensors(Path(first["path"]) / "checkpoint.pt")
    assert torch.equal(ckpt["cuda_rng"][0], state[0])
    train_mod.train(cfg)
    assert restored and torch.equal(restored[0][0], state[0])


def test_attacks_run_with_cudnn_benchmark_off(tmp_path):
    from pclc.evaluate import evaluate

    train_mod.train(compose("train", [*FAKE, f"store={tmp_path}", "loss=ce"]))
    torch.backends.cudnn.benchmark = True  # as training on CUDA leaves it
    try:
        evaluate(
            compose(
                "evaluate",
                [
                    *FAKE,
                    f"store={tmp_path}",
                    "loss=ce",
                    "eval.subset=20",
                    "suite.entries=[{attack: fgsm, eps: [0.1]}]",
                ],
            )
        )
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = False


def test_auto_says_so_when_a_gpu_is_there_but_unusable(monkeypatch, caplog):
    import shutil

    import pclc.config as config

    config._warn_unusable_gpu.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    with caplog.at_level(logging.WARNING):
        assert resolve_device("auto").type == "cpu"
    assert "a GPU is present but torch" in caplog.text and "device=auto runs on the CPU" in caplog.text
    config._warn_unusable_gpu.cache_clear()


def test_deterministic_mode_requests_deterministic_algorithms(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag: calls.append(flag))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    acc = train_mod.Accel.build(
        compose("train", ["accel.deterministic=true"]).accel, torch.nn.Linear(2, 2), torch.device("cpu")
    )
    import os

    assert calls == [True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not acc.bf16
    torch.backends.cudnn.deterministic = False


@pytest.mark.slow
def test_gpu_check_runs_every_step_at_a_tiny_size_on_cpu(tmp_path):
    """make gpu-check with GPU_CHECK_DEVICE=cpu: tests, bench, Table 1 (fake data), the whole-paper plan."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    if os.environ.get("PCLC_IN_GPU_CHECK"):
        pytest.skip("inside gpu-check's own test step")
    r = subprocess.run(
        [sys.executable, str(root / "scripts" / "gpu_check.py"), "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["tests", "bench", "table1", "plan"]
    assert all(s["exit"] == 0 for s in summary["steps"]) and "predicted time" in summary["steps"][3]["last_line"]
    assert json.loads((tmp_path / "bench-cpu.json").read_text())["models"][0]["model"] == "lenet5"
    assert "**Predicted time for the rest:" in (tmp_path / "plan.md").read_text()  # the plan as a results file
    assert (tmp_path / "tables" / "tiny" / "table1.csv").exists() and "| table1 | 0 |" in (
        tmp_path / "summary.md"
    ).read_text()


def test_gpu_check_shares_a_budget_among_the_steps_still_to_run():
    """A short GPU lease: under --budget each step gets its share of the time left, so a slow early step cannot
    starve the steps after it, and time a step leaves unused goes to the rest."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_check", root / "scripts" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    names = ["tests", "bench", "table1", "plan"]
    assert gc.step_timeout(0, names, 540, None) == 540  # no budget: the per-step cap
    # 95 s left for the four steps: shares 2.5 : 5 : 1.5 : 0.5
    assert gc.step_timeout(0, names, 540, deadline=95.0, now=0.0) == 25
    assert gc.step_timeout(1, names, 540, deadline=95.0, now=0.0) == 67  # 95 * 5 / 7
    assert gc.step_timeout(3, names, 540, deadline=95.0, now=0.0) == 95  # the last step gets all that is left
    assert gc.step_timeout(3, names, 60, deadline=95.0, now=0.0) == 60  # never above the cap
    assert gc.step_timeout(2, names, 540, deadline=95.0, now=94.0) == 10  # late: still starts, says why it stopped
