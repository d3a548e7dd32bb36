"""Reproduce: every experiment runs end to end on synthetic data; tables match the paper's layout."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import pclc.evaluate as ev
import pclc.train as train_mod
from pclc import robustbench
from pclc.config import CONFIG_DIR, compose
from pclc.paper_data import paper_tables, table_rows
from pclc.reports import combine, substitute_notes, to_markdown
from pclc.reproduce import reproduce

SHARED = Path(__file__).resolve().parents[2] / "shared" / "paper" / "paper_tables.csv"
FAKE_MAP = (
    "dataset_map={mnist: fake, kmnist: fake, fmnist: fake, cifar10: fake_colour, svhn: fake_colour, "
    "cifar100: fake_large, tinyimagenet: fake_large}"
)
# one paper dataset per experiment (mapped to synthetic data): keeps the smoke test to a few minutes
SMOKE = {
    "table1": "mnist",
    "table2": "mnist",
    "table3": "mnist",
    "table4": "cifar100",
    "table5": "mnist",
    "demo": "fmnist",
    "figure1": "cifar10",
    "figure2": "mnist",
    "figure3": "mnist",
    "gaps": "cifar100",
    "audit": "fmnist",
    "deviations": "fmnist",
    "autoattack": "fmnist",
    "baselines": "fmnist",
}
SMOKE_OVER = {
    "autoattack": [
        "experiment.methods=[ce,pclc]",
        "experiment.seeds.ce=[0]",
        "experiment.seeds.pclc=[0,1]",
        "experiment.arms=[]",
        "experiment.subset=20",
    ],
    "baselines": [
        "experiment.methods=[ce,ce+trades]",
        "experiment.seeds={ce: [0], ce+trades: [0]}",
        "experiment.subset=20",
    ],
    # one arm of each kind (several seeds under the seeds rule, a training override, a subset arm on the FGSM-AT
    # models, a transfer arm): every arm took 405 s, 40% of the suite; test_deviations runs studies in depth
    "deviations": [
        "arms=[seeds.seeds,ce_baseline.paper,ce_baseline.lr_decay,cw_lr.lr0.1-sub,transfer.margin_transfer]",
        "experiment.studies.seeds.arms.0.seeds=[0,1]",
    ],
}  # a few models
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def repro_cfg(tmp_path, name, dataset, *over):
    return compose(
        "reproduce",
        [
            f"experiment={name}",
            "profile=tiny",
            "logger=none",
            f"store={tmp_path / 'runs'}",
            f"out_dir={tmp_path / 'results'}",
            f"datasets=[{dataset}]",
            FAKE_MAP,
            *over,
        ],
    )


def test_every_experiment_has_a_smoke_case():
    assert sorted(SMOKE) == sorted(set(EXPERIMENTS) - {"all"})
    cfg = compose("reproduce", ["experiment=all"])
    assert set(cfg.experiment.experiments) <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_experiment_runs_end_to_end_on_fake_data(tmp_path, name):
    cfg = repro_cfg(tmp_path, name, SMOKE[name], *SMOKE_OVER.get(name, []))
    if name == "deviations":  # the override above shortens the seeds arm, not another; every arm is still planned
        assert cfg.experiment.studies.seeds.arms[0].name == "seeds"
        whole = repro_cfg(tmp_path, name, SMOKE[name], "plan=true")
        planned = {c["label"].split("/", 3)[-1] for c in reproduce(whole)["cells"]}  # dataset/model/method/arm
        arms = {f"{s}.{a.name}" for s, st in whole.experiment.studies.items() for a in st.get("arms") or []}
        assert arms <= planned and not (tmp_path / "runs").exists()  # a plan trains nothing
    out = reproduce(cfg)
    assert out["outputs"] and all(Path(p).exists() and Path(p).stat().st_size > 0 for p in out["outputs"])
    text = {Path(p).suffix: Path(p).read_text() for p in out["outputs"] if Path(p).suffix in (".md", ".txt")}
    assert any("tiny" in t and "NOT the" in t for t in text.values())  # "NOT the paper's protocol / full audit"
    assert any("commit" in t for t in text.values())
    kind = compose("reproduce", [f"experiment={name}"]).experiment.kind
    if kind == "autoattack":  # RobustBench's records: one schema
        records = [json.loads(Path(p).read_text()) for p in out["outputs"] if p.endswith(".json")]
        assert records and all(set(r["eps"]) and r["weights"] and r["attack"]["version"] == "standard" for r in records)
        assert all(set(v) == set(robustbench.PER_EPS) for r in records for v in r["eps"].values())
    if kind == "table":
        csv = pd.read_csv(next(p for p in out["outputs"] if p.endswith(".csv")), comment="#", dtype={"param": str})
        assert (csv.status == "run").all()  # every paper cell of the restricted table was computed
        # the machine that computed the attacks and their time: what recomputing from the zoo costs
        assert re.search(
            r"- attacks computed on: cpu \(.*\) \(\d+ result files, [\d.]+ min of attack time: wall clock", text[".md"]
        )
        assert csv.ours.between(0, 100).all() and (csv.ours.round(2) == csv.ours).all()  # 0.01: one example in 10k
        substitutes = [ln for ln in text[".md"].splitlines() if ln.startswith("- substitute for")]
        if name == "table3":  # the transfer attacks' source is named, trained, with its accuracy
            sub = next((tmp_path / "runs").glob("*-cnn3-ce-*"))
            assert substitutes == [
                f"- substitute for `mnist/lenet5`: `mnist/cnn3/ce` → run `{sub.name}` (clean test "
                f"accuracy {json.loads((sub / 'summary.json').read_text())['test_accuracy']:.2f}%)"
            ]
        else:
            assert substitutes == []


def test_package_copy_of_paper_numbers_equals_shared():
    if not SHARED.exists():
        pytest.skip("shared/paper not beside the checkout")
    assert paper_tables().equals(pd.read_csv(SHARED, dtype={"param": str}))


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table4", "table5"])
def test_table_writer_has_the_papers_rows_columns_and_numbers(table):
    rows = table_rows(table)
    md = to_markdown(combine(rows, {}))
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    assert header == [f"{d}/{m} {meth}" for d, m, meth in dict.fromkeys(zip(rows.dataset, rows.model, rows.method))]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert len(body) == len(dict.fromkeys(zip(rows.attack, rows.param)))
    for r in rows.itertuples():  # each paper number sits in its own cell, marked not run
        i = list(dict.fromkeys(zip(rows.attack, rows.param))).index((r.attack, r.param))
        j = header.index(f"{r.dataset}/{r.model} {r.method}")
        assert body[i][j + 1] == f"not run (paper {r.accuracy:.1f})"
    first = rows.iloc[0]
    half = combine(rows, {(first.dataset, first.method, first.attack, first.param): 50.0})  # one cell run
    assert (
        list(half.status).count("run") == 1 and half.status.iloc[0] == "run" and half.ours.isna().sum() == len(rows) - 1
    )
    filled = to_markdown(combine(rows, {(r.dataset, r.method, r.attack, r.param): 50.0 for r in rows.itertuples()}))
    assert f"**50.0** ({first.accuracy:.1f}, {50.0 - first.accuracy:+.1f})" in filled


@pytest.mark.slow
def test_rerun_trains_and_attacks_nothing_and_rewrites_identical_tables(tmp_path, monkeypatch):
    first = reproduce(repro_cfg(tmp_path, "table1", "mnist"))
    md = Path(next(p for p in first["outputs"] if p.endswith(".md"))).read_text()
    csv = Path(next(p for p in first["outputs"] if p.endswith(".csv"))).read_text()
    monkeypatch.setattr(train_mod, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(ev, "build_attack", lambda *a, **k: pytest.fail("attacked again"))
    reproduce(repro_cfg(tmp_path, "table1", "mnist"))
    table = lambda t: t[t.index("| attack") :]  # noqa: E731 (the provenance header carries the date)
    data = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731
    assert table(Path(next(p for p in first["outputs"] if p.endswith(".md"))).read_text()) == table(md)
    assert data(Path(next(p for p in first["outputs"] if p.endswith(".csv"))).read_text()) == data(csv)


@pytest.mark.slow
def test_plan_lists_cells_and_predicts_time_from_measurements(tmp_path, capsys):
    p = reproduce(repro_cfg(tmp_path, "table1", "mnist", "plan=true"))
    assert [c["label"] for c in p["cells"]] == ["mnist/lenet5/ce", "mnist/lenet5/pclc"]
    assert not any(c["trained"] for c in p["cells"]) and p["unmeasured"]
    reproduce(repro_cfg(tmp_path, "table1", "mnist"))
    p = reproduce(repro_cfg(tmp_path, "table1", "mnist", "plan=true"))
    assert all(c["trained"] and c["evals_missing"] == 0 for c in p["cells"]) and p["predicted_seconds"] == 0
    p = reproduce(repro_cfg(tmp_path, "table1", "mnist", "plan=true", "extra=['seed=1']"))  # new cells, measured costs
    assert not p["unmeasured"] and p["predicted_seconds"] > 0 and p["audits_not_predicted"] == []
    assert "predicted time for the rest" in capsys.readouterr().out
    p = reproduce(repro_cfg(tmp_path, "audit", "mnist", "plan=true"))  # audits: said, not counted as 0
    assert len(p["audits_not_predicted"]) == len(p["cells"]) > 0
    assert "not in that figure: the audit's attacks" in capsys.readouterr().out


@pytest.mark.slow
def test_attack_restriction_runs_only_those_and_marks_the_rest_not_run(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="not in suite 'table1'"):
        reproduce(repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm,spsa]"))
    assert not (tmp_path / "runs").exists()
    out = reproduce(repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]"))
    csv = pd.read_csv(next(p for p in out["outputs"] if p.endswith(".csv")), comment="#", dtype={"param": str})
    attacked = csv[csv.attack != "clean"]
    assert set(attacked[attacked.status == "run"].attack) == {"fgsm"}
    assert (attacked[attacked.attack != "fgsm"].status == "not run").all()
    evals = sorted(p.name.split("-")[1] for p in (tmp_path / "runs").glob("*/eval/*.json"))
    assert set(evals) == {"fgsm"}
    reproduce(repro_cfg(tmp_path, "table1", "mnist"))  # the unrestricted run fills in the rest
    csv = pd.read_csv(next(p for p in out["outputs"] if p.endswith(".csv")), comment="#", dtype={"param": str})
    assert (csv.status == "run").all()


def test_unknown_dataset_restriction_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="no column for datasets"):
        reproduce(repro_cfg(tmp_path, "table4", "mnist"))


@pytest.mark.slow
def test_fan_out_with_submitit_local_then_assemble(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    common = [
        "experiment=table1",
        "profile=tiny",
        "logger=none",
        f"store={tmp_path / 'runs'}",
        f"out_dir={tmp_path / 'results'}",
        "datasets=[mnist]",
        FAKE_MAP,
    ]
    fan = subprocess.run(
        [
            sys.executable,
            "-m",
            "pclc.reproduce",
            "-m",
            *common,
            "stage=cell",
            "cell=0,1",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher.timeout_min=10",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert fan.returncode == 0, fan.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("**/.submitit/**/*_result.pkl"))) >= 2  # ran as submitit jobs
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pclc.reproduce",
            *common,
            "stage=tables",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    md = (tmp_path / "results" / "tiny" / "table1.md").read_text()
    assert "not run" not in md and re.search(r"\*\*\d+\.\d\*\*", md)


@pytest.mark.slow
def test_audit_of_some_methods_says_so_in_its_title(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pclc.reproduce")
    out = reproduce(repro_cfg(tmp_path, "audit", "fmnist", "experiment.methods=[ce,pclc]"))
    cells = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cell ")]
    assert len(cells) == 2 and all(
        c.endswith("not in this ETA: the audit's attacks, run after the cells (cached ones reused)") for c in cells
    )
    md = Path(next(p for p in out["outputs"] if p.endswith(".md"))).read_text()
    assert "methods ce, pclc only (the experiment lists ce, gce, pclc, ce+at, gce+at, pclc+at)" in md.splitlines()[0]
    assert md.count("**Verdict:") == 2
    assert "<details><summary>resolved config</summary>" in md and "- pclc\n" in md  # the reproduce config


@pytest.mark.slow
def test_a_restricted_run_never_drops_numbers_results_holds(tmp_path):
    """A fresh store (a fresh clone) rewriting a committed table with fewer attacks or another dataset keeps
    the committed cells, marked as kept with the old file's provenance."""
    full = reproduce(repro_cfg(tmp_path, "table1", "mnist"))
    csv_path = next(Path(p) for p in full["outputs"] if p.endswith(".csv"))
    before = pd.read_csv(csv_path, comment="#", dtype={"param": str})
    fresh = [f"store={tmp_path / 'fresh-runs'}"]
    reproduce(repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]", *fresh))
    after = pd.read_csv(csv_path, comment="#", dtype={"param": str})
    assert len(after) == len(before) and (after.status != "not run").all()
    kept = after[after.status == "kept"]
    assert set(kept.attack) == {"bim", "pgd", "mim", "cw"}
    assert kept.set_index(["attack", "param"]).ours.equals(
        before[before.attack.isin(kept.attack)].set_index(["attack", "param"]).ours
    )
    md = csv_path.with_suffix(".md").read_text()
    assert "cells kept from the file this command rewrote" in md and "†" in md
    reproduce(repro_cfg(tmp_path, "table1", "kmnist", *fresh))  # another column: mnist's stays
    other = pd.read_csv(csv_path, comment="#", dtype={"param": str})
    assert set(other.dataset) == {"mnist", "kmnist"} and (other[other.dataset == "mnist"].status != "not run").all()


