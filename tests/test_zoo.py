"""The model zoo: export, hash-checked loading (files and file:// URLs), the store filled from it (FROM=zoo),
and every committed zoo model's clean accuracy on real Fashion-MNIST."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from pclc import zoo
from pclc.config import compose
from pclc.data import eval_tensors
from pclc.metrics import percent, predict
from pclc.reproduce import reproduce
from pclc.store import RunDir, load_run, machine, machine_line, weights_digest

FAKE = "dataset_map={fmnist: fake}"
COMMITTED = Path(__file__).resolve().parents[1] / "results" / "zoo"


def _cfg(tmp_path, *over, store="runs", out="results"):
    return compose(
        "reproduce",
        [
            "experiment=table3",
            "profile=tiny",
            "logger=none",
            f"store={tmp_path / store}",
            f"out_dir={tmp_path / out}",
            "datasets=[fmnist]",
            FAKE,
            f"zoo_dir={tmp_path / 'zoo'}",
            *over,
        ],
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Table 3 (CE, PC+LC, the substitute) trained on tiny fake data and exported to a zoo."""
    tmp = tmp_path_factory.mktemp("zoo")
    os.environ["WANDB_MODE"] = "disabled"
    # device=cpu: the zoo holds CPU fp32 runs, as results/zoo does (on a GPU, device=auto would train bf16 runs,
    # another key, which FROM=zoo finds only with accel.bf16=true accel.channels_last=true)
    reproduce(_cfg(tmp, "attacks=[pgd]", "device=cpu"))
    out = reproduce(_cfg(tmp, "stage=export", "device=cpu"))
    return tmp, out


@pytest.mark.slow
def test_export_writes_safetensors_and_a_manifest_entry_per_run(exported):
    tmp, out = exported
    models = zoo.read_manifest(tmp / "zoo")
    assert (
        sorted(out["exported"])
        == sorted(e["name"] for e in models)
        == ["fake-cnn3-ce-s0", "fake-lenet5-ce-s0", "fake-lenet5-pclc-s0"]
    )
    for e in models:
        run = RunDir(tmp / "runs", e["key"])
        summary = json.loads(run.summary.read_text())
        assert e["weights"] == summary["weights"] and e["clean_accuracy"] == summary["test_accuracy"]
        assert e["sha256"] == zoo.sha256_of(tmp / "zoo" / e["file"]) and e["file"].endswith(".safetensors")
        assert e["trained_on"]["cpu_model"] and e["trained_on"]["cpu_capability"] and e["trained_on"]["threads"]
    sub = next(e for e in models if e["model"] == "cnn3")
    assert sub["role"].startswith("black-box substitute") and sub["method"] == "ce"
    # exporting again changes nothing
    before = (tmp / "zoo" / "manifest.json").read_text()
    reproduce(_cfg(tmp, "stage=export"))
    assert (tmp / "zoo" / "manifest.json").read_text() == before


def test_load_returns_the_runs_model_in_eval_mode(exported):
    tmp, _ = exported
    e = next(e for e in zoo.read_manifest(tmp / "zoo") if e["name"] == "fake-lenet5-pclc-s0")
    cfg, model = zoo.load("fake-lenet5-pclc-s0", zoo=tmp / "zoo")
    _, ref = load_run(RunDir(tmp / "runs", e["key"]), torch.device("cpu"))
    assert not model.training and weights_digest(model.state_dict()) == e["weights"]
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), ref(x))
    assert zoo.load(e["key"], zoo=tmp / "zoo")[0].loss.name == "pclc"  # by run key too


def _copy_zoo(tmp, dest):
    shutil.copytree(tmp / "zoo", dest)
    return dest


def test_a_tampered_weight_file_is_refused_in_one_line(exported, tmp_path):
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    e = zoo.find("fake-lenet5-ce-s0", z)
    data = bytearray((z / e["file"]).read_bytes())
    data[-3] ^= 0xFF  # one weight's bits
    (z / e["file"]).write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="sha256 .* differs from the manifest") as info:
        zoo.load("fake-lenet5-ce-s0", zoo=z)
    assert "\n" not in str(info.value)


