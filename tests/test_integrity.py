"""Integrity of the run store (issue 18): one kill never breaks a run, a run's config never executes code,
a result is tied to the weights that made it, and what is refused is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import pclc.train as train_mod
from pclc.config import compose, group_config
from pclc.evaluate import evaluate
from pclc.files import CorruptFileError
from pclc.store import RunDir, RunIntegrityError, load_run, run_key, weights_digest
from pclc.train import train

FAKE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2"]


def cfg_for(store: Path, *over, loss="ce"):
    return compose("train", [*FAKE, f"loss={loss}", f"store={store}", *over])


def weights(summary: dict) -> dict:
    return torch.load(Path(summary["path"]) / "model.pt", map_location="cpu", weights_only=True)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """CE and PC+LC trained without interruption, with the thread count every test here runs with (conftest):
    a module fixture is set up before a test's own fixtures, and the thread count changes the weights."""
    import os

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    store = tmp_path_factory.mktemp("reference")
    return store, weights(train(cfg_for(store))), weights(train(cfg_for(store, loss="pclc")))


def kill_after(monkeypatch, name: str, nth: int) -> None:
    """Interrupt training right after the ``nth`` atomic write of a file called ``name``."""
    seen = []
    for fn, path_arg in (("atomic_torch_save", 1), ("atomic_write_json", 0)):
        real = getattr(train_mod, fn)

        def write(*args, real=real, i=path_arg):
            real(*args)
            if Path(args[i]).name == name:
                seen.append(1)
                if len(seen) == nth:
                    raise KeyboardInterrupt(f"killed after writing {name} #{nth}")

        monkeypatch.setattr(train_mod, fn, write)


# 1 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,nth", [("warmup.pt", 1), ("checkpoint.pt", 2), ("metrics.json", 2)])
def test_a_kill_between_the_writes_of_epoch_T_never_breaks_pclc(tmp_path, monkeypatch, reference, name, nth):
    """T = 2: epoch T writes warmup.pt, checkpoint.pt and metrics.json; a kill after any one of them, then the
    same commands again, gives the uninterrupted CE and PC+LC weights."""
    _, ce_ref, pc_ref = reference
    kill_after(monkeypatch, name, nth)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path))
    monkeypatch.undo()
    assert same(weights(train(cfg_for(tmp_path))), ce_ref)
    assert same(weights(train(cfg_for(tmp_path, loss="pclc"))), pc_ref)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_finished_warmup_run_without_warmup_pt_is_rebuilt(tmp_path, reference):
    _, ce_ref, pc_ref = reference
    ce = train(cfg_for(tmp_path))
    (Path(ce["path"]) / "warmup.pt").unlink()  # as a kill between the two writes left it, before the fix
    assert same(weights(train(cfg_for(tmp_path, loss="pclc"))), pc_ref)
    assert (Path(ce["path"]) / "warmup.pt").exists() and same(weights(ce), ce_ref)
    assert not [p for p in tmp_path.iterdir() if "rebuild" in p.name]  # the rebuild's scratch run is gone


def test_a_killed_rebuilds_scratch_folder_is_removed_by_the_next(tmp_path, reference):
    """Issue 28, item 9: a SIGKILL during the warm-up rebuild left its .<key>.rebuild-*/ folder for good."""
    from pclc.files import _host

    _, _, pc_ref = reference
    ce = train(cfg_for(tmp_path))
    (Path(ce["path"]) / "warmup.pt").unlink()
    left = tmp_path / f".{Path(ce['path']).name}.rebuild-{_host()}.999999999-abc"  # a dead writer's folder
    (left / "x").mkdir(parents=True)
    assert same(weights(train(cfg_for(tmp_path, loss="pclc"))), pc_ref)
    assert not [p for p in tmp_path.iterdir() if "rebuild" in p.name]


# 2 --------------------------------------------------------------------------------------------------------
def _edit_config(run: RunDir, edit) -> None:
    conf = yaml.safe_load(run.config.read_text())
    edit(conf)
    run.config.write_text(yaml.safe_dump(conf))