@pytest.mark.slow
def test_tables_put_the_reader_first_and_the_config_last(tmp_path):
    out = reproduce(repro_cfg(tmp_path, "demo", "fmnist"))
    md = Path(next(p for p in out["outputs"] if p.endswith(".md"))).read_text()
    assert md.index("- commit:") < md.index("| attack |") < md.index("<details><summary>resolved config")


@pytest.mark.slow
def test_summary_lists_every_paper_cell_with_its_source(tmp_path):
    from pclc.summary import write

    reproduce(repro_cfg(tmp_path, "table1", "mnist"))
    md, png = write(tmp_path / "results" / "tiny")
    text = md.read_text()
    n = len(paper_tables())
    assert f"of {n} run" in text and "`table1.csv`: commit `" in text and png.stat().st_size > 0
    table1 = paper_tables()[paper_tables().table == "table1"]
    ran = table1[table1.dataset == "mnist"]
    assert f"## table1: {len(ran)} of {len(table1)} cells run" in text and "not run: cifar10/vgg13" in text


@pytest.mark.slow
def test_several_seeds_give_mean_sd_and_interval_per_cell(tmp_path):
    reproduce(repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]"))  # the seed-0 table
    seed0 = (tmp_path / "results" / "tiny" / "table1.csv").read_text()
    out = reproduce(repro_cfg(tmp_path, "table1", "mnist", "seeds=[0,1]", "attacks=[fgsm]"))
    assert (tmp_path / "results" / "tiny" / "table1.csv").read_text() == seed0  # the mean goes beside it
    assert out["cells"] == [
        "mnist/lenet5/ce",
        "mnist/lenet5/ce/s1",
        "mnist/lenet5/pclc",
        "mnist/lenet5/pclc/s1",
    ]
    csv = pd.read_csv(tmp_path / "results" / "tiny" / "seeds" / "table1.csv", comment="#", dtype={"param": str})
    cell = csv[(csv.method == "ce") & (csv.attack == "fgsm") & (csv.param == "0.1")].iloc[0]
    per_seed = [
        json.loads(f.read_text())["adv_accuracy"]
        for f in sorted((tmp_path / "runs").glob("fake-lenet5-ce-s[01]-*/eval/white-fgsm-eps0.1-*.json"))
    ]
    assert len(per_seed) == 2 and cell.n_seeds == 2
    assert cell.ours == pytest.approx(sum(per_seed) / 2, abs=0.01)
    assert cell.sd == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5, abs=0.01)
    assert cell.ci95 == pytest.approx(12.706 * cell.sd / 2**0.5, abs=0.02)  # t(0.975, 1 df)
    assert cell.pi95 == pytest.approx(12.706 * cell.sd * 1.5**0.5, abs=0.02)  # one more seed: sqrt(1 + 1/2)
    assert bool(cell.in_pi95) == (abs(cell["diff"]) <= cell.pi95)
    assert cell.per_seed == ";".join(f"{v:.2f}" for v in per_seed)  # every seed's own number, seed 0 first
    md = (tmp_path / "results" / "tiny" / "seeds" / "table1.md").read_text()
    lo, hi = (
        max(0.0, cell.ours - cell.pi95),
        min(100.0, cell.ours + cell.pi95),
    )  # shown within accuracy's range
    assert f"**{cell.ours:.1f}** ± {cell.sd:.1f} [{lo:.1f}, {hi:.1f}] n=2" in md and "95% prediction interval" in md
    assert "[-" not in md
    table = md[md.index("| attack |") :]
    assert "n<3: no verdict" in table and "✓" not in table and "✗" not in table  # 2 seeds: the interval says nothing
    notes = substitute_notes(repro_cfg(tmp_path, "table3", "mnist", "seeds=[0,1]"))  # one substitute per seed
    assert [n.split(":")[0] for n in notes] == [
        "substitute for `mnist/lenet5`",
        "substitute for `mnist/lenet5/s1`",
    ]
    assert all(n.endswith("(not trained)") for n in notes) and len({n.split("run ")[1] for n in notes}) == 2
    with pytest.raises(ValueError, match="distinct integers"):
        reproduce(repro_cfg(tmp_path, "table1", "mnist", "seeds=[0,0]", "plan=true"))
    with pytest.raises(ValueError, match="apply to tables"):
        reproduce(repro_cfg(tmp_path, "figure2", "mnist", "seeds=[0,1]", "plan=true"))


