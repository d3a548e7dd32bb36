"""Fault injection: SIGKILLs at random moments of training (mid-epoch, during checkpoint, metrics and
warm-up writes) and of an iterative-attack evaluation (mid-batch, during partial and result writes), each
followed by the same command, end with the weights and numbers of an uninterrupted run and no temp files.
Also: two identical commands at once train the run once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # fault injection: kills, signals, concurrent workers

# The command under test: train PC+LC (its CE warm-up first), then evaluate it under BIM. Markers on stdout
# say where it is; each write and each batch sleeps a little so that a kill can land inside it.
SCRIPT = r"""
import sys, time
from pathlib import Path
import pclc.files as io, pclc.data as data
real_atomic, real_batches = io._atomic, data.DeviceData.batches
def slow_atomic(path, write):
    def w(f):
        write(f); f.flush(); print("WRITE", Path(path).name, flush=True); time.sleep(0.15)
    real_atomic(path, w)
def slow_batches(self, *a, **k):
    for b in real_batches(self, *a, **k):
        if self.x.shape[0] > 256: print("BATCH", flush=True); time.sleep(0.02)
        yield b
io._atomic, data.DeviceData.batches = slow_atomic, slow_batches
from omegaconf import OmegaConf
from pclc.config import compose, group_config
from pclc.evaluate import evaluate
from pclc.train import train
import dataclasses
import pclc.evaluate as ev
real_build = ev.build_attack
def build(*a, **k):
    atk = real_build(*a, **k)
    def fn(model, x, y, eps, seed):
        print("ATTACK", flush=True); time.sleep(0.05); return atk.fn(model, x, y, eps, seed)
    return dataclasses.replace(atk, fn=fn)
ev.build_attack = build
over = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2", "trainer.batch_size=64",
        f"store={sys.argv[1]}"]
train(compose("train", [*over, "loss=pclc"]))
cfg = compose("evaluate", [*over, "loss=pclc", "eval.subset=128", "eval.batch_size=16", "eval.group_batches=2"])
cfg.suite = OmegaConf.create({"entries": [{"attack": "bim", "eps": [0.1]}],
                              "attacks": {"bim": {**group_config("attack", "bim"), "nb_iter": 5}}})