def test_a_run_config_never_executes_code(tmp_path):
    s = train(cfg_for(tmp_path / "runs"))
    run = RunDir.at(s["path"])
    marker = tmp_path / "pwned"
    payload = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    _edit_config(run, lambda c: c["resolved"]["model"].update(payload))
    cfg = compose("evaluate", [*FAKE, f"run_dir={run.path}", "eval.subset=20"])
    cfg.suite = OmegaConf.create(
        {"entries": [{"attack": "fgsm", "eps": [0.1]}], "attacks": {"fgsm": group_config("attack", "fgsm")}}
    )
    with pytest.raises(RunIntegrityError, match="was edited"):
        evaluate(cfg)
    from pclc.audit import audit

    with pytest.raises(RunIntegrityError):
        audit(
            compose(
                "audit",
                [
                    *FAKE,
                    f"store={tmp_path / 'runs'}",
                    f"audit.run={run.path}",
                    "audit.subset=20",
                    "audit.reference=gce",
                ],
            )
        )  # the reference would be trained from this config
    from pclc.store import build_model

    with pytest.raises(RunIntegrityError, match="model registry"):
        build_model(OmegaConf.create({**payload, "name": "lenet5"}))
    assert not marker.exists()


# 3 --------------------------------------------------------------------------------------------------------
def _eval_cfg(store: Path, *over):
    cfg = compose("evaluate", [*FAKE, "loss=ce", f"store={store}", "eval.subset=40", *over])
    cfg.suite = OmegaConf.create(
        {
            "families": ["grey"],
            "entries": [{"attack": "pgd", "eps": [0.2]}],
            "attacks": {"pgd": {**group_config("attack", "pgd"), "nb_iter": 3}},
        }
    )
    return cfg


def test_results_are_tied_to_the_weights_that_made_them(tmp_path):
    s = train(cfg_for(tmp_path))
    first = evaluate(_eval_cfg(tmp_path))["results"][0]
    stored = json.loads(Path(first["file"]).read_text())
    assert stored["weights"] == s["weights"] and stored["run"] == s["key"]
    state = weights(s)  # the run retrained elsewhere (other weights under the same key)
    state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, Path(s["path"]) / "model.pt")
    with pytest.raises(RunIntegrityError, match="not the .* its summary records: it was replaced"):
        evaluate(_eval_cfg(tmp_path))  # model.pt replaced, the summary not: refused (issue 28, defect 2)
    summary = json.loads((Path(s["path"]) / "summary.json").read_text())
    (Path(s["path"]) / "summary.json").write_text(json.dumps({**summary, "weights": weights_digest(state)}))
    again = evaluate(_eval_cfg(tmp_path))["results"][0]
    redone = json.loads(Path(again["file"]).read_text())
    assert redone["weights"] != stored["weights"] and redone["records"]["adv_pred"] != stored["records"]["adv_pred"]
    assert list(Path(first["file"]).parent.glob("*.stale-*.json"))  # the old result is kept aside, not lost


def test_a_hand_edited_dataset_section_is_refused(tmp_path):
    s = train(cfg_for(tmp_path))
    _edit_config(RunDir.at(s["path"]), lambda c: c["resolved"]["dataset"].update(noise=0.5))
    with pytest.raises(RunIntegrityError, match="was edited"):
        load_run(RunDir.at(s["path"]), torch.device("cpu"))