def _eval_file(store: Path, key: str, name: str, **rec):
    """A result file in a run whose config.yaml names its dataset and model (the results layer reads them)."""
    (store / key / "eval").mkdir(parents=True, exist_ok=True)
    dataset, model, loss, seed = key.split("-")[:4]
    resolved = {"dataset": {"name": dataset}, "model": {"name": model}, "loss": {"name": loss}, "seed": int(seed[1:])}
    (store / key / "config.yaml").write_text(json.dumps({"identity": {}, "resolved": resolved}))
    (store / key / "eval" / f"{name}.json").write_text(json.dumps(rec))


def test_planner_measures_transfer_crafting_apart_from_the_targets_pass(tmp_path):
    from pclc.costs import _attack_seconds, _transfer_seconds
    from pclc.results import read_store

    store, sub = tmp_path / "runs", "mnist-cnn3-ce-s0-bbbb"
    for target, secs in (("mnist-lenet5-ce-s0-aaaa", 100.0), ("mnist-lenet5-pclc-s0-cccc", 1.0)):
        _eval_file(
            store,
            target,
            "transfer-pgd-eps0.1-x",
            attack="pgd",
            source="transfer",
            substitute=sub,
            eps=0.1,
            n=10,
            seconds=secs,
        )  # the first target crafted; the second read the cache
    _eval_file(
        store,
        "mnist-lenet5-ce-s1-dddd",
        "transfer-pgd-eps0.1-x",
        attack="pgd",
        source="transfer",
        substitute="mnist-cnn3-ce-s1-eeee",
        eps=0.1,
        n=10,
        seconds=120.0,
    )  # a substitute with one target
    _eval_file(
        store,
        "mnist-lenet5-ce-s0-aaaa",
        "white-pgd-eps0.1-x",
        attack="pgd",
        source="white",
        eps=0.1,
        n=10,
        seconds=5.0,
    )
    results = read_store(store, checked=False)  # fabricated files: no weights or records to check
    assert _transfer_seconds(results, "mnist", "cnn3") == {"pgd": pytest.approx(((9.9 + 12) / 2, 0.1))}
    assert _transfer_seconds(results, "mnist", "resnet56") == {}
    assert _attack_seconds(results, "mnist", "lenet5") == {
        "pgd": {None: 0.5}
    }  # white-box only: transfer files are not PGD's cost