print("RESULT", evaluate(cfg)["results"][0]["file"], flush=True)
"""
# The kill points in the order the command reaches them (k: the k-th such marker of that process, drawn at
# random from the range), so that each is reached after the previous kills: 12 kills.
SCHEDULE = [
    ("BATCH", (2, 6)),
    ("WRITE checkpoint.pt", (1, 1)),
    ("BATCH", (2, 6)),
    ("WRITE warmup.pt", (1, 1)),
    ("WRITE checkpoint.pt", (1, 1)),
    ("WRITE metrics.json", (1, 1)),
    ("BATCH", (2, 6)),
    ("WRITE checkpoint.pt", (1, 1)),
    ("WRITE model.pt", (1, 1)),
    ("ATTACK", (2, 4)),
    ("WRITE .partial.pt", (1, 2)),
    ("WRITE result", (1, 1)),
]


def _start(store: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _matches(line: str, kind: str) -> bool:
    if kind == "WRITE .partial.pt":
        return line.startswith("WRITE") and line.endswith(".partial.pt")
    if kind == "WRITE result":
        return line.startswith("WRITE white-bim")
    return line == kind


def _run(store: Path, kill: tuple[str, int] | None = None) -> tuple[str | None, bool]:
    """Run the command; with ``kill`` = (kind, k), SIGKILL it at the k-th marker of that kind. Returns the
    result file (None if killed) and whether the kill was delivered."""
    p, seen, result = _start(store), 0, None
    for line in p.stdout:
        line = line.strip()
        if kill and _matches(line, kill[0]):
            seen += 1
            if seen == kill[1]:
                p.send_signal(signal.SIGKILL)
                p.wait()
                return None, True
        if line.startswith("RESULT"):
            result = line.split(" ", 1)[1]
    assert p.wait() == 0, p.stderr.read()
    return result, False


def test_random_sigkills_change_nothing(tmp_path):
    ref_file, _ = _run(tmp_path / "reference")
    rng, delivered, store = random.Random(12), [], tmp_path / "killed"
    for kind, (lo, hi) in SCHEDULE:  # N = 12 kills, each followed by the same command
        _, hit = _run(store, (kind, rng.randint(lo, hi)))
        assert hit, f"the command finished before {kind}"
        delivered.append(kind)
    result, _ = _run(store)  # the same command once more, to the end
    ref, got = json.loads(Path(ref_file).read_text()), json.loads(Path(result).read_text())
    assert got["adv_accuracy"] == ref["adv_accuracy"] and got["records"] == ref["records"]
    for name, file in (
        ("-ce-", "warmup.pt"),
        ("-pclc-", "model.pt"),
    ):  # the CE warm-up and PC+LC, bit for bit
        a, b = (
            torch.load(next(p for p in root.iterdir() if name in p.name) / file, weights_only=True)
            for root in (tmp_path / "reference", store)
        )
        a, b = (t["model"] if "model" in t else t for t in (a, b))
        assert all(torch.equal(a[k], b[k]) for k in a), file
    assert not list(store.rglob("*.tmp")) and not list(store.rglob("*.partial.pt"))
    print(
        f"fault injection: {len(delivered)} kills: "
        + ", ".join(f"{k} x{delivered.count(k)}" for k in sorted(set(delivered)))
    )


def test_two_identical_commands_at_once_train_the_run_once(tmp_path):
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); "
        "from pclc.config import compose; from pclc.train import train; "
        "s = train(compose('train', ['dataset=fake', 'model=lenet5', 'logger=none', 'loss=pclc', "
        "'trainer.epochs_per_phase=3', f'store={sys.argv[1]}'])); print('REUSED' if s.get('reused') else 'TRAINED')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o[0].strip().splitlines()[-1] for o in outs) == ["REUSED", "TRAINED"], outs
    assert any("waiting for run" in o[1] for o in outs), outs  # the second one said who held it
    runs = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert [m["epoch"] for m in metrics] == list(range(1, len(metrics) + 1))
    pclc = next(r for r in runs if "-pclc-" in r.name)
    assert (
        json.loads((pclc / "summary.json").read_text())["epochs"]
        == 6
        == len(json.loads((pclc / "metrics.json").read_text()))
    )


def test_a_two_worker_joblib_sweep_leaves_consistent_runs(tmp_path):
    """CE and PC+LC fanned out over 2 processes both need the CE run (PC+LC for its warm-up): the lock makes
    one train it and the other reuse it; python -m pclc.train's task pickles (it is the importable module's)."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pclc.train",
            "-m",
            "dataset=fake",
            "loss=ce,pclc",
            "logger=none",
            "trainer.epochs_per_phase=2",
            f"store={tmp_path / 'runs'}",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for r in (tmp_path / "runs").glob("fake-*"):
        metrics = json.loads((r / "metrics.json").read_text())
        summary = json.loads((r / "summary.json").read_text())
        assert [m["epoch"] for m in metrics] == [1, 2, 3, 4] and summary["epochs"] == 4, r.name
    assert len(list((tmp_path / "runs").glob("fake-*"))) == 2


def _train_cli(store: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pclc.train",
            "dataset=fake",
            "model=lenet5",
            "loss=pclc",
            "logger=none",
            f"trainer.epochs_per_phase={epochs}",
            "trainer.batch_size=8",
            f"store={store}",
            f"hydra.run.dir={store / 'hydra'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # a background
    # runner (nohup, `cmd &`) starts with SIGINT ignored, and Python then keeps ignoring it: give the child the
    # default, as a terminal's foreground command has


def test_sigint_and_sigterm_exit_cleanly_and_the_run_resumes_to_the_same_weights(tmp_path):
    """Issue 28, item 3: one line, exit 130 / 143, no traceback, no temp file, no lock held; the same command
    then ends with the weights of an uninterrupted run."""
    import time

    from filelock import FileLock

    ref = _train_cli(tmp_path / "ref", 10)  # 64 batches an epoch: the signal lands long before the end
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        store = tmp_path / sig.name
        p = _train_cli(store, 10)
        deadline = time.time() + 300
        while not list(store.glob("*/checkpoint.pt")) and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=300)
        assert p.returncode == code, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines == [
            f"error: stopped by {sig.name}; what finished is kept and the same command resumes from there"
        ], err
        assert not list(store.rglob("*.tmp"))
        for lock in store.glob(".locks/*.lock"):
            FileLock(str(lock)).acquire(timeout=0)  # not held by anyone
        again = _train_cli(store, 10)
        assert again.wait(timeout=600) == 0, again.stderr.read()
        a, b = (
            torch.load(next(s.glob("fake-lenet5-pclc-*/model.pt")), weights_only=True)
            for s in (tmp_path / "ref", store)
        )
        assert all(torch.equal(a[k], b[k]) for k in a)