# 4 --------------------------------------------------------------------------------------------------------
def test_a_resume_keeps_the_runs_thread_count_and_refuses_other_numerics(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    kill_after(monkeypatch, "checkpoint.pt", 1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path))
    monkeypatch.undo()
    seen, real = [], train_mod.train_epoch
    monkeypatch.setattr(train_mod, "train_epoch", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    # bf16 training is another run (issue 33: precision is part of the key), never a resume of the fp32 one
    fp32 = ["accel.bf16=false", "accel.channels_last=false"]  # explicit: on a GPU, auto means bf16 + channels_last
    assert run_key(cfg_for(tmp_path, "accel.bf16=true", fp32[1])) != run_key(cfg_for(tmp_path, *fp32))
    assert run_key(cfg_for(tmp_path, "accel.channels_last=true", fp32[0])) != run_key(cfg_for(tmp_path, *fp32))
    assert run_key(cfg_for(tmp_path, *fp32)) == run_key(cfg_for(tmp_path, "device=cpu"))  # fp32 keys unchanged
    torch.set_num_threads(1)
    s = train(cfg_for(tmp_path))
    assert seen == [2, 2, 2] and s["threads"] == 2 and torch.get_num_threads() == 1  # restored afterwards


def test_a_batch_size_that_changes_random_starts_is_another_result(tmp_path):
    train(cfg_for(tmp_path))
    a = evaluate(_eval_cfg(tmp_path, "eval.batch_size=16"))["results"][0]
    b = evaluate(_eval_cfg(tmp_path, "eval.batch_size=40"))["results"][0]
    c = evaluate(_eval_cfg(tmp_path))["results"][0]
    assert "-bs16-" in a["file"] and "-bs40-" in b["file"] and "-bs" not in Path(c["file"]).name
    assert json.loads(Path(a["file"]).read_text())["batch_size"] == 16


# 5 --------------------------------------------------------------------------------------------------------
def test_audit_eps_out_of_range_is_refused_before_any_attack(tmp_path):
    s = train(cfg_for(tmp_path / "runs"))
    from pclc.audit import audit

    with pytest.raises(ValueError, match="outside"):
        audit(
            compose(
                "audit",
                [
                    *FAKE,
                    f"store={tmp_path / 'runs'}",
                    f"audit.run={s['key']}",
                    "audit.eps=[1.5]",
                    "audit.subset=20",
                    "audit.reference=null",
                ],
            )
        )
    assert not (Path(s["path"]) / "audit").exists()


# 6 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_finished_run_with_a_damaged_model_file_is_restored_from_its_checkpoint(tmp_path, damage, monkeypatch):
    s = train(cfg_for(tmp_path))
    good = weights(s)
    model = Path(s["path"]) / "model.pt"
    model.unlink() if damage == "missing" else model.write_bytes(model.read_bytes()[:100])
    _, net = load_run(RunDir.at(s["path"]), torch.device("cpu"))
    assert same(net.state_dict(), good) and same(weights(s), good)
    model.unlink()
    calls = []
    monkeypatch.setattr(train_mod, "train_epoch", lambda *a, **k: calls.append(1))
    assert train(cfg_for(tmp_path))["reused"] and calls == [] and same(weights(s), good)


def test_truncated_summary_metrics_and_result_files_recover(tmp_path):
    s = train(cfg_for(tmp_path))
    run = RunDir.at(s["path"])
    run.summary.write_text(run.summary.read_text()[:20])
    with pytest.raises(CorruptFileError, match="summary.json.*resumes"):
        run.read_summary()
    again = train(cfg_for(tmp_path))  # resumes from the final checkpoint and writes the summary again
    assert again["test_accuracy"] == s["test_accuracy"] and same(weights(again), weights(s))
    run.metrics.write_text("[{")
    train(cfg_for(tmp_path))
    assert len(json.loads(run.metrics.read_text())) == 4
    r = evaluate(_eval_cfg(tmp_path))["results"][0]
    Path(r["file"]).write_text('{"adv_acc')
    assert evaluate(_eval_cfg(tmp_path))["results"][0]["adv_accuracy"] == r["adv_accuracy"]


def test_force_on_an_unfinished_run_starts_again(tmp_path, monkeypatch):
    kill_after(monkeypatch, "checkpoint.pt", 1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path))
    monkeypatch.undo()
    calls, real = [], train_mod.train_epoch
    monkeypatch.setattr(train_mod, "train_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(cfg_for(tmp_path, "force=true"))
    assert len(calls) == 4 and len([p for p in tmp_path.iterdir() if ".replaced-" in p.name]) == 1


# 7 --------------------------------------------------------------------------------------------------------
def test_a_class_count_the_data_does_not_have_is_refused(tmp_path, monkeypatch):
    from conftest import rng_images, write_idx_gz

    for prefix, n in (("train", 60), ("t10k", 20)):
        x, y = rng_images(n, 1, 28, seed=n)
        write_idx_gz(tmp_path / "data" / "MNIST" / "raw", prefix, x, y)
    over = [
        "dataset=mnist",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.download=false",
        "dataset.num_classes=20",
    ]
    with pytest.raises(ValueError, match="has 10 classes, but num_classes=20"):
        train(compose("train", ["model=lenet5", "logger=none", f"store={tmp_path / 'runs'}", *over]))
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if not p.name.startswith(".")]  # no run folder