def test_planner_prices_an_arms_step_count_not_the_configs_measured_default(tmp_path):
    """The deviations study's ``steps1000`` arm runs the ``pgd`` config at nb_iter 1000: priced at PGD-40's
    measured time (3 s) it took 59-81 s. The measured cost counts per pass, the same steps first."""
    from pclc.costs import CostModel
    from pclc.experiment import entries

    store = tmp_path / "runs"
    for i, (steps, secs) in enumerate(((40, 5.0), (100, 20.0))):
        _eval_file(
            store,
            f"mnist-lenet5-ce-s{i}-aaaa",
            f"white-pgd-eps0.1-{steps}",
            attack="pgd",
            kind="pgd",
            source="white",
            eps=0.1,
            n=10,
            seconds=secs,
            params={"eps_iter": 0.01, "nb_iter": steps, "rand_init": True},
        )
    ec = compose("evaluate", ["dataset=mnist", "model=lenet5", "eval.subset=10"])
    (base,) = [e for e in entries(ec) if e.config == "pgd" and e.eps == 0.1 and e.source == "white"]
    cost = CostModel(store, None)
    for steps, want in ((40, 5.0), (100, 20.0), (1000, 200.0), (20, 2.5)):
        entry = dataclasses.replace(base, params={**base.params, "nb_iter": steps})
        assert cost.attack(ec, "lenet5", entry) == pytest.approx(want)  # 1000 and 20: scaled from the nearest