def test_a_missing_file_and_an_unknown_name_are_named(exported, tmp_path):
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    e = zoo.find("fake-lenet5-ce-s0", z)
    (z / e["file"]).unlink()
    with pytest.raises(zoo.ZooError, match="model.safetensors is missing"):
        zoo.load("fake-lenet5-ce-s0", zoo=z)
    with pytest.raises(zoo.ZooError, match="no model 'nope'; it has fake-cnn3-ce-s0"):
        zoo.load("nope", zoo=z)


def _as_url_entry(z: Path, name: str, sha256: str | None = None) -> Path:
    """Move an entry's weights out of the zoo and list them by a file:// URL (as a model too large for git)."""
    manifest = json.loads((z / "manifest.json").read_text())
    e = next(e for e in manifest["models"] if e["name"] == name)
    far = z.parent / "elsewhere" / "weights.safetensors"
    far.parent.mkdir()
    shutil.move(z / e["file"], far)
    e["url"] = far.as_uri()
    e["sha256"] = sha256 or e["sha256"]
    (z / "manifest.json").write_text(json.dumps(manifest))
    return far


def test_a_url_entry_is_fetched_hash_checked_into_the_store(exported, tmp_path):
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    _as_url_entry(z, "fake-lenet5-ce-s0")
    e = zoo.find("fake-lenet5-ce-s0", z)
    run = zoo.restore(e["key"], tmp_path / "store", z)
    assert run.finished and list((tmp_path / "store" / ".zoo-cache").glob("*-model.safetensors"))
    assert weights_digest(load_run(run, torch.device("cpu"))[1].state_dict()) == e["weights"]


