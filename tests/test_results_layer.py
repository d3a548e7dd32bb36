"""The results layer (pclc.results): evaluation file names have one home and stay what stores already hold, and
a store reads back as one flat table that every table, study and cost estimate filters."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pclc.attacks.suite import SuiteItem
from pclc.config import compose
from pclc.reproduce import reproduce
from pclc.results import RECORD_COLUMNS, read_store, result_stem

PKG = Path(__file__).resolve().parents[1] / "pclc"
PGD = {"nb_iter": 40, "eps_iter": 0.01, "rand_init": True}


@pytest.mark.parametrize(
    "item, settings, stem",
    [
        (SuiteItem("pgd", "pgd", 0.1, "white", PGD), (None, "fp32", 1000), "white-pgd-eps0.1-869c9a92"),
        (SuiteItem("pgd", "pgd", 0.1, "white", PGD), (1000, "fp32", 1000), "white-pgd-eps0.1-sub1000-869c9a92"),
        (SuiteItem("pgd", "pgd", 0.1, "white", PGD), (None, "bf16", 256), "white-pgd-eps0.1-bf16-bs256-869c9a92"),
        (SuiteItem("cw", "cw", None, "transfer", {"lr": 0.01}), (None, "fp32", 1000), "transfer-cw-e297a014"),
    ],
)
def test_result_names_are_the_ones_stores_and_the_zoo_already_hold(item, settings, stem):
    """Pinned literally: another name would orphan every finished evaluation of every store."""
    assert result_stem(item, *settings) == stem


def test_no_module_but_the_results_layer_builds_an_evaluation_path_or_globs_a_store():
    patterns = [r"\.eval\s*/", r"\.adv\s*/", r"\.eval\.glob\(", r"\.adv\.glob\(", r"store\.glob\(", r"\"eval/"]
    found = {
        str(p.relative_to(PKG)): pat
        for p in PKG.rglob("*.py")
        if p.name != "results.py"
        for pat in patterns
        if re.search(pat, p.read_text())
    }
    assert found == {}, found


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layer")
    cfg = compose(
        "reproduce",
        [
            "experiment=table1",
            "profile=tiny",
            "logger=none",
            f"store={tmp / 'runs'}",
            f"out_dir={tmp / 'results'}",
            "datasets=[fmnist]",
            "dataset_map={fmnist: fake}",
            "attacks=[fgsm,pgd]",
        ],
    )
    reproduce(cfg)
    return tmp


@pytest.mark.slow
def test_a_store_reads_as_one_flat_record_per_result_file(store):
    df = read_store(store / "runs")
    files = sorted((store / "runs").glob("*/eval/*.json"))
    assert list(df.columns) == RECORD_COLUMNS
    assert sorted(df.file) == sorted(map(str, files)) and len(files) >= 2 * 6  # 2 methods, fgsm + pgd at 3 eps
    for r in df.itertuples():
        raw = json.loads(Path(r.file).read_text())
        assert r.accuracy == raw["adv_accuracy"] and r.run == Path(r.file).parent.parent.name
        assert r.dataset == "fake" and r.model == "lenet5" and r.loss in ("ce", "pclc") and r.seed == 0
        assert json.loads(r.budget) == raw["params"] and r.eps in (0.1, 0.2, 0.3)
    # the table the command wrote is a pivot of these records
    table = pd.read_csv(store / "results" / "tiny" / "table1.csv", comment="#", dtype={"param": str})
    row = table[(table.method == "pclc") & (table.attack == "pgd") & (table.param == "0.2")].iloc[0]
    mine = df[(df.loss == "pclc") & (df.attack == "pgd") & (df.eps == 0.2)]
    assert len(mine) == 1 and row.ours == round(float(mine.accuracy.iloc[0]), 2)


def test_a_hand_edited_result_leaves_the_checked_table_and_stays_in_the_unchecked_one(store, tmp_path):
    shutil.copytree(store / "runs", tmp_path / "runs")
    f = sorted((tmp_path / "runs").glob("*/eval/white-fgsm-eps0.1-*.json"))[0]
    raw = json.loads(f.read_text())
    f.write_text(json.dumps({**raw, "adv_accuracy": raw["adv_accuracy"] + 5}))
    checked, unchecked = read_store(tmp_path / "runs"), read_store(tmp_path / "runs", checked=False)
    assert str(f) not in set(checked.file) and str(f) in set(unchecked.file)  # the planner reads its seconds
    assert len(unchecked) == len(checked) + 1
    only = read_store(tmp_path / "runs", keys=[f.parent.parent.name])
    assert set(only.run) == {f.parent.parent.name}


def test_a_minimum_norm_attacks_budget_curve_counts_only_breaks_within_the_budget():
    from pclc.analysis.budget import broken_norms, budget_curve, median

    label, clean, adv = [0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 1]  # #3 wrong clean; #2 survives; #0, #1 broken
    l2 = [0.5, 2.0, 9.0, 0.1]
    assert (
        broken_norms(label, clean, adv, l2).tolist() == [0.5, 2.0]
        and median(broken_norms(label, clean, adv, l2)) == 0.5
    )
    assert budget_curve(label, clean, adv, l2, [0.0, 0.5, 1.0, 2.0, 100.0]) == [75.0, 50.0, 50.0, 25.0, 25.0]


def test_cw_results_record_norms_and_the_budget_report_reads_them(tmp_path):
    """Issue 30 item 4: a C&W evaluation records each example's L2 and L-inf; make cw-budget turns them into the
    median norms of the successes and a curve that ends at the robust accuracy."""
    from pclc.cw_budget import write

    cfg = compose(
        "reproduce",
        [
            "experiment=table1",
            "profile=tiny",
            "logger=none",
            f"store={tmp_path / 'runs'}",
            f"out_dir={tmp_path / 'results'}",
            "datasets=[fmnist]",
            "dataset_map={fmnist: fake}",
            "attacks=[cw]",
        ],
    )
    reproduce(cfg)
    f = next((tmp_path / "runs").glob("*-pclc-*/eval/white-cw-*.json"))
    rec = json.loads(f.read_text())["records"]
    assert len(rec["l2"]) == len(rec["linf"]) == len(rec["label"]) and all(v >= 0 for v in rec["l2"])
    # An adversarially trained run beside them (CE's run, its config saying FGSM training): in a flat table of
    # both kinds a plain run's `adversarial` is NaN, which once labelled every run "+at"
    ce = next((tmp_path / "runs").glob("*-ce-*"))
    shutil.copytree(ce, ce.with_name(ce.name + "-at"))
    c = OmegaConf.load(ce.with_name(ce.name + "-at") / "config.yaml")
    c.resolved.trainer.adversarial = {"attack": "fgsm"}
    OmegaConf.save(c, ce.with_name(ce.name + "-at") / "config.yaml")
    paths = write(tmp_path / "runs", tmp_path / "out", budgets=(0.0, 1e9))
    df = pd.read_csv(tmp_path / "out" / "cw_budget.csv", comment="#")
    assert sorted(df.method) == ["ce", "ce+at", "pclc"] and len(paths) == 3
    df = df[df.method != "ce+at"]
    for _, r in df.iterrows():
        rec = json.loads(next((tmp_path / "runs" / r.run / "eval").glob("white-cw-*.json")).read_text())["records"]
        clean = sum(c == y for c, y in zip(rec["clean_pred"], rec["label"]))
        assert r["acc_l2<=0"] == 100.0 * clean / r.n  # nothing breaks within a budget of 0
        assert r["acc_l2<=1e+09"] == 100.0 * (clean - r.broken) / r.n  # everything C&W broke, at any budget