def test_planner_prices_autoattack_from_the_same_training_first(tmp_path):
    """AutoAttack attacks what its first attacks leave robust: 0.27 s per image on a PGD-AT LeNet-5 here, 0.01-0.06
    on the audit's models; priced at the model's median the planner said 4.7 min for a cell that took 10."""
    from pclc.costs import CostModel
    from pclc.experiment import entries

    store = tmp_path / "runs"
    for key, secs, adv in (("fmnist-lenet5-ce-s0-aaaa", 10.0, None), ("fmnist-lenet5-ce-s1-bbbb", 270.0, "pgd")):
        _eval_file(store, key, "white-aa-eps0.1-x", attack="autoattack_ref", kind="autoattack-ref", source="white",
                   eps=0.1, n=1000, seconds=secs, params={"version": "standard"})  # fmt: skip
        if adv:  # an adversarially trained run: its config names the trainer's attack
            cfg = json.loads((store / key / "config.yaml").read_text())
            cfg["resolved"]["trainer"] = {"adversarial": {"attack": adv}}
            (store / key / "config.yaml").write_text(json.dumps(cfg))
    ec = compose("evaluate", ["dataset=fmnist", "model=lenet5", "attack/suite=autoattack", "eval.subset=1000"])
    (entry,) = [e for e in entries(ec) if e.eps == 0.1]
    cost = CostModel(store, None)
    pgdat = compose("evaluate", ["dataset=fmnist", "model=lenet5", "attack/suite=autoattack", "eval.subset=1000",
                                 "trainer=pgd_at"])  # fmt: skip
    assert cost.attack(pgdat, "lenet5", entry) == pytest.approx(270.0)  # the same training's measurement
    pclc_pgdat = compose("evaluate", ["dataset=fmnist", "model=lenet5", "attack/suite=autoattack",
                                      "eval.subset=1000", "trainer=pgd_at", "loss=pclc"])  # fmt: skip
    assert cost.attack(pclc_pgdat, "lenet5", entry) == pytest.approx(270.0)  # the same adversarial training's
    assert cost.attack(ec, "lenet5", entry) == pytest.approx(10.0)
    trades = compose("evaluate", ["dataset=fmnist", "model=lenet5", "attack/suite=autoattack", "eval.subset=1000",
                                  "trainer=trades"])  # fmt: skip
    assert cost.attack(trades, "lenet5", entry) == pytest.approx(140.0)  # none of its own: the model's median