def test_a_url_entry_whose_hash_differs_is_refused_and_discarded(exported, tmp_path):
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    _as_url_entry(z, "fake-lenet5-ce-s0", sha256="0" * 64)
    with pytest.raises(zoo.ZooError, match="invalid hash value") as info:
        zoo.load("fake-lenet5-ce-s0", zoo=z, cache=tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").iterdir())  # nothing kept


@pytest.mark.slow
def test_from_zoo_rebuilds_the_table_without_training(exported, tmp_path, monkeypatch):
    """A fresh store and out_dir: make table3 FROM=zoo trains nothing and gives the same table."""
    import pclc.train as train_mod

    tmp, _ = exported
    trained = []
    real = train_mod._train
    monkeypatch.setattr(
        train_mod, "_train", lambda cfg, run, until: (trained.append(run.finished), real(cfg, run, until))[1]
    )
    cfg = _cfg(tmp, "attacks=[pgd]", "from_zoo=true", store=tmp_path / "store", out=tmp_path / "out")
    reproduce(cfg)
    assert trained and all(trained)  # every run was finished (restored) before _train saw it: nothing trained
    assert not list((tmp_path / "store").glob("*/checkpoint.pt"))
    ours = pd.read_csv(tmp_path / "out" / "tiny" / "table3.csv", comment="#")
    ref = pd.read_csv(tmp / "results" / "tiny" / "table3.csv", comment="#")
    pd.testing.assert_series_equal(ours.ours, ref.ours)
    md = (tmp_path / "out" / "tiny" / "table3.md").read_text()
    assert f"weights trained on: {machine_line(machine(torch.device('cpu')))} (3 runs; 3 of 3 from the zoo" in md
    assert "MIXED" not in md
    # the CSV, read without its markdown, names the same machines (it once named only the evaluating device)
    head = [ln for ln in (tmp_path / "out" / "tiny" / "table3.csv").read_text().splitlines() if ln.startswith("#")]
    assert (
        f"# weights trained on: {machine_line(machine(torch.device('cpu')))} (3 runs; 3 of 3 from the zoo"
        in "\n".join(head)
    )
    assert any(ln.startswith("# attacks computed on: cpu (") for ln in head)


def test_the_plan_from_the_zoo_counts_no_training(exported, tmp_path):
    """``plan=true from_zoo=true``: zoo models (the targets and the black-box substitute) are restored, not
    trained, so the prediction is the evaluation alone. The planner once predicted every model's training."""
    from pclc.costs import CostModel
    from pclc.plan import plan_items

    tmp, _ = exported
    over = ["attacks=[pgd]", "device=cpu"]
    for from_zoo, trains in ((False, True), (True, False)):
        cfg = _cfg(tmp, *over, f"from_zoo={str(from_zoo).lower()}", store=tmp_path / "store", out=tmp_path / "o")
        rows, work = plan_items(cfg, CostModel(tmp / "runs", None))  # the exported store's measured epochs
        assert any(k[0] == "train" for k in work) == trains and all(r["trained"] != trains for r in rows), rows
    rows, _ = plan_items(_cfg(tmp, *over, store=tmp_path / "s"), CostModel(tmp / "runs", None))
    assert any(r["label"].endswith("(substitute)") for r in rows)  # without the zoo, Table 3's substitute trains


def test_from_zoo_refuses_before_any_work_when_the_zoo_lacks_a_run(exported, tmp_path):
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    manifest = json.loads((z / "manifest.json").read_text())
    manifest["models"] = [e for e in manifest["models"] if e["model"] != "cnn3"]
    (z / "manifest.json").write_text(json.dumps(manifest))
    cfg = _cfg(tmp, "attacks=[pgd]", "from_zoo=true", f"zoo_dir={z}", store=tmp_path / "store", out=tmp_path / "o")
    with pytest.raises(zoo.ZooError, match="lacks 1 of the runs this needs: fake-cnn3-ce-s0"):
        reproduce(cfg)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").glob("fake-*"))


def test_restore_refuses_a_store_run_with_other_weights(exported, tmp_path):
    tmp, _ = exported
    e = zoo.find("fake-lenet5-ce-s0", tmp / "zoo")
    shutil.copytree(tmp / "runs" / e["key"], tmp_path / "store" / e["key"])
    summary = json.loads((tmp_path / "store" / e["key"] / "summary.json").read_text())
    summary["weights"] = "0123456789abcdef"  # as a run trained on another machine would record
    (tmp_path / "store" / e["key"] / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(zoo.ZooError, match="holds other weights"):
        zoo.restore(e["key"], tmp_path / "store", tmp / "zoo")


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("entry", zoo.read_manifest(COMMITTED), ids=lambda e: e["name"])
def test_every_committed_zoo_model_has_its_manifest_accuracy_on_real_fmnist(entry, real_fmnist_root):
    cfg, model = zoo.load(entry["name"], zoo=COMMITTED)
    cfg.dataset.root = str(real_fmnist_root)
    x, y = eval_tensors(cfg.dataset, None, "cpu")
    acc = percent(predict(model, x, 1000).argmax(1) == y)
    # exact on the CPU type that trained it; another CPU's kernels may flip an example near a tie (0.01 each)
    assert acc == pytest.approx(entry["clean_accuracy"], abs=0.05)


@pytest.mark.slow
def test_verify_records_on_one_machine_and_compares_on_another(exported, tmp_path):
    """--record stores the reference numbers; a later verify reports the difference against them (0 here, the
    same machine), and a manifest number that differs shows as the largest difference."""
    from pclc.verify import machine_slug, main

    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    assert (
        main(
            [
                "--zoo",
                str(z),
                "--subset",
                "20",
                "--record",
                "--out-dir",
                str(tmp_path / "a"),
                "fake-lenet5-ce-s0",
            ]
        )
        == 0
    )
    rec = zoo.find("fake-lenet5-ce-s0", z)["verify"]
    assert rec["subset"] == 20 and {"fgsm eps 0.1 (first 20)", "pgd eps 0.3 (first 20)"} <= set(rec["cells"])
    manifest = json.loads((z / "manifest.json").read_text())
    e = next(e for e in manifest["models"] if e["name"] == "fake-lenet5-ce-s0")
    e["verify"]["cells"]["pgd eps 0.2 (first 20)"] += 5.0  # as another machine's number would differ
    (z / "manifest.json").write_text(json.dumps(manifest))
    assert main(["--zoo", str(z), "--subset", "20", "--out-dir", str(tmp_path / "b"), "fake-lenet5-ce-s0"]) == 0
    md = (tmp_path / "b" / f"verify-{machine_slug(machine(torch.device('cpu')))}.md").read_text()
    assert "largest |difference| against the manifest: **5.00** points (fake-lenet5-ce-s0 pgd eps 0.2" in md
    assert "| fake-lenet5-ce-s0 | clean (full test set) |" in md and "+0.00 |" in md


def test_trained_on_notes_flag_a_table_of_two_machines(tmp_path):
    from pclc.headers import trained_on_notes

    for key, cpu in (("a-s0-1", "AMD EPYC"), ("b-s0-2", "Intel Xeon")):
        (tmp_path / key).mkdir()
        (tmp_path / key / "summary.json").write_text(
            json.dumps(
                {
                    "provenance": {
                        "machine": {
                            "cpu_model": cpu,
                            "cpu_capability": "AVX2",
                            "threads": 2,
                            "torch": "2.14.1",
                        }
                    }
                }
            )
        )
    notes = trained_on_notes(tmp_path, ["a-s0-1", "b-s0-2"])
    assert notes[0].startswith("MIXED: the weights behind this table were trained on 2 machine types")
    assert notes[1:] == [
        "weights trained on: AMD EPYC (AVX2), 2 threads, torch 2.14.1 (1 runs)",
        "weights trained on: Intel Xeon (AVX2), 2 threads, torch 2.14.1 (1 runs)",
    ]
    assert trained_on_notes(tmp_path, ["a-s0-1"]) == [
        "weights trained on: AMD EPYC (AVX2), 2 threads, torch 2.14.1 (1 runs)"
    ]


# Committed results files that predate the result set's machine line (trained on an Intel Xeon whose weights were
# not kept, or evaluated before the header named the training machine): each is to be regenerated from the zoo,
# and leaves this list when it is (the test fails while a regenerated file is still listed).
AWAITING_REGENERATION: set[str] = set()
# Results CSVs written before their comment lines named the training machine (the markdown beside each does, but a
# CSV is read without it): each gains the line when its table is next computed, and leaves this list then.
CSV_AWAITING_REGENERATION = {
    "cw_budget.csv",
    "gpu-check-nvidia-h200/tables/table1.csv",
    "seeds/table1.csv",
    "seeds/table3.csv",
    "table1.csv",
    "table3.csv",
    "table5.csv",
}
RUN_KEY = re.compile(r"\b[a-z0-9]+-[a-z0-9]+-[a-z]+-s\d+-[0-9a-f]{12}\b")
MACHINE_LINE = re.compile(r"^- (?:weights )?trained on: (.*?)(?: \(\d+ runs?\b.*\))?$", re.M)  # note may nest ()


def test_the_committed_result_set_is_one_machine_type():
    """Issue 26: every committed results file (one with a commit line, or naming a trained run) also names the
    machine that trained its weights, and all of them name the same machine type (a file with two, or two files
    with different ones, mix measurements). Speed benchmarks, the quick/tiny profiles' outputs and SUMMARY.md (an
    index of the tables) are not such files; those still awaiting regeneration are listed, and only those."""
    results = COMMITTED.parent
    machines, lacking = {}, set()
    for f in sorted(results.rglob("*.md")):
        name = f.relative_to(results).as_posix()
        # plans predict runs not trained yet, and gpu-check's summary.md indexes its steps (its tables carry the line)
        base = name.rsplit("/", 1)[-1]
        skip = base.startswith(("bench-", "profile-", "SUMMARY", "plan")) or base == "summary.md"
        if name.split("/")[0] in ("quick", "tiny", "zoo") or skip:
            continue
        text = f.read_text()
        assert "\n- MIXED:" not in text, f"{name} mixes the weights of two machine types"
        lines = MACHINE_LINE.findall(text)
        for line in lines:
            machines.setdefault(line, []).append(name)
        if (RUN_KEY.search(text) or "\n- commit: " in text) and not lines:
            lacking.add(name)
    assert len(machines) <= 1, f"the committed results name several training machines: {machines}"
    assert lacking == AWAITING_REGENERATION, (
        f"results naming runs without the training machine's line: {sorted(lacking)}; listed as awaiting "
        f"regeneration: {sorted(AWAITING_REGENERATION)}"
    )
    # the CSVs: each results CSV (one with a commit line) names its training machine in a comment line, or per row
    csv_lacking = set()
    for f in sorted(results.rglob("*.csv")):
        name, text = f.relative_to(results).as_posix(), f.read_text()
        if name.split("/")[0] in ("quick", "tiny", "zoo") or "\n# commit: " not in "\n" + text:
            continue
        lines = re.findall(r"^# weights trained on: (.*?)(?: \(\d+ runs?\b.*\))?$", text, re.M)
        for line in lines:
            machines.setdefault(line, []).append(name)
        columns = next(ln for ln in text.splitlines() if not ln.startswith("#")).split(",")
        if not lines and "trained_on" not in columns:  # pclc.verify names it per row
            csv_lacking.add(name)
    assert len(machines) <= 1, f"the committed results name several training machines: {machines}"
    assert csv_lacking == CSV_AWAITING_REGENERATION, (
        f"results CSVs without the training machine's line: {sorted(csv_lacking)}; listed as awaiting "
        f"regeneration: {sorted(CSV_AWAITING_REGENERATION)}"
    )


def test_verify_leaves_a_partial_file_when_cut_short_and_a_whole_one_when_done(tmp_path, monkeypatch):
    """A verify cut short (a GPU lease ending, a session stopping) leaves what it measured, marked partial."""
    import pclc.verify as v

    entries = [
        {"name": f"m{i}", "key": f"k{i}", "clean_accuracy": 90.0, "trained_on": {"line": "AMD EPYC"}} for i in range(3)
    ]
    monkeypatch.setattr(v.zoo, "read_manifest", lambda z=None: entries)
    calls = []

    def cells(e, *a):
        calls.append(e["name"])
        if calls == ["m0", "m1", "m2"]:
            raise KeyboardInterrupt("the lease ended")
        return {"clean (full test set)": 90.0, "fgsm eps 0.1 (first 20)": 40.0}

    monkeypatch.setattr(v, "model_cells", cells)
    with pytest.raises(KeyboardInterrupt):
        v.verify(out_dir=tmp_path, subset=20, device="cpu")
    (md,) = tmp_path.glob("verify-*.md")
    text = md.read_text()
    assert (
        "**PARTIAL: 2 of 3 models so far**" in text and "| m1 | clean (full test set) | 90.00 | 90.00 | +0.00 |" in text
    )
    assert "| m2 |" not in text
    v.verify(out_dir=tmp_path, subset=20, device="cpu")  # m0 again, then all three
    text = md.read_text()
    assert "PARTIAL" not in text and "| m2 | fgsm eps 0.1 (first 20) | 40.00 |" in text and "- models: 3;" in text


def test_a_run_no_cell_names_is_exported_only_with_the_command_that_retrains_it(tmp_path, capsys):
    from pclc.train import train

    over = ["dataset=fake", "loss=ce", "trainer=fast_at", "+profiles/train=tiny", "logger=none", "device=cpu"]
    over.append(f"store={tmp_path / 'runs'}")
    key = train(compose("train", [*over, "monitor.attack=fgsm", "monitor.subset=16"]))["key"]  # a curve run
    args = ["--store", str(tmp_path / "runs"), "--run", key, "--method", "ce+fastat", "--arm", "learning_curve.x"]
    with pytest.raises(SystemExit, match=f"trains .*, not {key}: nothing exported"):
        zoo.main([*args, "--name", "wrong", *over, "seed=1"])
    assert not (tmp_path / "zoo").exists()
    os.environ["PCLC_ZOO"] = str(tmp_path / "zoo")
    try:
        zoo.main([*args, "--name", "fake-lenet5-ce+fastat-s0-curve", *over])
        entry = zoo.find("fake-lenet5-ce+fastat-s0-curve")
    finally:
        del os.environ["PCLC_ZOO"]
    assert entry["key"] == key and entry["recipe"] == {"arm": "learning_curve.x", "train": over}
    assert (entry["method"], entry["loss"], entry["trainer"]) == ("ce+fastat", "ce", "fast_at")
    assert f"fake-lenet5-ce+fastat-s0-curve: {key}" in capsys.readouterr().out
