"""Fast paths are correct on CPU: channels_last/compile keep results; bf16 attacks agree with fp32; bench runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pclc.attacks import attack_config, build_attack
from pclc.config import compose, group_config
from pclc.data import load_splits
from pclc.metrics import with_precision
from pclc.store import RunDir, load_run
from pclc.train import train

pytestmark = pytest.mark.slow  # benchmarks at a tiny size

ROOT = Path(__file__).resolve().parents[1]
BASE = ["dataset=fake", "model=lenet5", "loss=ce", "logger=none", "trainer.epochs_per_phase=2"]


@pytest.mark.parametrize(
    "accel", [["accel.channels_last=true"], ["accel.compile=aot_eager"]], ids=["channels_last", "compile"]
)
def test_same_seed_same_accuracy_with_fast_paths(tmp_path, accel):
    plain = train(compose("train", [*BASE, f"store={tmp_path / 'a'}"]))
    fast = train(compose("train", [*BASE, f"store={tmp_path / 'b'}", *accel]))
    # compile is speed only; channels_last sums in another order, so it is part of the run's key (issue 33)
    assert (fast["key"] == plain["key"]) == ("compile" in accel[0])
    assert abs(fast["test_accuracy"] - plain["test_accuracy"]) <= 2.0
    assert fast["accel"]["channels_last"] == ("channels_last" in accel[0]) and fast["accel"]["compiled"] == (
        "compile" in accel[0]
    )


def test_bf16_attacks_stay_within_one_point_of_fp32(tmp_path):
    s = train(compose("train", [*BASE, f"store={tmp_path}", "dataset.n_test=400"]))
    cfg, model = load_run(RunDir(tmp_path, s["key"]), torch.device("cpu"))
    _, test = load_splits(cfg.dataset)
    x, y = test.x.float() / 255, test.y
    params = {"nb_iter": 10, "eps_iter": 0.01}
    acc = {}
    for prec in ("fp32", "bf16"):
        m = with_precision(model, prec)
        adv = build_attack(attack_config("bim", **params))(m, x, y, 0.05, 0)
        with torch.no_grad():
            acc[prec] = 100.0 * float((model(adv).argmax(1) == y).float().mean())
    assert abs(acc["bf16"] - acc["fp32"]) <= 1.0, acc
    with pytest.raises(ValueError, match="precision"):
        with_precision(model, "fp8")


def test_bench_runs_end_to_end_in_tiny_mode(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--tiny",
            "--models",
            "fmnist:lenet5",
            "--root",
            str(tmp_path / "no-data"),
            "--out",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    m = res["models"][0]
    assert m["model"] == "lenet5" and m["forward_flops_per_image"] > 4e5  # LeNet-5: ~0.4 MMAC = ~0.8 MFLOP
    for k in (
        "epoch_ours_s",
        "epoch_reference_s",
        "pgd40_ours_s",
        "pgd40_reference_s",
        "step_ce_s",
        "step_pclc_s",
    ):
        assert m[k] > 0
    assert res["peak_tflops"] > 0 and "PC+LC / CE" in (tmp_path / "bench.md").read_text()


def test_attack_batch_bench_writes_every_row(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_attack_batch.py"),
            "--tiny",
            "--out",
            str(tmp_path / "ab"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ab.json").read_text())
    assert [(row["attack"], row["batch"]) for row in res["rows"]] == [
        ("spsa", 2),
        ("spsa", 8),
        ("pgd", 2),
        ("pgd", 8),
    ]
    assert all(row["seconds_per_example"] > 0 for row in res["rows"]) and res["budgets"]["spsa"]["nb_iter"] == 10
    assert (tmp_path / "ab.md").read_text().count("| spsa |") == 2


BENCH = {
    "models": [
        {
            "dataset": "fmnist",
            "model": "lenet5",
            "train_images": 60000,
            "epoch_ours_s": 3.0,
            "pgd40_ours_s": 50.0,
            "forward_flops_per_image": 833040.0,
        }
    ]
}


def test_cost_model_scales_the_benchmark_by_size_steps_flops_and_adversarial_training():
    from pclc import costs

    ds = compose("train", ["dataset=fmnist"]).dataset
    paper = compose("train", ["dataset=fmnist", "trainer=paper"]).trainer
    assert costs.model_flops("lenet5", 10, 1, 28) == 833040.0  # the FLOPs the benchmark measured
    assert costs.epoch_seconds(BENCH, ds, "lenet5", paper) == pytest.approx(3.0)
    half = compose("train", ["dataset=fmnist", "dataset.subset.train=30000"]).dataset
    assert costs.epoch_seconds(BENCH, half, "lenet5", paper) == pytest.approx(1.5)
    fgsm_at = compose("train", ["dataset=fmnist", "trainer=adv_fgsm"]).trainer
    # an attack step costs what the benchmark measured against a training step, per example: here (50 s for 40
    # steps on 10,000 images) / (3 s for one step on 60,000) = 2.5 training steps, not the 2/3 that FLOPs say
    step = (50.0 / (40 * 10000)) / (3.0 / 60000)
    assert costs.epoch_seconds(BENCH, ds, "lenet5", fgsm_at) == pytest.approx(3.0 * (1 + 0.5 * step))
    pgd_at = compose("train", ["dataset=fmnist", "trainer=pgd_at"]).trainer
    assert costs.epoch_seconds(BENCH, ds, "lenet5", pgd_at) == pytest.approx(3.0 * (1 + 10 * step))
    ratio = costs.model_flops("cnn3", 10, 1, 28) / 833040.0  # an unbenchmarked model: the one row's seconds per FLOP
    assert ratio > 5 and costs.epoch_seconds(BENCH, ds, "cnn3", paper) == pytest.approx(3.0 * ratio)
    pgd = group_config("attack", "pgd")
    assert costs.attack_seconds_per_example(BENCH, ds, "lenet5", pgd) * 10000 == pytest.approx(50.0)
    assert build_attack(group_config("attack", "cw")).passes == 900  # the registry's cost: C&W 100 x 9 searches
    assert build_attack(group_config("attack", "fgsm")).passes == 1
    assert build_attack(group_config("attack", "spsa")).passes == 10 * 128


def test_an_unbenchmarked_model_takes_the_rate_of_the_benchmarked_model_nearest_in_size():
    """A CPU's seconds per FLOP depend on the network's size (LeNet-5 runs far below the peak, large networks near
    it): cnn3, 17x LeNet-5's FLOPs, takes the rate of a benchmarked model nearer its size, not LeNet-5's (the old
    rule, same channel count, predicted Table 3's transfer attacks several times too slow); its own row wins."""
    from pclc import costs

    ds = compose("train", ["dataset=fmnist"]).dataset
    pgd = group_config("attack", "pgd")
    cnn3 = costs.model_flops("cnn3", 10, 1, 28)
    big = {"dataset": "cifar10", "model": "resnet56", "train_images": 50000, "epoch_ours_s": 20.0}
    big |= {"pgd40_ours_s": 400.0, "forward_flops_per_image": 1.0e8}  # 8x fewer seconds per FLOP than BENCH's
    two = {"models": [*BENCH["models"], big]}
    per_flop = 400.0 / (40 * 2 * 1.0e8 * 10000)
    assert costs.attack_seconds_per_example(two, ds, "cnn3", pgd) == pytest.approx(per_flop * 2 * cnn3 * 40)
    assert costs.attack_seconds_per_example(two, ds, "lenet5", pgd) * 10000 == pytest.approx(50.0)  # its own row
    own = {**big, "dataset": "fmnist", "model": "cnn3", "pgd40_ours_s": 90.0, "forward_flops_per_image": cnn3}
    three = {"models": [*two["models"], own]}
    assert costs.attack_seconds_per_example(three, ds, "cnn3", pgd) * 10000 == pytest.approx(90.0)


def test_planner_predicts_unmeasured_work_from_the_benchmark(tmp_path, capsys):
    from pclc.reproduce import reproduce

    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    over = [
        "experiment=table3",
        "datasets=[fmnist]",
        "plan=true",
        "logger=none",
        f"store={tmp_path / 'runs'}",
    ]
    blind = reproduce(compose("reproduce", [*over, f"bench={tmp_path / 'none.json'}"]))
    assert blind["predicted_seconds"] == 0 and blind["unmeasured"]
    p = reproduce(compose("reproduce", [*over, f"bench={tmp_path / 'bench.json'}"]))
    assert not p["unmeasured"] and p["sources"] == ["bench"]
    sub = next(r for r in p["cells"] if "substitute" in r["label"])  # table3's black-box substitute is planned
    assert sub["label"] == "fmnist/cnn3/ce (substitute)" and sub["predicted_seconds"] > 100 * 3.0
    lenet = 2 * 100 * 3.0  # CE and PC+LC: 100 epochs each at the benchmark's 3 s (PC+LC's warm-up is CE's)
    assert p["predicted_seconds"] > lenet + sub["predicted_seconds"]
    assert "from " + str(tmp_path / "bench.json") in capsys.readouterr().out


def test_a_plan_is_written_with_the_benchmarks_device_and_provenance(tmp_path):
    """plan_out: a GPU's bench read on any host predicts that GPU's time, in a file that says whose time it is."""
    from pclc.reproduce import reproduce

    gpu = {**BENCH, "device": {"name": "NVIDIA H200", "commit": "abc123", "date": "2026-12-04", "torch": "2.11.0"}}
    (tmp_path / "bench.json").write_text(json.dumps(gpu))
    out = tmp_path / "plan" / "table1.md"
    over = ["experiment=table1", "datasets=[fmnist]", "plan=true", "logger=none", f"store={tmp_path / 'runs'}"]
    p = reproduce(compose("reproduce", [*over, f"bench={tmp_path / 'bench.json'}", f"plan_out={out}"]))
    text = out.read_text()
    minutes = f"{p['predicted_seconds'] / 60:.1f} min"
    assert f"**Predicted time for the rest: {minutes}" in text and "on NVIDIA H200**" in text
    assert "measured on NVIDIA H200 (commit `abc123`" in text and "- commit: " in text and "- machine: " in text
    assert text.count("| table1 |") == 2 and "resolved config" in text
    assert "is not this one" not in text  # a GPU's bench read on a CPU host: that GPU's time, no CPU warning
    reproduce(compose("reproduce", [*over, f"bench={tmp_path / 'none.json'}"]))  # no plan_out: nothing written
    assert sorted(x.name for x in out.parent.iterdir()) == ["table1.md"]


def test_a_plan_scaled_from_another_cpus_bench_says_so(tmp_path, capsys):
    """The committed bench names only "cpu (x86_64, 2 threads)": a plan scaled from it on an AMD or Intel host
    carries that CPU's speed, and the plan (stdout and file) says so; a bench from this very CPU gets no line."""
    from pclc.plan_file import other_cpu_note
    from pclc.reproduce import reproduce
    from pclc.store import device_name

    here = device_name(torch.device("cpu"))
    assert other_cpu_note({"device": {"name": here}}, here) is None
    assert other_cpu_note({"device": {"name": "NVIDIA H200"}}, here) is None
    assert other_cpu_note(None, here) is None
    old = {**BENCH, "device": {"name": "cpu (x86_64, 2 threads)", "commit": "abc123", "date": "2026-11-24"}}
    (tmp_path / "bench.json").write_text(json.dumps(old))
    out = tmp_path / "plan.md"
    over = ["experiment=table1", "datasets=[fmnist]", "plan=true", "logger=none", "device=cpu"]
    reproduce(
        compose(
            "reproduce", [*over, f"store={tmp_path / 'runs'}", f"bench={tmp_path / 'bench.json'}", f"plan_out={out}"]
        )
    )
    line = f"the benchmark's CPU (cpu (x86_64, 2 threads)) is not this one ({here})"
    assert line in capsys.readouterr().out and line in out.read_text()


def test_launcher_timeout_is_the_planners_slowest_cell_with_margin(tmp_path, capsys):
    from pclc.reproduce import reproduce

    (tmp_path / "bench.json").write_text(json.dumps(BENCH))
    over = [
        "experiment=table1",
        "datasets=[fmnist]",
        "logger=none",
        f"store={tmp_path / 'runs'}",
        f"bench={tmp_path / 'bench.json'}",
    ]
    slowest = max(r["predicted_seconds"] for r in reproduce(compose("reproduce", [*over, "plan=true"]))["cells"])
    assert slowest > 100 * 3.0  # a cell trains 100 epochs at the benchmark's 3 s, then attacks
    capsys.readouterr()
    got = reproduce(compose("reproduce", [*over, "stage=timeout"]))["timeout_min"]
    assert got == math.ceil(1.5 * slowest / 60) and capsys.readouterr().out.strip().splitlines()[-1] == str(got)
    blind = reproduce(compose("reproduce", [*over[:-1], f"bench={tmp_path / 'none.json'}", "stage=timeout"]))
    assert blind["timeout_min"] is None  # unpredicted: the launcher keeps its configured limit


def test_column_bench_times_both_backends_and_finds_them_identical(tmp_path):
    from pclc.reproduce import reproduce

    fake = (
        "dataset_map={mnist: fake, kmnist: fake, fmnist: fake, cifar10: fake_colour, svhn: fake_colour, "
        "cifar100: fake_large, tinyimagenet: fake_large}"
    )
    over = ["profile=tiny", fake, "attacks=[fgsm,pgd]"]
    store, out = tmp_path / "runs", tmp_path / "results"
    args = [
        sys.executable,
        str(ROOT / "scripts" / "bench_column.py"),
        "--store",
        str(store),
        "--n",
        "64",
        "--out",
        str(out),
        "--extra",
        *over,
    ]
    early = subprocess.run(args, capture_output=True, text=True)
    assert early.returncode != 0 and "not trained" in early.stderr  # refused before any work
    reproduce(
        compose(
            "reproduce",
            [
                "experiment=table1",
                "datasets=[fmnist]",
                "logger=none",
                f"store={store}",
                f"out_dir={out}",
                *over,
            ],
        )
    )
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "bench-column-cpu.json").read_text())
    cells = {(row["model"], row["attack"], row["eps"]) for row in res["rows"]}
    assert len(cells) == 2 * 2 * 3  # CE and PC+LC x FGSM, PGD x three eps
    assert res["all_same"] and all(row["advertorch_s"] > 0 and row["pclc_s"] > 0 for row in res["rows"])
    col = res["column"]
    assert col["pclc_s"] == pytest.approx(col["training_s"] + sum(row["pclc_s"] for row in res["rows"]), abs=0.5)
    assert "Identical adversarial predictions in every cell: yes" in (out / "bench-column-cpu.md").read_text()