@pytest.mark.slow
def test_plan_counts_transfer_crafting_once_per_substitute(tmp_path):
    from pclc.costs import CostModel, _transfer_seconds
    from pclc.plan import plan_items

    reproduce(repro_cfg(tmp_path, "table3", "mnist", "attacks=[pgd]"))
    store = tmp_path / "runs"
    cost = CostModel(store, None)
    rows, work = plan_items(repro_cfg(tmp_path, "table3", "mnist", "attacks=[pgd]", "seeds=[1]"), cost)
    craft = {k: v for k, v in work.items() if k[0] == "craft"}
    transfer = {k: v for k, v in work.items() if k[0] == "eval" and k[2].startswith("transfer-")}
    n_eps = len({k[2] for k in transfer})
    assert len(craft) == n_eps and len(transfer) == 2 * n_eps  # one crafting per entry, two targets read it
    assert {k[1] for k in craft} == {next(r["key"] for r in rows if "substitute" in r["label"])}
    ((crafting, target),) = _transfer_seconds(cost.results, "mnist", "cnn3").values()  # measured on seed 0's files
    n = json.loads(next(store.glob("*-lenet5-ce-*/eval/transfer-*.json")).read_text())["n"]
    assert all(v == pytest.approx(crafting * n) for v in craft.values()) and crafting > 0
    assert all(v == pytest.approx(target * n) for v in transfer.values())
    # the same seed again, one target's results deleted: its crafting is cached in the substitute, not redone
    for f in store.glob("*-lenet5-pclc-*/eval/transfer-*.json"):
        f.unlink()
    _, work = plan_items(repro_cfg(tmp_path, "table3", "mnist", "attacks=[pgd]"), CostModel(store, None))
    assert {k[0] for k in work} == {"craft", "eval"} and all(v == 0 for k, v in work.items() if k[0] == "craft")
    assert len([k for k in work if k[0] == "eval"]) == n_eps


@pytest.mark.slow
def test_plan_counts_a_shared_warm_up_once_and_costs_epochs_at_their_batch_size(tmp_path):
    from pclc.costs import CostModel
    from pclc.plan import plan_items

    reproduce(repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]"))  # measured epochs at the tiny batch size
    rows, work = plan_items(
        repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]", "seeds=[1]"),
        CostModel(tmp_path / "runs", None),
    )
    train = {k[1]: v for k, v in work.items() if k[0] == "train"}
    ce, pclc = (next(r["key"] for r in rows if r["label"] == f"mnist/lenet5/{m}/s1") for m in ("ce", "pclc"))
    assert train[ce] > 0 and train[pclc] == pytest.approx(train[ce] / 2)  # PC+LC's phase 1 is CE's, planned once
    _, work = plan_items(
        repro_cfg(tmp_path, "table1", "mnist", "attacks=[fgsm]", "seeds=[1]", "extra=['trainer.batch_size=7']"),
        CostModel(tmp_path / "runs", None),
    )
    assert all(v is None for k, v in work.items() if k[0] == "train")  # no epoch measured at batch 7, no bench


