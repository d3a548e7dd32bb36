"""Issue 28's invariant: a number reaches a table only if its weights and its own records agree with the run
(a swapped model.pt, a hand-edited accuracy); anything else is set aside with one line naming the file."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pclc.config import compose
from pclc.reproduce import reproduce
from pclc.store import RunIntegrityError

FAKE = "dataset_map={fmnist: fake}"


def _cfg(tmp, *over):
    return compose(
        "reproduce",
        [
            "experiment=table1",
            "profile=tiny",
            "logger=none",
            f"store={tmp / 'runs'}",
            f"out_dir={tmp / 'results'}",
            "datasets=[fmnist]",
            FAKE,
            "attacks=[fgsm]",
            *over,
        ],
    )


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("invariant")
    reproduce(_cfg(tmp))
    return tmp


def _copy(table, tmp_path) -> Path:
    shutil.copytree(table / "runs", tmp_path / "runs")
    return tmp_path


def _csv(tmp) -> pd.DataFrame:
    return pd.read_csv(tmp / "results" / "tiny" / "table1.csv", comment="#", dtype={"param": str})


def _run(tmp, loss) -> Path:
    return next((tmp / "runs").glob(f"fake-lenet5-{loss}-s0-*"))


@pytest.mark.slow
def test_a_swapped_model_pt_is_refused_and_its_results_set_aside(table, tmp_path, caplog):
    tmp = _copy(table, tmp_path)
    shutil.copyfile(_run(tmp, "pclc") / "model.pt", _run(tmp, "ce") / "model.pt")
    with pytest.raises(RunIntegrityError, match="it was replaced"):
        reproduce(_cfg(tmp))  # evaluating CE would run PC+LC's weights
    with caplog.at_level(logging.WARNING):
        reproduce(_cfg(tmp, "stage=tables"))
    df = _csv(tmp)
    ran = df.attack.isin(["clean", "fgsm"])  # attacks=[fgsm]: the other rows were never run
    assert (df[df.method == "ce"].status == "not run").all()
    assert (df[ran & (df.method == "pclc")].status == "run").all() and ran.sum() == 8
    assert f"run {_run(tmp, 'ce').name} set aside: its model.pt holds weights" in caplog.text


def test_a_hand_edited_accuracy_is_set_aside(table, tmp_path, caplog):
    tmp = _copy(table, tmp_path)
    f = next((_run(tmp, "ce") / "eval").glob("white-fgsm-eps0.1-*.json"))
    r = json.loads(f.read_text())
    true = r["adv_accuracy"]
    f.write_text(json.dumps({**r, "adv_accuracy": 99.99}))
    with caplog.at_level(logging.WARNING):
        reproduce(_cfg(tmp, "stage=tables"))
    cell = _csv(tmp).query("method == 'ce' and attack == 'fgsm' and param == '0.1'").iloc[0]
    assert cell.status == "not run" and pd.isna(cell.ours)
    assert f"result {f} set aside: its adv_accuracy 99.99 is not what its records give ({true})" in caplog.text
    others = _csv(tmp).query("method == 'ce' and attack == 'fgsm' and param != '0.1'")
    assert (others.status == "run").all()


def test_a_run_of_another_protocol_never_mixes_into_a_table(table, tmp_path):
    """Defect 1: extra training overrides into an out_dir whose table holds another protocol are refused before
    any work, and the file is left as it was."""
    tmp = _copy(table, tmp_path)
    shutil.copytree(table / "results", tmp / "results")
    before = (tmp / "results" / "tiny" / "table1.csv").read_text()
    keys = sorted(p.name for p in (tmp / "runs").iterdir())
    with pytest.raises(
        ValueError,
        match="holds protocol 'tiny; dataset_map .*', this command's is 'tiny; "
        "dataset_map .*; extra .*trainer.lr=0.05.*': its cells would mix",
    ):
        reproduce(_cfg(tmp, "extra=['trainer.lr=0.05']"))
    assert (tmp / "results" / "tiny" / "table1.csv").read_text() == before
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == keys  # nothing trained
    out = reproduce(_cfg(tmp, "extra=['trainer.lr=0.05']", f"out_dir={tmp / 'other'}"))  # elsewhere: its own header
    text = Path(out["outputs"][0]).read_text()
    assert "protocol: **tiny; dataset_map" in text and 'extra ["trainer.lr=0.05"]' in text


@pytest.mark.slow
def test_a_seeds_table_is_never_replaced_by_another_seed_set_and_keeps_its_statistics(table, tmp_path):
    """Defect 4: seeds=[1] after seeds=[0,1] is refused; a restricted rerun keeps the other cells' sd and n."""
    tmp = _copy(table, tmp_path)
    reproduce(_cfg(tmp, "seeds=[0,1]", "attacks=[fgsm,pgd]"))
    csv = tmp / "results" / "tiny" / "seeds" / "table1.csv"
    full = pd.read_csv(csv, comment="#", dtype={"param": str})
    with pytest.raises(ValueError, match=r"holds seeds \[0, 1\], this command's are \[1\]"):
        reproduce(_cfg(tmp, "seeds=[1]"))
    shutil.rmtree(tmp / "runs")  # a fresh store: only FGSM is computed again, PGD is kept from the file
    reproduce(_cfg(tmp, "seeds=[0,1]", "attacks=[fgsm]"))
    again = pd.read_csv(csv, comment="#", dtype={"param": str})
    pgd = again[again.attack == "pgd"]
    assert (pgd.status == "kept").all() and (pgd.n_seeds == 2).all()
    pd.testing.assert_series_equal(pgd.sd.reset_index(drop=True), full[full.attack == "pgd"].sd.reset_index(drop=True))


