"""The deviations study: every committed cell outside tolerance is listed, judged from the arms' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pclc.config import compose
from pclc.deviation_report import _ms
from pclc.deviations import verdict
from pclc.experiment import eval_cfg, experiment_cells, train_cfg
from pclc.reports import seed_interval
from pclc.reproduce import reproduce
from pclc.store import RunDir, device_name, run_key
from pclc.train import phase_optimizer


def test_verdict_rules_are_the_configs():
    assert verdict(0.0, 40.0, [8.0], 10.0) == "explained"  # within tolerance of the paper
    assert verdict(0.0, 40.0, [18.0], 10.0) == "partly"  # closes more than half the gap
    assert verdict(0.0, 40.0, [25.0], 10.0) == "not explained"
    assert verdict(0.0, 40.0, [], 10.0) == "not run"
    assert verdict(20.0, 40.0, [25.0, 40.0, 35.0], 10.0, seeds=True) == "explained"  # |33.3 - 20| <= 37.9
    # five seeds, mean 34, sd 3.16: the 95% prediction interval is 34 ± 2.776 x 3.16 x sqrt(1.2) = 34 ± 9.6,
    # wider than 2 sd (6.3): a paper number 9 away is one more plausible seed, 11 away is not
    five = [30.0, 32.0, 34.0, 36.0, 38.0]
    assert seed_interval(five) == pytest.approx(9.618, abs=1e-3) and seed_interval([1.0]) is None
    assert verdict(25.0, 40.0, five, 10.0, seeds=True) == "explained"
    assert verdict(23.0, 40.0, five, 10.0, seeds=True) == "not explained"
    # the saturation table: the 95% t interval of the mean, 34 ± 2.776 x 3.16 / sqrt(5)
    assert _ms(five) == "34.0 ± 3.2 [30.1, 37.9] (n=5)" and _ms([1.0]) == "1.0 (n=1)" and _ms([]) == "—"
    assert verdict(20.0, 40.0, [39.0, 40.0, 41.0], 10.0, seeds=True) == "not explained"
    assert verdict(20.0, 40.0, [40.0], 10.0, seeds=True) == "not run"  # one seed: no spread


def _committed(folder):
    """A committed Table 1 and Table 5 of Fashion-MNIST with cells inside and outside tolerance."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        ("table1", "clean", "-", "ce", 90.1, 89.0),
        ("table1", "bim", "0.1", "ce", 0.0, 37.8),
        ("table1", "bim", "0.2", "pclc", 8.4, 15.0),
        ("table1", "cw", "0.0", "pclc", 21.8, 68.0),
        ("table5", "mim", "0.3", "pclc", 2.2, 14.2),
        ("table5", "bim", "0.3", "pclc", 4.9, 18.9),
    ]
    for t in ("table1", "table5"):
        df = pd.DataFrame(
            [
                {
                    "table": r[0],
                    "dataset": "fmnist",
                    "model": "lenet5",
                    "attack": r[1],
                    "param": r[2],
                    "method": r[3],
                    "paper": r[4],
                    "ours": r[5],
                    "diff": round(r[5] - r[4], 2),
                    "status": "run",
                }
                for r in rows
                if r[0] == t
            ]
        )
        (folder / f"{t}.csv").write_text(f"# {t}\n# commit: abc\n# date: today\n" + df.to_csv(index=False))


