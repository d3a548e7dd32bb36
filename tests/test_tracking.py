"""W&B runs one can chart (issue 32): names with the profile, tags, clean metric keys, one evaluation run per
model and suite, console output captured; read back from the offline run files."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from conftest import need_wandb
from omegaconf import OmegaConf

from pclc.config import compose
from pclc.evaluate import evaluate
from pclc.tracking import build_tracker, metric_key, run_identity
from pclc.train import train


def _offline(root: Path) -> dict[str, list[Path]]:
    """{W&B run id: its offline run folders} (a resumed run writes a second folder with the same id)."""
    runs: dict[str, list[Path]] = {}
    for d in sorted(Path(p) for p in glob.glob(str(root / "wandb" / "offline-run-*"))):
        (rid,) = [f.stem[len("run-") :] for f in d.glob("run-*.wandb")]
        runs.setdefault(rid, []).append(d)
    return runs


def test_metric_keys_and_names_are_the_same_in_every_run():
    assert metric_key("pgd", 0.1) == "adv/pgd/eps0.1"
    assert metric_key("pgd", 0.30000000000000004) == "adv/pgd/eps0.3"
    assert metric_key("mim", 0.2, "transfer") == "adv/transfer-mim/eps0.2"
    assert metric_key("cw", None) == "adv/cw"
    quick = compose("train", ["dataset=fmnist", "loss=pclc", "+profiles/train=quick", "experiment_name=demo"])
    full = compose("train", ["dataset=fmnist", "loss=pclc", "+profiles/train=full"])
    at = compose("train", ["dataset=fmnist", "loss=ce", "trainer=adv_fgsm", "seed=3"])
    assert run_identity(quick)[0] == "fmnist-lenet5-pclc-s0-quick" != run_identity(full)[0]
    assert run_identity(at)[0] == "fmnist-lenet5-ce-adv_fgsm-s3"  # CE+AT is not CE
    assert sorted(run_identity(quick)[1]) == sorted(
        ["dataset:fmnist", "model:lenet5", "loss:pclc", "trainer:paper", "seed:0", "profile:quick", "experiment:demo"]
    )


@pytest.mark.slow
def test_wandb_runs_are_tagged_charted_and_one_per_model_and_suite(tmp_path):
    wandb = need_wandb()

    over = [
        "dataset=fake",
        "model=lenet5",
        "loss=ce",
        f"store={tmp_path / 'runs'}",
        "logger=wandb",
        "logger.mode=offline",
        f"logger.dir={tmp_path}",
        "+profiles/train=tiny",
        "experiment_name=table1",
    ]
    train(compose("train", over))
    for extra in ([], [], ["eval.subset=10"]):  # a re-evaluation resumes its run; another subset is another run
        evaluate(compose("evaluate", [*over, "attack/suite=demo", "+profiles/eval=tiny", *extra]))
    wandb.teardown()  # flush the offline files
    runs = _offline(tmp_path)
    train_ids = [r for r in runs if r.startswith("train-")]
    eval_ids = sorted((r for r in runs if r.startswith("eval-")), key=lambda r: -len(runs[r]))
    assert len(train_ids) == 1 and len(eval_ids) == 2 and [len(runs[r]) for r in eval_ids] == [2, 1], runs
    raw = {r: b"".join(f.read_bytes() for d in runs[r] for f in d.glob("run-*.wandb")) for r in runs}
    tags = [b"dataset:fake", b"model:lenet5", b"loss:ce", b"seed:0", b"profile:tiny", b"experiment:table1"]
    for word in [*tags, b"fake-lenet5-ce-s0-tiny", b"fake-lenet5"]:  # name with its profile; group dataset-model
        assert all(word in raw[r] for r in runs), word
    evals = raw[eval_ids[0]]
    assert b"eval-fake-lenet5-ce-s0-tiny-demo" in evals and b"suite:demo" in evals
    for key in (b"adv/fgsm/eps0.1", b"adv/pgd/eps0.3", b"clean_accuracy"):
        assert key in evals, key
    (plot,) = glob.glob(str(runs[eval_ids[1]][0] / "files" / "media" / "table" / "accuracy_vs_eps_table_*.json"))
    data = json.loads(Path(plot).read_text())["data"]  # a line per attack: accuracy against eps
    assert sorted({row[1] for row in data}) == ["fgsm", "pgd"] and sorted({row[0] for row in data}) == [0.1, 0.2, 0.3]


def test_wandb_captures_the_console_for_the_logs_tab(tmp_path):
    wandb = need_wandb()

    logger = OmegaConf.create({"name": "wandb", "mode": "offline", "project": "pclc", "dir": str(tmp_path)})
    t = build_tracker(logger, name="console", group="g", config={})
    print("a line the Logs tab must show")
    t.finish(0)
    wandb.teardown()
    (folder,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    raw = b"".join(f.read_bytes() for f in Path(folder).glob("run-*.wandb"))
    assert b"a line the Logs tab must show" in raw
