"""Every bad input a user can give, through the real command lines: one clear line, a non-zero exit, no work
started, and nothing written before lost."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pclc.config import compose
from pclc.train import train

FAKE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=1"]
FITS = {
    "mnist": "lenet5",
    "kmnist": "lenet5",
    "fmnist": "lenet5",
    "cifar10": "vgg13",
    "cifar100": "vgg13",
    "svhn": "vgg13",
    "tinyimagenet": "vgg13",
}


def cli(module: str, argv: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """Run ``python -m <module> <argv>`` in this process; its exit status and what it printed on stderr."""
    m = importlib.import_module(module if module != "pclc.audit" else "pclc.audit.cli")
    old, sys.argv = sys.argv, [m.__file__, *argv, f"hydra.run.dir={tmp_path / 'hydra'}"]
    try:
        m.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, str]:
    return (
        {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*")
            if p.is_file() and ".locks" not in p.parts
        }
        if folder.exists()
        else {}
    )


@pytest.fixture
def store(tmp_path):
    """A store holding one finished run (what must not be lost) and one interrupted run."""
    s = tmp_path / "runs"
    done = train(compose("train", [*FAKE, "loss=ce", f"store={s}"]))
    part = train(compose("train", [*FAKE, "loss=gce", f"store={s}"]), until_epoch=1)
    return s, Path(done["path"]), Path(part["path"])


def _corrupt(path: Path, how: str) -> None:
    path.write_bytes(b"not a checkpoint" if how == "garbage" else path.read_bytes()[: len(path.read_bytes()) // 3])


def _edit(path: Path) -> None:
    conf = yaml.safe_load(path.read_text())
    conf["resolved"]["trainer"]["batch_size"] = 64
    path.write_text(yaml.safe_dump(conf))


# (name, module, arguments, what to do to the store first, exit status, the line must contain, new run folders)
CASES = [
    ("unknown dataset", "pclc.train", ["dataset=imagenet21k"], None, 1, "imagenet21k", False),
    ("unknown model", "pclc.train", ["model=resnet18"], None, 1, "resnet18", False),
    ("unknown loss", "pclc.train", ["loss=focal"], None, 1, "focal", False),
    ("unknown attack suite", "pclc.evaluate", ["attack/suite=table9"], None, 1, "table9", False),
    ("unknown experiment", "pclc.reproduce", ["experiment=table9"], None, 1, "table9", False),
    (
        "eps above 1",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.entries=[{attack: pgd, eps: [1.5]}]"],
        None,
        2,
        "eps=1.5 is outside [0, 1]",
        False,
    ),
    (
        "eps below 0",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.entries=[{attack: pgd, eps: [-0.1]}]"],
        None,
        2,
        "eps=-0.1 is outside [0, 1]",
        False,
    ),
    (
        "nb_iter 0",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.attacks.pgd.nb_iter=0"],
        None,
        2,
        "nb_iter=0 must be an integer >= 1",
        False,
    ),
    (
        "negative step",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.attacks.bim.eps_iter=-0.01"],
        None,
        2,
        "eps_iter=-0.01 must be a finite number > 0",
        False,
    ),
    (
        "misspelt budget",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "+suite.attacks.pgd.nb_iters=3"],
        None,
        2,
        "unknown parameter(s) ['nb_iters']",
        False,
    ),
    ("xi above 1", "pclc.train", [*FAKE, "loss=pclc", "loss.params.xi=1.5"], None, 2, "xi", False),
    ("xi 0", "pclc.train", [*FAKE, "loss=pclc", "loss.params.xi=0"], None, 2, "xi", False),
    ("GCE alpha 0", "pclc.train", [*FAKE, "loss=gce", "loss.params.alpha=0"], None, 2, "alpha", False),
    (
        "GCE alpha negative",
        "pclc.train",
        [*FAKE, "loss=gce", "loss.params.alpha=-1"],
        None,
        2,
        "alpha",
        False,
    ),
    (
        "class-count mismatch",
        "pclc.train",
        [*FAKE, "loss=ce", "model.num_classes=7"],
        None,
        2,
        "num_classes=7",
        False,
    ),
    (
        "corrupt checkpoint",
        "pclc.train",
        [*FAKE, "loss=gce"],
        ("checkpoint", "garbage"),
        2,
        "cannot read",
        False,
    ),
    (
        "truncated checkpoint",
        "pclc.train",
        [*FAKE, "loss=gce"],
        ("checkpoint", "truncated"),
        2,
        "cannot read",
        False,
    ),
    (
        "hand-edited config.yaml",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "eval.subset=20"],
        ("config", None),
        2,
        "was edited",
        False,
    ),
    (
        "absurd lr",
        "pclc.train",
        [*FAKE, "loss=ce", "trainer.lr=1e30", "seed=3"],
        None,
        2,
        "non-finite training loss at epoch 1",
        True,
    ),
    ("lr infinite", "pclc.train", [*FAKE, "loss=ce", "trainer.lr=inf"], None, 2, "finite number > 0", False),
    (
        "eval batch 0",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "eval.batch_size=0"],
        None,
        2,
        "eval.batch_size",
        False,
    ),
    (
        "audit eps above 1",
        "pclc.audit",
        [*FAKE, "loss=ce", "audit.eps=[1.5]", "audit.reference=null"],
        None,
        2,
        "outside [0, 1]",
        False,
    ),
    # issue 28, item 10: each was accepted (and ran, or did nothing, or wrote elsewhere) before
    (
        "eps empty",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.entries=[{attack: pgd, eps: []}]"],
        None,
        2,
        "eps=[] names no epsilon",
        False,
    ),
    (
        "suite entries empty",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.entries=[]"],
        None,
        2,
        "suite.entries is empty",
        False,
    ),
    (
        "attacks empty",
        "pclc.reproduce",
        ["experiment=table1", "datasets=[fmnist]", "attacks=[]"],
        None,
        2,
        "attacks=[] names no attack",
        False,
    ),
    (
        "seeds empty",
        "pclc.reproduce",
        ["experiment=table1", "datasets=[fmnist]", "seeds=[]"],
        None,
        2,
        "seeds=[] names no seed",
        False,
    ),
    (
        "rand_init off",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.attacks.pgd.rand_init=off"],
        None,
        2,
        "rand_init must be true or false, got 'off'",
        False,
    ),
    (
        "eval.subset fraction",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "eval.subset=1.5"],
        None,
        2,
        "eval.subset must be a whole number >= 1, got 1.5",
        False,
    ),
    (
        "eval.subset above the test set",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "eval.subset=100000"],
        None,
        2,
        "eval.subset=100000 is more than fake's",
        False,
    ),
    (
        "epochs fraction",
        "pclc.train",
        [*FAKE, "loss=ce", "trainer.epochs_per_phase=1.7"],
        None,
        2,
        "trainer.epochs_per_phase must be a whole number >= 1, got 1.7",
        False,
    ),
    (
        "seed above 2^63",
        "pclc.train",
        [*FAKE, "loss=ce", "seed=18446744073709551617"],
        None,
        2,
        "seed must be a whole number in [0, 9223372036854775807], got 18446744073709551617",
        False,
    ),
    (
        "experiment name with a path",
        "pclc.reproduce",
        ["experiment=table1", "datasets=[fmnist]", "experiment.name=../../../x"],
        None,
        2,
        "experiment.name='../../../x' must be a plain name",
        False,
    ),
    (
        "a _target_ in an attack parameter",
        "pclc.evaluate",
        [*FAKE, "loss=ce", "suite.attacks.pgd.eps_iter={_target_: builtins.open, file: x.txt, mode: w}"],
        None,
        2,
        "parameter eps_iter holds a `_target_`",
        False,
    ),
    *[
        (
            f"{d} missing offline",
            "pclc.train",
            [f"dataset={d}", f"model={FITS[d]}", "logger=none"],
            "nodata",
            2,
            "not found",
            False,
        )
        for d in FITS
    ],
]


@pytest.mark.parametrize("name,module,argv,damage,code,line,starts", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(
    name, module, argv, damage, code, line, starts, store, tmp_path, capsys, monkeypatch, offline
):
    runs, done, part = store
    capsys.readouterr()
    if damage == "nodata":
        argv = [*argv, f"dataset.root={tmp_path / 'empty'}"]
        monkeypatch.setattr("pclc.data.FMNIST_SYSTEM_DIR", tmp_path / "no-debian-copy")  # missing everywhere
    elif damage is not None:
        target = {"checkpoint": part / "checkpoint.pt", "config": done / "config.yaml"}[damage[0]]
        _corrupt(target, damage[1]) if damage[0] == "checkpoint" else _edit(target)
    monkeypatch.setenv("PCLC_RUNS", str(runs))
    before, folders = snapshot(runs), sorted(p.name for p in runs.iterdir())
    status, err = cli(module, argv, tmp_path, capsys)
    assert status == code, err
    first = next(ln for ln in err.splitlines() if ln.strip())
    assert line in first and (code != 2 or first.startswith("error: ")), err
    if code == 2:
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    after = snapshot(runs)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before is changed or lost
    new = sorted({p.name for p in runs.iterdir()} - set(folders))
    assert bool(new) == starts, new  # no work started (the absurd lr starts, then stops at its first epoch)
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*"))
    torch.set_num_threads(2)