def test_autoattack_covers_every_model_of_the_result_set_with_the_deviations_recipes():
    """Issue 30: Table 1 and 5 methods at the tables' seeds, and GCE's recipe as the deviations study trains it
    (its overrides and seeds read from there, so both name the same runs)."""
    from pclc.experiment import experiment_cells

    cfg = compose("reproduce", ["experiment=autoattack", "logger=none", "datasets=[fmnist]"])
    cells = experiment_cells(cfg)
    plain = {(c.method, c.seed) for c in cells if not c.arm}
    assert plain == {(m, s) for m in ("ce", "gce", "pclc") for s in range(5)} | {
        (m, 0) for m in ("ce+at", "gce+at", "pclc+at")
    }
    dev = compose("reproduce", ["experiment=deviations", "logger=none"])
    recipe = next(a for a in dev.experiment.studies.ce_baseline.arms if a.name == "gce_recipe")
    arm = [c for c in cells if c.arm == "ce_baseline.gce_recipe"]
    assert {(c.method, c.seed) for c in arm} == {(m, s) for m in ("ce", "pclc") for s in recipe.seeds}
    assert all(c.train_extra == tuple(recipe.train) for c in arm)


@pytest.mark.slow
def test_autoattack_puts_the_papers_attacks_on_the_same_weights_beside_it(tmp_path):
    """AutoAttack on a subset, the paper's white-box attacks beside it as Table 1 computes them (its test set):
    what Table 1 has is reused, the rest evaluated. The report once looked for the PGD on AutoAttack's subset and
    found none."""
    reproduce(repro_cfg(tmp_path, "table1", "fmnist", "attacks=[pgd]"))
    table = pd.read_csv(tmp_path / "results" / "tiny" / "table1.csv", comment="#", dtype={"param": str})
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "runs").glob("*-ce-*/eval/white-pgd-*.json")}
    reproduce(repro_cfg(tmp_path, "autoattack", "fmnist", *SMOKE_OVER["autoattack"][:2], "experiment.arms=[]",
                        "experiment.methods=[ce]", "experiment.subset=10"))  # fmt: skip
    aa = pd.read_csv(tmp_path / "results" / "tiny" / "autoattack.csv", comment="#")
    pgd = table[(table.attack == "pgd") & (table.method == "ce")]
    pgd = pgd.set_index(pgd.param.astype(float)).ours
    assert len(aa) == 3 and (aa.n == 10).all() and (aa.here_n == 20).all()
    assert aa.set_index("eps").pgd_here.to_dict() == pgd.to_dict()
    assert {f: f.stat().st_mtime_ns for f in files} == files  # Table 1's PGD reused, not recomputed
    here = aa[["fgsm_here", "bim_here", "pgd_here", "mim_here"]]
    assert here.notna().all().all() and (aa.strongest_here == here.min(axis=1)).all()
    assert aa.set_index("eps").pgd_paper.to_dict() == {0.1: 0.0, 0.2: 0.0, 0.3: 0.0}  # Table 1's CE row
    assert (aa.seconds > 0).all() and aa.device.str.startswith("cpu").all()
    assert (tmp_path / "results" / "tiny" / "figures" / "autoattack_eps.png").stat().st_size > 0
    # each model judged by the audit's rules with AutoAttack as the worst case (issues 30, 31)
    from pclc.autoattack_report import verdicts

    cfg = repro_cfg(tmp_path, "autoattack", "fmnist", "experiment.arms=[]")
    md = (tmp_path / "results" / "tiny" / "autoattack.md").read_text()
    assert aa.verdict.notna().all() and "## Verdicts" in md
    assert f"AutoAttack's own time: {aa.seconds.sum() / 60:.1f} min over 3 (model, eps) evaluations, measured" in md
    assert "| pclc | ce | 0.1 | — | — | — | — | not judged: 0 paired seeds |" in md  # the declared pairs (pclc.paired)
    level = aa.assign(autoattack=40.0, pgd_here=41.0)  # the paper's PGD is as strong as AutoAttack
    assert verdicts(cfg, level).verdict.tolist() == ["robustness confirmed"]
    assert verdicts(cfg, level.assign(autoattack=0.5, pgd_here=0.5)).verdict.tolist() == ["no robustness"]
    over = verdicts(cfg, level.assign(autoattack=0.0)).iloc[0]  # the paper's PGD 41 points above the worst case
    assert over.verdict in ("robustness reduced", "artefact of gradient masking") and "drop 41.0 points" in over.reason
    assert verdicts(cfg, level.assign(pgd_here=None)).verdict.str.startswith("not judged").all()
    # which of AutoAttack's attacks broke what: recorded, shown, and judged (Square alone breaking 30%: masking)
    assert aa.square_only.notna().all() and "| AutoAttack | only Square |" in md
    masked = verdicts(cfg, level.assign(square_only=30.0)).iloc[0]
    assert "sanity flag white_box_beats_black_box is False" in masked.reason
    assert "white_box_beats_black_box" not in verdicts(cfg, level.assign(square_only=0.0)).iloc[0].reason