@pytest.mark.slow
def test_deviations_list_every_cell_outside_tolerance_with_the_arms_numbers(tmp_path):
    _committed(tmp_path / "results")
    cfg = compose(
        "reproduce",
        [
            "experiment=deviations",
            "profile=tiny",
            "logger=none",
            f"store={tmp_path / 'runs'}",
            f"out_dir={tmp_path / 'results'}",
            "dataset_map={fmnist: fake}",
            "studies=[bim_step,paper_self]",
        ],
    )
    cfg.experiment.tables = ["table1", "table5"]
    out = reproduce(cfg)
    csv = pd.read_csv(next(p for p in out["outputs"] if p.endswith(".csv")), comment="#", dtype={"param": str})
    cells = set(zip(csv.table, csv.attack, csv.param, csv.method))
    # outside tolerance: bim 0.1 ce (+37.8), cw pclc (+46.2), table5 mim (+12.0), bim (+14.0);
    # inside: clean, bim 0.2 pclc
    assert cells == {
        ("table1", "bim", "0.1", "ce"),
        ("table1", "cw", "0.0", "pclc"),
        ("table5", "mim", "0.3", "pclc"),
        ("table5", "bim", "0.3", "pclc"),
    }
    cw = csv[csv.attack == "cw"]
    assert set(cw.study) == {"cw_lr"} and set(cw.verdict) == {"not run"}  # its study was not run: listed, not run
    assert set(csv[(csv.table == "table1") & (csv.attack == "bim")].study) == {
        "seeds",
        "ce_baseline",
        "bim_step",
    }
    # the BIM arms' numbers are the store's evaluation files of those arms
    arm_cell = next(c for c in experiment_cells(cfg) if c.arm == "bim_step.step0.05" and c.method == "ce")
    ec = eval_cfg(arm_cell, cfg, "deviations")
    assert ec.eval.param_overrides.bim.eps_iter == 0.05 and ec.eval.param_overrides.bim.nb_iter == 2  # tiny wins
    run = RunDir(cfg.store, run_key(train_cfg(arm_cell, cfg)))
    files = {
        json.loads(f.read_text())["eps"]: json.loads(f.read_text())
        for f in run.eval.glob("white-bim-*.json")
        if json.loads(f.read_text())["params"]["eps_iter"] == 0.05
    }
    bim = csv[(csv.attack == "bim") & (csv.table == "table1") & (csv.study == "bim_step")].set_index("arm")
    row, base = bim.loc["step0.05"], bim.loc["paper"].value  # base: the paper's BIM on the same run
    assert row.value == round(files[0.1]["adv_accuracy"], 2) and base is not None
    assert row.verdict == (
        "explained"
        if row.value <= 2.0
        # the paper's 0.0 is near zero: ours must be <= 2
        else "partly"
        if abs(row.value) <= abs(base) / 2
        else "not explained"
    )
    ref = csv[(csv.study == "paper_self")].set_index("attack")
    assert ref.loc["mim", "value"] == 4.5 and ref.loc["mim", "verdict"] == "explained"  # |14.2 - 4.5| <= 10
    assert ref.loc["bim", "value"] == 6.4 and ref.loc["bim", "verdict"] == "not explained"  # |18.9 - 6.4| > 10
    cfg.plan, cfg.studies = True, ["bim_step", "cw_lr"]  # the planner costs cw_lr from the store's files
    planned = {c["label"]: c for c in reproduce(cfg)["cells"]}  # (the report's saturation cache among them)
    assert planned["fmnist/lenet5/ce/bim_step.step0.05"]["evals_missing"] == 0
    assert planned["fmnist/lenet5/ce/cw_lr.lr0.01"]["evals_missing"] == 1
    md = next(p for p in out["outputs"] if p.endswith(".md"))
    text = open(md).read()
    assert (
        "## Every cell outside tolerance (4 of 6 committed cells)" in text and "Saturation of the trained runs" in text
    )
    # the machine that computed the arms' attacks, each result file once (a lease's GPU cells were unnamed)
    files = {f for f in Path(cfg.store).glob("*/eval/*.json") if ".partial" not in f.name}
    assert f"- attacks computed on: {device_name(torch.device('cpu'))} ({len(files)} result files" in text


def test_unknown_study_or_arm_is_refused_before_any_work(tmp_path):
    cfg = compose(
        "reproduce",
        ["experiment=deviations", "logger=none", f"store={tmp_path / 'runs'}", "studies=[bim_step,nope]"],
    )
    with pytest.raises(ValueError, match=r"unknown \['nope'\]"):
        reproduce(cfg)
    cfg = compose(
        "reproduce",
        [
            "experiment=deviations",
            "logger=none",
            f"store={tmp_path / 'runs'}",
            "arms=[ce_baseline.margin_pgd,ce_baseline.nope]",
        ],
    )
    with pytest.raises(ValueError, match=r"unknown \['ce_baseline.nope'\]"):
        reproduce(cfg)
    assert not (tmp_path / "runs").exists()
    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "arms=[ce_baseline.margin_pgd]"])
    assert {(c.arm, c.method) for c in experiment_cells(cfg)} == {
        ("ce_baseline.margin_pgd", "ce"),
        ("ce_baseline.margin_pgd", "pclc"),
    }


