"""Training through the run store: protocol, reuse, resume, warm-up reuse, errors, W&B, multirun."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import need_wandb

import pclc.train as train_mod
from pclc.config import compose
from pclc.files import CorruptFileError
from pclc.store import RunDir, run_key
from pclc.train import CheckpointMismatchError, NonFiniteLossError, train

FAKE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2"]


def cfg_for(tmp_path, *over, loss="ce"):
    return compose("train", [*FAKE, f"loss={loss}", f"store={tmp_path / 'runs'}", *over])


def count_epochs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = train_mod.train_epoch

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_epoch", counted)
    return calls


def test_ce_run_writes_the_store_layout_and_learns(tmp_path):
    s = train(cfg_for(tmp_path))
    run = RunDir(tmp_path / "runs", s["key"])
    for f in ("config.yaml", "checkpoint.pt", "warmup.pt", "metrics.json", "model.pt", "summary.json"):
        assert (run.path / f).exists(), f
    m = json.loads(run.metrics.read_text())
    assert [r["epoch"] for r in m] == [1, 2, 3, 4] and [r["phase"] for r in m] == [1, 1, 2, 2]
    assert {"train_loss", "train_accuracy", "test_accuracy", "lr", "prob_gap", "seconds"} <= set(m[0])
    assert s["finished"] and s["epochs"] == 4 and s["test_accuracy"] == m[-1]["test_accuracy"]
    assert s["test_accuracy"] > 50  # 10 well-separated synthetic classes: chance is 10%
    assert -1.0 <= s["prob_gap"] <= 1.0 and s["provenance"]["commit"]
    assert (
        torch.load(run.model, weights_only=True).keys() == torch.load(run.checkpoint, weights_only=True)["model"].keys()
    )


def test_identical_config_reuses_the_finished_run(tmp_path, monkeypatch):
    first = train(cfg_for(tmp_path))
    calls = count_epochs(monkeypatch)
    again = train(cfg_for(tmp_path))
    assert calls == [] and again["reused"] and again["key"] == first["key"]
    forced = train(cfg_for(tmp_path, "force=true"))
    assert len(calls) == 4 and not forced.get("reused")
    assert len(list((tmp_path / "runs").glob(f"{first['key']}.replaced-*"))) == 1  # the old run is kept


def test_key_ignores_paths_and_logging_but_not_training_settings(tmp_path):
    base = run_key(cfg_for(tmp_path))
    assert run_key(cfg_for(tmp_path / "elsewhere", "logger=wandb", "dataset.root=/x")) == base
    assert run_key(cfg_for(tmp_path, "seed=1")) != base
    assert run_key(cfg_for(tmp_path, "trainer.lr=0.001")) != base
    assert run_key(cfg_for(tmp_path, loss="gce")) != base


def test_pclc_reuses_the_ce_warmup_and_records_it(tmp_path, monkeypatch):
    ce = train(cfg_for(tmp_path))
    calls = count_epochs(monkeypatch)
    pc = train(cfg_for(tmp_path, loss="pclc"))
    assert len(calls) == 2  # only phase 2: the CE run's epoch-T checkpoint was reused
    assert pc["warmup_from"] == ce["key"]
    metrics = json.loads(RunDir(tmp_path / "runs", pc["key"]).metrics.read_text())
    assert [r.get("source") for r in metrics] == [ce["key"], ce["key"], None, None]
    ce_metrics = json.loads(RunDir(tmp_path / "runs", ce["key"]).metrics.read_text())
    assert metrics[1]["test_accuracy"] == ce_metrics[1]["test_accuracy"]


def test_pclc_first_trains_the_ce_warmup_once(tmp_path, monkeypatch):
    calls = count_epochs(monkeypatch)
    pc = train(cfg_for(tmp_path, loss="pclc"))
    assert len(calls) == 4  # 2 warm-up epochs (in the CE run's folder) + 2 PC+LC epochs
    ce = train(cfg_for(tmp_path))
    assert len(calls) == 6 and ce["warmup_from"] is None  # the CE run resumed from its epoch 2
    assert pc["warmup_from"] == ce["key"]


def test_resume_after_interruption_gives_identical_weights(tmp_path, monkeypatch):
    done = train(cfg_for(tmp_path / "a", loss="pclc"))
    real = train_mod.train_epoch
    calls = []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_epoch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path / "b", loss="pclc"))
    resumed = train(cfg_for(tmp_path / "b", loss="pclc"))
    a = torch.load(Path(done["path"]) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed["path"]) / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_accuracy"] == done["test_accuracy"]


def test_a_checkpoint_from_another_machine_type_is_not_resumed(tmp_path, monkeypatch, caplog):
    """The same seed trains other weights on another CPU: a run (or a PC+LC warm-up) begun on one machine type and
    finished on another would be labelled with the second alone. The store outlives sessions whose machines differ."""
    import pclc.resume as resume_mod

    real_epoch, real_machine, calls = train_mod.train_epoch, resume_mod.machine, []

    def crash_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("the session ended")
        return real_epoch(*a, **k)

    def elsewhere(device):
        return {**real_machine(device), "cpu_model": "Intel Xeon Platinum", "cpu_capability": "AVX2"}

    cfg = cfg_for(tmp_path)
    monkeypatch.setattr(train_mod, "train_epoch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    run = RunDir(tmp_path / "runs", run_key(cfg))
    assert (
        torch.load(run.checkpoint, weights_only=True)["machine"]["cpu_model"]
        == real_machine(torch.device("cpu"))["cpu_model"]
    )

    monkeypatch.setattr(resume_mod, "machine", elsewhere)
    other = r"trained \(to epoch 1\) on .* this machine is (.*host CPU )?Intel Xeon"  # a GPU's line names its host
    with pytest.raises(CheckpointMismatchError, match=other):
        train(cfg)
    assert not run.summary.exists()

    monkeypatch.setattr(resume_mod, "machine", real_machine)
    ce = train(cfg)  # its own machine type finishes it
    monkeypatch.setattr(resume_mod, "machine", elsewhere)
    with pytest.raises(CheckpointMismatchError, match=f"warm-up run {ce['key']}"):
        train(cfg_for(tmp_path, loss="pclc"))  # PC+LC's first phase is the CE run's
    assert train(cfg_for(tmp_path, "force=true"))["finished"]  # retrained here from the start

    # a checkpoint from before machines were recorded: taken as this machine's, and said so
    monkeypatch.setattr(train_mod, "train_epoch", crash_on_second)
    calls.clear()
    legacy = cfg_for(tmp_path, "seed=3")
    with pytest.raises(KeyboardInterrupt):
        train(legacy)
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    path = RunDir(tmp_path / "runs", run_key(legacy)).checkpoint
    state = torch.load(path, weights_only=True)
    del state["machine"]
    torch.save(state, path)
    assert train(legacy)["finished"]
    assert "does not record the machine that trained it" in caplog.text


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = train_mod.build_loss
    batches = []  # fake data: 512 images = 2 batches an epoch; the loss turns NaN in epoch 2

    def nan_from_third_batch(loss_cfg, check_inputs=True):
        fn = real(loss_cfg, check_inputs=check_inputs)

        def loss(logits, y):
            batches.append(1)
            return fn(logits, y) * (float("nan") if len(batches) >= 3 else 1.0)

        return loss

    monkeypatch.setattr(train_mod, "build_loss", nan_from_third_batch)
    cfg = cfg_for(tmp_path, loss="gce")
    with pytest.raises(NonFiniteLossError, match="epoch 2.*epoch 1"):
        train(cfg)
    ck = torch.load(RunDir(tmp_path / "runs", run_key(cfg)).checkpoint, weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not RunDir(tmp_path / "runs", run_key(cfg)).summary.exists()


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    cfg = cfg_for(tmp_path, "trainer.epochs_per_phase=1")
    run = RunDir(tmp_path / "runs", run_key(cfg))
    run.path.mkdir(parents=True)
    run.checkpoint.write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match="checkpoint.pt"):
        train(cfg)
    other = train(cfg_for(tmp_path, "model=cnn3", "trainer.epochs_per_phase=1"))
    run.checkpoint.write_bytes((Path(other["path"]) / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointMismatchError, match="does not fit this model"):
        train(cfg)


def test_invalid_settings_fail_before_any_work(tmp_path, monkeypatch):
    calls = count_epochs(monkeypatch)
    for bad, words in [
        (["loss.params.xi=1.5"], "xi"),
        (["loss.params.lam=-1"], "lam"),
        (["trainer.lr=0"], "lr"),
        (["model=vgg13"], "vgg13"),
    ]:
        with pytest.raises(ValueError, match=words):
            train(cfg_for(tmp_path, *bad, loss="pclc"))
    assert calls == [] and not (tmp_path / "runs").exists()


def test_wandb_logs_config_metrics_and_finishes_a_crashed_run(tmp_path, monkeypatch):
    wandb = need_wandb()

    def cfg(wandb_dir):
        return compose(
            "train",
            [
                *FAKE[:2],
                "loss=ce",
                f"store={tmp_path / 'runs'}",
                "logger.mode=offline",
                f"logger.dir={wandb_dir}",
                "trainer.epochs_per_phase=1",
            ],
        )

    with monkeypatch.context() as m:
        m.setattr(train_mod, "train_epoch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            train(cfg(tmp_path / "crashed"))
    assert wandb.run is None  # the crashed run was finished
    assert len(glob.glob(str(tmp_path / "crashed" / "wandb" / "offline-run-*" / "run-*.wandb"))) == 1
    train(cfg(tmp_path / "ok"))
    # wandb-core writes the offline file asynchronously: finish() can return while the file still holds only
    # its 7-byte header (seen in CI, wandb 0.31). teardown() waits for the service to flush and exit.
    wandb.teardown()
    files = glob.glob(str(tmp_path / "ok" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    raw = Path(files[0]).read_bytes()  # protobuf records: keys and names are stored as UTF-8
    for word in (
        b"test_accuracy",
        b"prob_gap",
        b"train_loss",
        b"fake-lenet5-ce-s0",
        b"lenet5",
        b"fake-lenet5",
        run_key(cfg(tmp_path)).encode(),
    ):
        assert word in raw, word


def _run_cli(args, tmp_path):
    env = {**os.environ, "PCLC_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pclc.train",
            *args,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


@pytest.mark.slow
def test_multirun_makes_one_run_per_loss(tmp_path):
    r = _run_cli(["-m", "dataset=fake", "loss=ce,gce,pclc", "logger=none", "trainer.epochs_per_phase=1"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert sorted(s["loss"] for s in summaries) == ["ce", "gce", "pclc"]
    # the sweep ends with its summary: a line per job with its run and accuracy
    jobs = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("job ")]
    assert len(jobs) == 3 and "sweep of 3 jobs" in r.stdout, r.stdout[-2000:]
    for s in summaries:
        assert any(f"loss={s['loss']}" in j and f"{s['test_accuracy']:.2f}%" in j and s["key"] in j for j in jobs)


@pytest.mark.slow
def test_multirun_failure_does_not_stop_the_other_jobs(tmp_path):
    r = _run_cli(["-m", "dataset=fake", "model=vgg13,lenet5", "logger=none", "trainer.epochs_per_phase=1"], tmp_path)
    assert r.returncode != 0 and "1 job(s) of the sweep failed" in r.stderr
    assert [json.loads(p.read_text())["model"] for p in (tmp_path / "runs").glob("*/summary.json")] == ["lenet5"]
    failure = json.loads((tmp_path / "sweep" / "failures" / "job0.json").read_text())
    assert "model=vgg13" in failure["overrides"] and "vgg13" in failure["error"]
    assert re.search(r"job 0: .*model=vgg13.* -> failed", r.stdout) and re.search(
        r"job 1: .*model=lenet5.* -> \d", r.stdout
    )


@pytest.mark.realdata
def test_real_fashion_mnist_ce_gce_pclc(real_fmnist_root, tmp_path, monkeypatch):
    """Real data, 6,000 training images, T=3: each loss must clearly learn.

    Thresholds: the full protocol reaches ~90% (paper: 90.1 CE, 90.2 PC+LC). With 6k images and
    6 epochs (~140 Adam steps) LeNet-5 reaches about 80% with CE; we require 70% for CE and PC+LC
    (PC+LC fine-tunes the CE warm-up) and 60% for GCE, which learns more slowly from scratch.
    Chance is 10%.
    """
    over = [
        f"dataset.root={real_fmnist_root}",
        "dataset.download=false",
        "dataset.subset.train=6000",
        "dataset.subset.test=2000",
        "trainer.epochs_per_phase=3",
        "logger=none",
        f"store={tmp_path / 'runs'}",
    ]
    calls = count_epochs(monkeypatch)
    res = {
        loss: train(compose("train", ["dataset=fmnist", "model=lenet5", f"loss={loss}", *over]))
        for loss in ("ce", "pclc", "gce")
    }
    assert len(calls) == 6 + 3 + 6  # PC+LC trained only its 3 phase-2 epochs
    assert res["pclc"]["warmup_from"] == res["ce"]["key"]
    assert res["ce"]["test_accuracy"] > 70 and res["pclc"]["test_accuracy"] > 70 and res["gce"]["test_accuracy"] > 60
    for s in res.values():
        assert sorted(p.name for p in Path(s["path"]).iterdir()) == sorted(
            ["config.yaml", "checkpoint.pt", "metrics.json", "model.pt", "summary.json"]
            + (["warmup.pt"] if s["loss"] != "pclc" else [])
        )

    # resume on real data: a PC+LC run interrupted in phase 2 ends with the uninterrupted run's weights
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    other = [o if not o.startswith("store=") else f"store={tmp_path / 'interrupted'}" for o in over]
    real_epoch, calls = train_mod.train_epoch, []

    def crash_in_phase2(*a, **k):
        calls.append(1)
        if len(calls) == 5:  # 3 warm-up epochs, 1 PC+LC epoch, then the interruption
            raise KeyboardInterrupt("simulated")
        return real_epoch(*a, **k)

    monkeypatch.setattr(train_mod, "train_epoch", crash_in_phase2)
    cfg = compose("train", ["dataset=fmnist", "model=lenet5", "loss=pclc", *other])
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
    resumed = train(cfg)
    a = torch.load(Path(res["pclc"]["path"]) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed["path"]) / "model.pt", weights_only=True)
    assert resumed["key"] == res["pclc"]["key"] and all(torch.equal(a[k], b[k]) for k in a)


def test_nested_wandb_runs_stay_independent(tmp_path):
    """An evaluation's run inside a reproduce run must not finish the outer one (Figure 2 does this)."""
    need_wandb()
    from omegaconf import OmegaConf

    from pclc.tracking import build_tracker

    logger = OmegaConf.create({"name": "wandb", "mode": "offline", "project": "pclc", "dir": str(tmp_path)})
    outer = build_tracker(logger, name="outer", group="g", config={})
    inner = build_tracker(logger, name="inner", group="g", config={})
    inner.log({"x": 1.0}, step=1)
    inner.finish(0)
    outer.log({"y": 2.0}, step=1)  # raised wandb UsageError when inner finished the outer run
    outer.finish(0)
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_wandb_one_run_per_model_across_resumes_and_evaluations_with_their_budgets(tmp_path, monkeypatch):
    wandb = need_wandb()
    from omegaconf import OmegaConf

    from pclc.config import group_config
    from pclc.evaluate import evaluate

    over = [
        *FAKE[:2],
        "loss=ce",
        f"store={tmp_path / 'runs'}",
        "logger.mode=offline",
        f"logger.dir={tmp_path}",
        "trainer.epochs_per_phase=1",
    ]
    calls, real = [], train_mod.train_epoch

    def once_then_crash(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_epoch", once_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(compose("train", over))
    monkeypatch.undo()
    train(compose("train", over))  # resumes: the same W&B run id
    cfg = compose("evaluate", [*over, "eval.subset=20"])
    cfg.suite = OmegaConf.create(
        {
            "entries": [{"attack": "fgsm", "eps": [0.1, 0.2]}],
            "attacks": {"fgsm": group_config("attack", "fgsm")},
        }
    )
    evaluate(cfg)
    wandb.teardown()
    runs = sorted(Path(p).name for p in glob.glob(str(tmp_path / "wandb" / "offline-run-*")))
    from pclc.store import digest

    train_id = f"train-{digest(run_key(compose('train', over)), 16)}"
    assert len(runs) == 3 and sum(train_id in r for r in runs) == 2, runs  # train twice (one W&B run), eval once
    raw = b"".join(Path(f).read_bytes() for f in glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb")))
    for word in (b"results", b"fgsm", b"lenet5", b"fake", run_key(compose("train", over)).encode()):
        assert word in raw, word  # the evaluation's model and suite; the run key survives the secret filter
    key = run_key(compose("train", over))
    assert f"model-{key}".encode() in raw and f"eval-{key}".encode() in raw  # the weights and results as Artifacts
    tables = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "results_*.table.json"))
    table = json.loads(Path(tables[0]).read_text())
    assert table["columns"][:5] == ["attack", "kind", "source", "eps", "budget"] and "adv_accuracy" in table["columns"]
    assert [row[3] for row in table["data"]] == [0.1, 0.2]


@pytest.mark.slow
def test_wandb_offline_is_quiet_with_one_sync_hint(tmp_path):
    env = {**os.environ, "PCLC_RUNS": str(tmp_path / "runs")}
    env.pop("WANDB_MODE", None)
    env.pop("WANDB_SILENT", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pclc.train",
            "dataset=fake",
            "trainer.epochs_per_phase=1",
            "logger=wandb",
            "logger.mode=offline",
            f"logger.dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if "wandb" in ln.lower()]
    assert len(lines) == 1 and "wandb sync" in lines[0] and str(tmp_path / "wandb") in lines[0], lines