@pytest.mark.slow
def test_reproduce_announces_every_cell_with_its_prediction_and_eta(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pclc.reproduce"):
        reproduce(repro_cfg(tmp_path, "table1", "mnist"))  # nothing measured yet: unknown
    cells = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cell ")]
    assert [c.split(":")[0] for c in cells] == ["cell 1/2 mnist/lenet5/ce", "cell 2/2 mnist/lenet5/pclc"]
    assert "unknown" in cells[0]  # nothing measured yet; after the first cell the rest is planned again
    assert "predicted " in cells[1] and "ETA for the rest" in cells[1], cells
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pclc.reproduce"):  # new seeds: predicted from the store's costs
        reproduce(repro_cfg(tmp_path, "table1", "mnist", "seeds=[1]"))
    cells = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cell ")]
    assert len(cells) == 2 and all("predicted " in c and "ETA for the rest" in c for c in cells), cells
    assert "this machine's pace so far" in cells[1]


@pytest.mark.slow
def test_demo_prints_the_table_the_protocol_line_and_the_files_only(tmp_path, capsys):
    out = reproduce(repro_cfg(tmp_path, "demo", "fmnist"))  # demo.yaml sets show=true
    lines = capsys.readouterr().out.strip().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0].startswith("| attack") and len(table) == len(lines) - 2  # the table, then two lines
    assert lines[-2].startswith("profile tiny, NOT the paper's protocol: ")
    assert "trainer.epochs_per_phase 1 (paper: " in lines[-2] and "eval.subset 20 (paper: off)" in lines[-2]
    assert "eval.param_overrides.pgd.nb_iter 2 (paper: off)" in lines[-2] and "cw" not in lines[-2]  # its attacks
    assert "Expect PC+LC tens of points from the paper" in lines[-2]
    assert lines[-1] == "files: " + ", ".join(out["outputs"])


def test_planner_prices_autoattack_at_the_audits_measured_time_not_its_worst_case(tmp_path):
    """Reference AutoAttack attacks only what each attack before it left robust: its measured cost on LeNet-5 was
    0.01-0.06 s per image where the worst case (every image surviving every attack) priced it at ~0.4 s. The
    audit's measurements count, from the store and from the zoo's records (a fresh clone's store is empty)."""
    import gzip

    from pclc.costs import CostModel, _audit_records, _audit_seconds
    from pclc.experiment import entries

    store, zoo_dir, empty = tmp_path / "runs", tmp_path / "zoo", tmp_path / "empty"

    def rec(secs, version="standard", n=10000):
        return json.dumps({"attack": "autoattack", "params": {"version": version}, "n": n, "seconds": secs})

    ce = store / "fmnist-lenet5-ce-s0-aaaa"
    (ce / "audit").mkdir(parents=True)
    (ce / "config.yaml").write_text("{}")  # a run of the store
    (ce / "audit" / "autoattack-eps0.1-x.json").write_text(rec(100.0))
    (ce / "audit" / "autoattack-eps0.2-y.json").write_text(rec(1000.0, "custom", 10))  # smoke budgets: not counted
    (ce / "audit" / "autoattack-eps0.3-z.json").write_text("{not json")
    gce = zoo_dir / "fmnist-lenet5-gce-s0-bbbb" / "records" / "audit"
    gce.mkdir(parents=True)
    (gce / "autoattack-eps0.1-x.json.gz").write_bytes(gzip.compress(rec(600.0).encode()))
    records = _audit_records(store, zoo_dir)
    assert len(records) == 3
    assert _audit_seconds(records, "fmnist", "lenet5") == {"autoattack_ref": {None: pytest.approx(0.035)}}
    assert _audit_seconds(records, "mnist", "lenet5") == {
        "autoattack_ref": {None: pytest.approx(0.035)}
    }  # else any dataset
    assert _audit_seconds(records, "fmnist", "vgg13") == {}

    ec = compose("evaluate", ["dataset=fmnist", "model=lenet5", "attack/suite=autoattack", "eval.subset=1000"])
    (entry,) = [e for e in entries(ec) if e.eps == 0.1]
    bench = json.loads((CONFIG_DIR.parent / "results" / "bench-cpu.json").read_text())
    worst = CostModel(empty, bench, empty).attack(ec, "lenet5", entry)
    assert CostModel(store, bench, zoo_dir).attack(ec, "lenet5", entry) == pytest.approx(35.0)
    assert CostModel(store, bench, empty).attack(ec, "lenet5", entry) == pytest.approx(10.0)  # the store's alone
    assert worst > 5 * 35.0  # what the planner said before