def test_an_arms_training_overrides_reach_adam_and_the_paper_protocols_key_is_unchanged():
    # device=cpu: the committed runs are CPU fp32 runs (on a GPU machine, device=auto keys a bf16 run)
    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[ce_baseline]", "device=cpu"])
    cells = {(c.arm, c.method): c for c in experiment_cells(cfg)}
    tc = train_cfg(cells["ce_baseline.gce_recipe", "ce"], cfg)
    assert (tc.trainer.lr, tc.trainer.batch_size, list(tc.trainer.betas)) == (0.001, 64, [0.9, 0.99])
    import torch

    opt, _ = phase_optimizer(torch.nn.Linear(2, 2), tc.trainer)
    assert opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["lr"] == 0.001
    paper = train_cfg(cells["ce_baseline.margin_pgd", "ce"], cfg)  # no training overrides: the committed runs
    assert run_key(paper) == "fmnist-lenet5-ce-s0-21422a8e5865"
    assert run_key(train_cfg(cells["ce_baseline.margin_pgd", "pclc"], cfg)) == "fmnist-lenet5-pclc-s0-eb5bbf275afe"
    assert phase_optimizer(torch.nn.Linear(2, 2), paper.trainer)[0].defaults["betas"] == (0.9, 0.999)
    assert list(train_cfg(cells["ce_baseline.lr_decay", "ce"], cfg).trainer.milestones) == [25]