@pytest.mark.parametrize(
    "over,match",
    [
        (["trainer.lr=inf"], "finite"),
        (["seed=abc"], "seed must be a whole number"),
    ],
)
def test_bad_training_settings_fail_before_a_run_folder_exists(tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        train(cfg_for(tmp_path, *over))
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True


@pytest.mark.parametrize("over", ["eval.batch_size=0", "eval.group_batches=0"])
def test_bad_evaluation_settings_are_refused(tmp_path, over):
    train(cfg_for(tmp_path))
    with pytest.raises(ValueError, match=over.split("=")[0]):
        evaluate(_eval_cfg(tmp_path, over))


def test_a_diverged_run_is_marked(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train_mod, "clean_metrics", lambda *a, **k: {"accuracy": 10.0, "prob_gap": 0.0})
    s = train(cfg_for(tmp_path))
    assert s["diverged"] and "looks diverged" in caplog.text


def test_secrets_given_as_overrides_are_never_written(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["pclc/train.py", "+logger.api_key=SEKRET123"])
    s = train(cfg_for(tmp_path, "+logger.api_key=SEKRET123", "+wandb_token=SEKRET456"))
    text = "".join(p.read_text(errors="ignore") for p in Path(s["path"]).rglob("*") if p.suffix in (".yaml", ".json"))
    assert "SEKRET" not in text and s["key"] in text  # the run's key is not mistaken for a secret


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    from pclc.files import _host

    s = train(cfg_for(tmp_path))
    stale = Path(s["path"]) / f".checkpoint.pt.{_host()}.999999999.abcd.tmp"
    stale.write_bytes(b"partial")
    train(cfg_for(tmp_path))
    assert not stale.exists()


def test_another_hosts_temp_file_is_left_to_its_writer(tmp_path):
    """Issue 28, defect 5: on a store shared across hosts, a PID says nothing about another host's writer; its
    temp file is removed only when older than any atomic write (a day)."""
    import os
    import time

    from pclc.files import STALE_FOREIGN_SECONDS, remove_stale_temp

    live = tmp_path / ".checkpoint.pt.node17.999999999.abcd.tmp"  # its PID is dead here, not on node17
    old = tmp_path / ".model.pt.node17.999999998.abcd.tmp"
    for f in (live, old):
        f.write_bytes(b"in flight")
    t = time.time() - STALE_FOREIGN_SECONDS - 60
    os.utime(old, (t, t))
    assert remove_stale_temp(tmp_path) == [old] and live.exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_files_get_the_umasks_permissions(tmp_path, umask):
    """Issue 28, item 9: mkstemp's 0600 made a shared store unreadable to its group."""
    import os

    import pclc.files as files

    old = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_cpu_runs_stored_config_keeps_its_key_on_a_gpu_machine(tmp_path, monkeypatch):
    """Issue 33: ``accel.bf16: auto`` resolved on a GPU machine would give a CPU-trained (fp32) run's stored config
    another key there, and evaluating it would call it edited; the stored numerics are pinned."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # trained where device=auto is the CPU
    s = train(cfg_for(tmp_path))
    run = RunDir(tmp_path, s["key"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_key(run.stored_config()) == s["key"]  # checked_config passes on the GPU machine
    assert run_key(cfg_for(tmp_path)) != s["key"]  # while a fresh config there trains in bf16: another run
    assert run_key(cfg_for(tmp_path, "from_zoo=true")) == s["key"]  # FROM=zoo on a GPU: the zoo's fp32 weights