@pytest.mark.slow
def test_a_kill_between_the_two_table_writes_loses_no_cell(table, tmp_path, monkeypatch):
    """Defect 8: the CSV (what later runs keep cells from) is written first, so a kill before the markdown
    leaves every cell in the CSV, and a later restricted run keeps them."""
    import pclc.reports as reports

    tmp = _copy(table, tmp_path)
    reproduce(_cfg(tmp, f"out_dir={tmp / 'k'}"))  # FGSM
    real, writes = reports.atomic_write_text, []

    def killed(path, text):
        real(path, text)
        writes.append(path)
        raise KeyboardInterrupt("killed after the first table write")

    monkeypatch.setattr(reports, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        reproduce(_cfg(tmp, f"out_dir={tmp / 'k'}", "attacks=[pgd]"))  # adds PGD; killed between the writes
    monkeypatch.setattr(reports, "atomic_write_text", real)
    shutil.rmtree(tmp / "runs")
    reproduce(_cfg(tmp, f"out_dir={tmp / 'k'}", "stage=tables"))  # nothing in the store: every cell kept
    df = pd.read_csv(tmp / "k" / "tiny" / "table1.csv", comment="#", dtype={"param": str})
    assert (df[df.attack.isin(["fgsm", "pgd"])].status == "kept").all()


def test_a_store_path_with_hydra_grammar_characters_works(tmp_path):
    """Issue 28, defect 7: the store path is rebuilt into each cell's overrides; a space, ü, ',', quote, '=' or
    '[ ]' in it broke every table with a Hydra lexer error."""
    weird = tmp_path / "a b ü,c'd=e[f]"

    def quoted(p):  # as a user quotes it on the command line
        return "'" + str(p).replace("'", "\\'") + "'"

    cfg = compose(
        "reproduce",
        [
            "experiment=table1",
            "profile=tiny",
            "logger=none",
            f"store={quoted(weird / 'runs')}",
            f"out_dir={quoted(weird / 'results')}",
            "datasets=[fmnist]",
            FAKE,
            "attacks=[fgsm]",
        ],
    )
    out = reproduce(cfg)
    assert Path(out["outputs"][1]).parent == weird / "results" / "tiny"
    assert list((weird / "runs").glob("fake-lenet5-ce-s0-*/eval/*.json"))


@pytest.mark.slow
def test_experiment_all_keeps_restrictions_and_numbers_cells_for_a_launcher(tmp_path, capsys):
    """Issue 28, defect 6: experiment=all dropped attacks=, had no global cell index or single count, and a
    dataset_map was a Hydra parse error."""
    from pclc.experiment import sub_experiments

    def cfg(*over):
        return compose(
            "reproduce",
            [
                "experiment=all",
                "profile=tiny",
                "logger=none",
                f"store={tmp_path / 'runs'}",
                f"out_dir={tmp_path / 'results'}",
                "datasets=[mnist]",
                "dataset_map={mnist: fake}",
                "attacks=[fgsm]",
                *over,
            ],
        )

    subs = sub_experiments(cfg())
    assert subs and all(s.experiment.kind == "table" and list(s.attacks) == ["fgsm"] for s in subs)
    assert all(dict(s.dataset_map) == {"mnist": "fake"} for s in subs)
    total = reproduce(cfg("stage=count"))["cells"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(total) and total >= 2
    out = reproduce(cfg("stage=cell", f"cell={total - 1}"))  # the last cell of the last experiment
    assert out["cell"].startswith("mnist/") and [r["attack"] for r in out["evaluations"][0]["results"]] == ["fgsm"] * 3
    with pytest.raises(ValueError, match=rf"stage=cell needs cell in \[0, {total}\), got {total}"):
        reproduce(cfg("stage=cell", f"cell={total}"))


def test_a_read_only_store_serves_finished_work_and_refuses_writes_in_one_line(table, tmp_path, monkeypatch):
    """Issue 28, item 9: a read-only store crashed stage=all and evaluate (EROFS on a lock file) with nothing
    left to compute."""
    import errno
    import tempfile

    import pclc.files as io
    import pclc.locks as locks

    tmp = _copy(table, tmp_path)
    store = str(tmp / "runs")

    class ReadOnlyLock(locks.FileLock):
        def acquire(self, *a, **k):
            if self.lock_file.startswith(store):
                raise OSError(errno.EROFS, "Read-only file system")
            return super().acquire(*a, **k)

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if str(dir).startswith(store):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(locks, "FileLock", ReadOnlyLock)
    monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)
    out = reproduce(_cfg(tmp, f"out_dir={tmp / 'elsewhere'}"))  # every cell is done: nothing to write there
    assert out["ran"] == 2 and Path(out["outputs"][1]).exists()
    with pytest.raises(OSError, match="cannot write .*: Read-only file system; pass a writable store="):
        reproduce(_cfg(tmp, f"out_dir={tmp / 'elsewhere2'}", "attacks=[pgd]"))  # PGD is missing: it must write


def test_the_audit_refuses_an_edited_config_before_training_its_reference(table, tmp_path):
    """Issue 28, item 9: the audit trained a reference run from an edited config.yaml before refusing it."""
    import yaml

    from pclc.audit.cli import audit

    tmp = _copy(table, tmp_path)
    run = _run(tmp, "pclc")
    conf = yaml.safe_load((run / "config.yaml").read_text())
    conf["resolved"]["trainer"]["batch_size"] = 64
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    before = sorted(p.name for p in (tmp / "runs").iterdir())
    with pytest.raises(RunIntegrityError, match="was edited"):
        audit(
            compose(
                "audit",
                [
                    f"audit.run={run.name}",
                    f"store={tmp / 'runs'}",
                    "logger=none",
                    f"audit.out_dir={tmp / 'audit'}",
                ],
            )
        )
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == before


def test_a_truncated_result_is_set_aside_naming_its_file(table, tmp_path, caplog):
    """Issue 28, item 9: stage=tables on a truncated result printed a JSON error without the file's name."""
    tmp = _copy(table, tmp_path)
    f = next((_run(tmp, "pclc") / "eval").glob("white-fgsm-eps0.2-*.json"))
    f.write_text(f.read_text()[:95])
    with caplog.at_level(logging.WARNING):
        reproduce(_cfg(tmp, "stage=tables"))
    assert f"result set aside: cannot read {f}" in caplog.text
    cell = _csv(tmp).query("method == 'pclc' and attack == 'fgsm' and param == '0.2'").iloc[0]
    assert cell.status == "not run"