@pytest.mark.slow
def test_the_transfer_study_reports_the_substitutes_saturation(tmp_path):
    _committed(tmp_path / "results")
    cfg = compose(
        "reproduce",
        [
            "experiment=deviations",
            "profile=tiny",
            "logger=none",
            f"store={tmp_path / 'runs'}",
            f"out_dir={tmp_path / 'results'}",
            "dataset_map={fmnist: fake}",
            "arms=[transfer.paper,ce_baseline.paper]",
        ],
    )
    cfg.experiment.tables = ["table1"]
    out = reproduce(cfg)
    subs = sorted((tmp_path / "runs").glob("fake-cnn3-ce-s0-*"))
    assert len(subs) == 1 and (subs[0] / "model.pt").exists()  # the CE substitute, trained once for both targets
    sat = json.loads((subs[0] / "saturation.json").read_text())
    assert 0.0 <= sat["share_p_y_one"] <= 1.0 and sat["margin_q10"] <= sat["margin_median"] <= sat["margin_q90"]
    text = open(next(p for p in out["outputs"] if p.endswith(".md"))).read()
    row = next(ln for ln in text.splitlines() if ln.startswith("| transfer substitute (cnn3) | ce |"))
    assert f"{100 * sat['share_p_y_one']:.1f} (n=1)" in row
    # the figure: one point per target run with the paper's PGD (ce_baseline.paper); without it there is none
    png = next(p for p in out["outputs"] if p.endswith("deviations_saturation.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    cfg.arms = ["transfer.paper"]
    from pclc.deviation_figures import saturation_figure
    from pclc.deviation_saturation import saturation
    from pclc.deviations import arm_results

    assert saturation_figure(cfg, saturation(cfg), arm_results(cfg), tmp_path / "none.png") is None


def test_the_seeds_study_judges_by_the_prediction_interval_and_reports_it():
    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[seeds]"])
    cells = pd.DataFrame(
        [
            {
                "table": "table1",
                "dataset": "fmnist",
                "model": "lenet5",
                "attack": "pgd",
                "param": "0.1",
                "method": "pclc",
                "paper": 25.0,
                "ours": 40.0,
                "diff": 15.0,
                "tolerance": 10.0,
                "outside": True,
            }
        ]
    )
    per_seed = [30.0, 32.0, 34.0, 36.0, 38.0]  # 34 ± 9.6: the paper's 25 is one more plausible seed
    res = pd.DataFrame(
        [
            {
                "study": "seeds",
                "arm": "seeds",
                "dataset": "fmnist",
                "method": "pclc",
                "seed": s,
                "run": f"r{s}",
                "attack": "pgd",
                "source": "white",
                "eps": 0.1,
                "n": 10000,
                "accuracy": a,
                "max_linf": None,
            }
            for s, a in enumerate(per_seed)
        ]
    )
    from pclc.deviation_report import to_markdown
    from pclc.deviations import judge

    judged = judge(cfg, cells, res)
    row = judged.iloc[0]
    assert (row.study, row.arm, row.n_seeds, row.value, row.sd) == ("seeds", "seeds", 5, 34.0, 3.16)
    assert row.pi95 == pytest.approx(9.62) and row.verdict == "explained"
    assert judge(cfg, cells.assign(paper=23.0), res).verdict.iloc[0] == "not explained"  # 11 away: outside
    sat = pd.DataFrame(
        columns=[
            "training",
            "method",
            "seed",
            "run",
            "share_p_y_one",
            "share_zero_grad",
            "margin_q10",
            "margin_median",
            "margin_q90",
        ]
    )
    md = to_markdown(cfg, cells, judged, sat, res)
    assert "| table1 pclc pgd ε=0.1 | 25.0 | 40.0 | seeds | 5 | 34.0 ± 3.2 [24.4, 43.6] | explained |" in md


def _cell(method: str, attack: str, param: str, paper: float, ours: float, table: str = "table1") -> dict:
    return {
        "table": table,
        "dataset": "fmnist",
        "model": "lenet5",
        "attack": attack,
        "param": param,
        "method": method,
        "paper": paper,
        "ours": ours,
        "diff": ours - paper,
        "tolerance": 10.0,
        "outside": True,
    }


def test_an_arm_is_judged_only_on_the_methods_it_runs():
    from pclc.deviations import judge

    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[ce_baseline,bim_step]"])
    cells = pd.DataFrame([_cell("pclc", "fgsm", "0.1", 58.0, 30.0), _cell("gce", "bim", "0.1", 5.0, 30.0)])
    res = pd.DataFrame(
        [
            {
                "study": "ce_baseline",
                "arm": arm,
                "dataset": "fmnist",
                "method": "pclc",
                "seed": s,
                "run": f"r{s}",
                "attack": "fgsm",
                "source": "white",
                "eps": 0.1,
                "n": 10000,
                "accuracy": a,
                "max_linf": None,
            }
            for arm, s, a in [("paper", 0, 31.0), ("gce_recipe", 0, 51.0), ("gce_recipe", 1, 55.0)]
        ]
    )
    judged = judge(cfg, cells, res)
    pclc = judged[judged.method == "pclc"].set_index("arm")
    # lr_decay trains CE only; margin_pgd has no FGSM; margin_fgsm_bim stands for FGSM but has no number here
    assert sorted(pclc.index) == ["gce_recipe", "margin_fgsm_bim", "paper"]
    assert pclc.loc["margin_fgsm_bim", "verdict"] == "not run"
    assert (pclc.loc["gce_recipe", "value"], pclc.loc["gce_recipe", "n_seeds"]) == (
        53.0,
        2,
    )  # the seeds' mean
    assert pclc.loc["gce_recipe", "verdict"] == "explained" and pclc.loc["paper", "verdict"] == "baseline"
    gce = judged[judged.method == "gce"]  # claimed by bim_step, whose arms do not train GCE: listed, not run
    assert list(zip(gce.study, gce.arm, gce.verdict)) == [("bim_step", "—", "not run")]


def test_full_rows_show_an_arm_on_every_claimed_cell_with_the_count_within_tolerance():
    from pclc.deviation_report import full_rows

    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[ce_baseline]"])
    assert list(cfg.experiment.studies.ce_baseline.full_rows) == ["gce_recipe"]
    cells = pd.DataFrame(
        [
            _cell("pclc", "fgsm", "0.1", 58.0, 30.0),
            _cell("pclc", "pgd", "0.1", 15.7, 20.0),
            {**_cell("ce", "clean", "-", 90.1, 88.7), "tolerance": 5.0},
            _cell("gce", "fgsm", "0.1", 40.0, 10.0),
        ]
    )  # GCE: not claimed by the study
    got = [
        ("paper", "pclc", "fgsm", 0.1, 0, 31.0),
        ("gce_recipe", "pclc", "fgsm", 0.1, 0, 51.0),
        ("gce_recipe", "pclc", "fgsm", 0.1, 1, 55.0),
        ("paper", "pclc", "pgd", 0.1, 0, 20.0),
        ("gce_recipe", "pclc", "pgd", 0.1, 0, 11.0),
        ("paper", "ce", "clean", None, 0, 88.7),
        ("gce_recipe", "ce", "clean", None, 0, 90.2),
    ]
    res = pd.DataFrame(
        [
            {
                "study": "ce_baseline",
                "arm": a,
                "dataset": "fmnist",
                "method": m,
                "seed": s,
                "run": "r",
                "attack": att,
                "source": "white",
                "eps": e,
                "n": 10000,
                "accuracy": v,
                "max_linf": None,
            }
            for a, m, att, e, s, v in got
        ]
    )
    lines = full_rows(cfg, "ce_baseline", cells, res)
    assert (
        "within tolerance of the paper in 3 of 3 cells (the paper arm on this machine: 2; the committed tables: 2)"
        in lines[1]
    )
    rows = [ln for ln in lines if ln.startswith("| table1")]
    assert rows[0] == "| table1 pclc fgsm ε=0.1 | 58.0 | 30.0 | 31.0 (n=1) | 53.0 ± 2.8 [27.6, 78.4] (n=2) | ✓ |"
    assert len(rows) == 3 and not any(" gce " in r for r in rows)


def test_an_accuracys_interval_is_shown_within_0_100():
    from pclc.deviation_report import _ms

    assert _ms([1.0, 9.0]) == "5.0 ± 5.7 [-45.8, 55.8] (n=2)"  # a margin may be negative
    assert _ms([1.0, 9.0], 0, 100) == "5.0 ± 5.7 [0.0, 55.8] (n=2)"


def test_table3s_transfer_cells_are_judged_over_seeds_by_the_transfer_arm_only():
    from pclc.deviation_report import to_markdown
    from pclc.deviations import judge

    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[seeds]"])
    cells = pd.DataFrame([_cell("ce", "bb_pgd", "0.2", 50.4, 62.7, table="table3")])
    res = pd.DataFrame(
        [
            {
                "study": "seeds",
                "arm": arm,
                "dataset": "fmnist",
                "method": "ce",
                "seed": s,
                "run": f"r{s}",
                "attack": "pgd",
                "source": src,
                "eps": 0.2,
                "n": 10000,
                "accuracy": a,
                "max_linf": None,
            }
            for arm, src, s, a in [
                ("seeds", "white", 0, 24.0),
                ("seeds", "white", 1, 26.0),
                ("seeds_transfer", "transfer", 0, 58.0),
                ("seeds_transfer", "transfer", 1, 62.0),
            ]
        ]
    )
    judged = judge(cfg, cells, res)
    # the white-box seeds arm runs PGD too, but not from the substitute: it has no number for a transfer row
    assert list(zip(judged.arm, judged.n_seeds, judged.value)) == [("seeds_transfer", 2, 60.0)]
    assert judged.verdict.iloc[0] == "explained"  # 60 ± 12.71 x 2.83 x 1.22: wide with two seeds
    md = to_markdown(
        cfg,
        cells,
        judged,
        pd.DataFrame(
            columns=[
                "training",
                "method",
                "seed",
                "run",
                "share_p_y_one",
                "share_zero_grad",
                "margin_q10",
                "margin_median",
                "margin_q90",
            ]
        ),
        res,
    )
    assert "| table3 ce bb_pgd ε=0.2 | 50.4 | 62.7 | seeds_transfer | 2 | 60.0 ± 2.8 [16.0, 100.0] | explained |" in md


def test_only_a_primary_arm_explains_and_near_zero_needs_near_zero():
    """Issue 29: an exploratory arm makes a cell at most "partly"; where the paper reports <= 1%, ours must be
    <= 2% to be within tolerance (9% does not explain 0%)."""
    nz = {"paper_at_most": 1.0, "ours_at_most": 2.0}
    assert verdict(21.8, 75.5, [24.0], 10.0, primary=True) == "explained"
    assert verdict(21.8, 75.5, [24.0], 10.0, primary=False) == "partly"  # within tolerance, exploratory
    assert verdict(21.8, 75.5, [60.0], 10.0, primary=False) == "not explained"
    assert verdict(0.0, 33.7, [9.2], 10.0, near_zero=nz) == "partly"  # closes half the gap, not zero
    assert verdict(0.0, 33.7, [1.5], 10.0, near_zero=nz) == "explained"
    assert verdict(0.0, 10.0, [9.2], 10.0, near_zero=nz) == "not explained"  # closes nothing: 9.2 > 10 / 2
    assert verdict(4.6, 33.7, [9.2], 10.0, near_zero=nz) == "explained"  # the paper is not near zero
    five = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert verdict(0.5, 20.0, five, 10.0, seeds=True, near_zero=nz) == "not explained"  # inside the PI, not zero


def test_the_config_declares_a_primary_arm_per_study_and_the_report_counts_arms_tried():
    cfg = compose("reproduce", ["experiment=deviations", "logger=none", "studies=[cw_lr]"])
    studies = cfg.experiment.studies
    for name, st in studies.items():
        arms = [a.name for a in st.get("arms") or []]
        if arms and name != "pgd_steps":  # pgd_steps claims no cell: its arms are measurements
            assert st.get("primary") and set(st.primary) <= set(arms), name
    cells = pd.DataFrame([_cell("pclc", "cw", "0.0", 21.8, 75.5)])
    res = pd.DataFrame(
        [
            {
                "study": "cw_lr",
                "arm": arm,
                "dataset": "fmnist",
                "method": "pclc",
                "seed": 0,
                "run": "r",
                "attack": atk,
                "source": "white",
                "eps": None,
                "n": n,
                "accuracy": acc,
                "max_linf": None,
            }
            for arm, atk, n, acc in (
                ("paper", "cw", 10000, 75.5),
                ("lr0.01", "cw", 10000, 32.8),
                ("lr0.03-sub", "cw", 1000, 17.5),
            )
        ]
    )
    from pclc.deviation_report import to_markdown
    from pclc.deviations import judge

    judged = judge(cfg, cells, res)
    by_arm = dict(zip(judged.arm, judged.verdict))
    assert by_arm["lr0.03-sub"] == "partly" and by_arm["lr0.01"] == "partly"  # before: lr0.03-sub "explained"
    sat = pd.DataFrame(
        columns=[
            "training",
            "method",
            "seed",
            "run",
            "share_p_y_one",
            "share_zero_grad",
            "margin_q10",
            "margin_median",
            "margin_q90",
        ]
    )
    md = to_markdown(cfg, cells, judged, sat, res)
    assert "| table1 | pclc | cw | 21.8 | 75.5 | +53.7 | **partly** |" in md and "| 3 |" in md


def test_ours_is_the_mean_over_seeds_where_a_cell_has_seeds(tmp_path):
    """Issue 29, item 2: a cell judged on the seed-0 number while five seeds put it elsewhere is judged on their
    mean (a cell inside tolerance at seed 0 but outside over seeds is listed, and the reverse drops out)."""
    from pclc.deviations import committed_cells

    rows = [_cell("pclc", "mim", "0.2", 6.3, 12.0), _cell("pclc", "fgsm", "0.3", 31.8, 17.4)]
    seed0 = pd.DataFrame([{**r, "status": "run", "n_seeds": 1} for r in rows]).drop(columns=["tolerance", "outside"])
    seeds = seed0.assign(ours=[19.3, 25.0], diff=[13.0, -6.8], n_seeds=[5, 5], pi95=[6.0, 12.0])
    (tmp_path / "seeds").mkdir(parents=True)
    seed0.drop(columns=["table"]).assign(table="table1").to_csv(tmp_path / "table1.csv", index=False)
    seeds.drop(columns=["table"]).assign(table="table1").to_csv(tmp_path / "seeds" / "table1.csv", index=False)
    cfg = compose("reproduce", ["experiment=deviations", "logger=none", f"out_dir={tmp_path}"])
    cfg.experiment.tables = ["table1"]
    cells, notes = committed_cells(cfg)
    got = cells.set_index("attack")
    assert (
        got.loc["mim", "ours"] == 19.3
        and bool(got.loc["mim", "outside"])
        and got.loc["mim", "ours_from"] == "mean of 5 seeds"
    )
    assert got.loc["fgsm", "ours"] == 25.0 and not bool(got.loc["fgsm", "outside"])  # 17.4 at seed 0 was outside
    assert any("over seeds" in n for n in notes)


@pytest.mark.slow
def test_the_survivor_analysis_counts_saturated_survivors_of_the_papers_pgd(tmp_path):
    """Issue 29, item 4: of the examples the paper's PGD at eps 0.1 leaves correct, how many have p_y == 1.0 and
    an all-zero CE gradient, from the result's own per-example records and the probe of the same weights."""
    import torch

    from pclc.analysis.saturation import saturation_probe
    from pclc.data import eval_tensors
    from pclc.deviation_saturation import saturation_of
    from pclc.evaluate import evaluate
    from pclc.store import load_run
    from pclc.train import train

    over = [
        "dataset=fake",
        "model=lenet5",
        "loss=ce",
        "logger=none",
        "trainer.epochs_per_phase=2",
        f"store={tmp_path}",
    ]
    s = train(compose("train", over))
    evaluate(compose("evaluate", [*over, "suite.entries=[{attack: pgd, eps: [0.1]}]"]))
    run = RunDir(tmp_path, s["key"])
    got = saturation_of(run, compose("train", over).dataset.root, torch.device("cpu"))
    cfg, model = load_run(run, torch.device("cpu"))
    x, y = eval_tensors(cfg.dataset, None, "cpu")
    probe = saturation_probe(model, x, y, indices=True)
    r = json.loads(next(run.eval.glob("white-pgd-eps0.1-*.json")).read_text())["records"]
    alive = {i for i, (a, b) in enumerate(zip(r["adv_pred"], r["label"])) if a == b}
    assert got["pgd01_survivors"] == len(alive)
    assert got["pgd01_survivors_p_y_one"] == len(alive & set(probe["p_y_one_idx"]))
    assert got["pgd01_survivors_zero_grad"] == len(alive & set(probe["zero_grad_idx"]))


def test_the_float64_arm_computes_the_attack_gradient_where_float32_saturates():
    """Issue 29's float64 PGD arm: eval.precision=fp64 gives float64 logits, so a confidently right example whose
    float32 CE gradient is exactly zero (p_y rounds to 1) still has a gradient to follow; the arm's results are
    their own files (-fp64)."""
    import torch
    import torch.nn.functional as F

    from pclc.config import compose
    from pclc.experiment import eval_cfg, experiment_cells
    from pclc.metrics import with_precision
    from pclc.results import eval_settings

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].weight[0] = 100.0  # at x = 0.5: logits (200, 0, 0), a margin of 200
        model[1].weight[1] = 0.5
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])

    def grad(m, xs):
        xs = xs.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(m(xs), y), xs)
        return g

    assert torch.all(grad(model, x) == 0)  # float32: exp(-200) underflows, nothing to follow
    fp64 = with_precision(model, "fp64")
    g = grad(fp64, x.double())
    assert fp64(x).dtype == g.dtype == torch.float64 and torch.all(g != 0) and model[1].weight.dtype == torch.float32
    cfg = compose(
        "reproduce", ["experiment=deviations", "logger=none", "datasets=[fmnist]", "arms=[ce_baseline.float64_pgd]"]
    )
    jobs = experiment_cells(cfg)
    assert {j.method for j in jobs} == {"ce", "pclc"} and all(not j.train_extra for j in jobs)
    ec = eval_cfg(jobs[0], cfg, cfg.experiment.suite)
    assert eval_settings(ec)[1] == "fp64" and [e.attack for e in ec.suite.entries] == ["pgd"]
