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
    return compose("reproduce", ["experiment=table1", "profile=tiny", "logger=none", f"store={tmp / 'runs'}",
                                 f"out_dir={tmp / 'results'}", "datasets=[fmnist]", FAKE, "attacks=[fgsm]", *over])


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
