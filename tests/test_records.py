"""Evaluation records carried in the zoo (pclc.records): a table evaluated in one store is rebuilt in a fresh store
(another machine, a later session) without recomputing an attack, and names the machine that computed it."""

from __future__ import annotations

import gzip
import json
import logging
import shutil

import pandas as pd
import pytest

from pclc import records, zoo
from pclc.reproduce import reproduce
from pclc.store import RunDir
from tests.test_zoo import _cfg, _copy_zoo, exported  # noqa: F401 (the fixture: a tiny zoo of Table 3's runs)

OTHER = "cpu (Other CPU, AVX2, 2 threads)"


@pytest.mark.slow
def test_a_fresh_store_resumes_from_the_zoos_records_without_recomputing(exported, tmp_path, monkeypatch):  # noqa: F811
    import pclc.evaluate as ev

    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    a, b = tmp_path / "a", tmp_path / "b"
    reproduce(_cfg(tmp, "attacks=[pgd]", "from_zoo=true", f"zoo_dir={z}", store=a, out=tmp_path / "out-a"))
    evals = sorted(a.glob("*/eval/*.json"))
    assert evals
    for f in evals:  # as if computed on another machine
        f.write_text(json.dumps({**json.loads(f.read_text()), "device": OTHER}))
    (a / evals[0].parent.parent.name / "audit" / "adv").mkdir(parents=True)
    (a / evals[0].parent.parent.name / "audit" / "adv" / "x.json").write_text("{}")  # transfer examples: not carried

    written = records.save(a, zoo=z)
    assert sorted(p.name for p in written) == sorted(f"{f.name}.gz" for f in evals)
    assert all(p.parent.parent == zoo.records_dir(p.parents[2].name, z) for p in written)
    assert zoo.read_record(written[0]) == next(f for f in evals if f.name == written[0].stem).read_bytes()
    assert records.save(a, zoo=z) == []  # nothing new: nothing written

    from pclc.costs import CostModel  # the planner counts a recorded evaluation as done
    from pclc.plan import plan_items

    over = ["attacks=[pgd]", f"zoo_dir={z}", "device=cpu"]

    def planned(*o):
        return [
            k for k in plan_items(_cfg(tmp, *over, *o, store=tmp_path / "c"), CostModel(a, None))[1] if k[0] == "eval"
        ]

    assert planned() and not planned("from_zoo=true")

    def boom(*args, **kw):
        raise AssertionError("an attack ran although the zoo holds its record")

    monkeypatch.setattr(ev, "craft", boom)
    reproduce(_cfg(tmp, "attacks=[pgd]", "from_zoo=true", f"zoo_dir={z}", store=b, out=tmp_path / "out-b"))
    ours = pd.read_csv(tmp_path / "out-b" / "tiny" / "table3.csv", comment="#")
    ref = pd.read_csv(tmp_path / "out-a" / "tiny" / "table3.csv", comment="#")
    pd.testing.assert_series_equal(ours.ours, ref.ours)
    md = (tmp_path / "out-b" / "tiny" / "table3.md").read_text()
    assert f"- attacks computed on: {OTHER} ({len(evals)} result files" in md  # the machine that computed them
    assert not list(b.glob("*/audit/adv"))

    # zoo_records=false (gpu-check's GPU step): the zoo's weights, every attack computed here again
    assert planned("from_zoo=true", "zoo_records=false") == planned()
    with pytest.raises(AssertionError, match="an attack ran although the zoo holds its record"):
        reproduce(
            _cfg(tmp, "attacks=[pgd]", "from_zoo=true", "zoo_records=false", f"zoo_dir={z}", store=tmp_path / "d")
        )
    assert not list((tmp_path / "d").glob("*/eval/*.json"))  # nothing restored from the records


@pytest.mark.slow
def test_verify_evaluates_here_and_never_reads_the_zoos_records(exported, tmp_path, monkeypatch):  # noqa: F811
    """verify's numbers are this machine's: the zoo's record of the same cell (another machine's) must not stand in
    for the attack, or verify would compare the zoo with itself and always find 0."""
    import pclc.evaluate as ev
    from pclc.verify import main

    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    s = tmp_path / "s"
    args = ["--zoo", str(z), "--subset", "20", "fake-lenet5-ce-s0"]
    assert main([*args, "--store", str(s), "--out-dir", str(tmp_path / "a")]) == 0
    assert records.save(s, zoo=z)  # the verify cells are now records in the zoo
    crafted = []
    real = ev.craft
    monkeypatch.setattr(ev, "craft", lambda *a, **kw: crafted.append(1) or real(*a, **kw))
    assert main([*args, "--out-dir", str(tmp_path / "b")]) == 0  # a fresh store
    assert crafted  # the attacks ran here


def test_only_zoo_runs_have_records_and_a_store_file_is_never_overwritten(exported, tmp_path, caplog):  # noqa: F811
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    key = zoo.find("fake-lenet5-ce-s0", z)["key"]
    with pytest.raises(zoo.ZooError, match="run nope-s0-1 is not a finished zoo run") as info:
        records.save(tmp / "runs", keys=[key, "nope-s0-1"], zoo=z)
    assert "\n" not in str(info.value) and not zoo.records_dir(key, z).exists()  # refused before any write
    other = tmp_path / "other"  # the same key trained on this machine: other weights, whose results are not the zoo's
    shutil.copytree(tmp / "runs" / key, other / key)
    summary = json.loads((other / key / "summary.json").read_text())
    (other / key / "summary.json").write_text(json.dumps({**summary, "weights": "0" * 16}))
    with pytest.raises(zoo.ZooError, match="holds other weights than the zoo's"):
        records.save(other, zoo=z)
    assert not zoo.records_dir(key, z).exists()

    rec = zoo.records_dir(key, z)
    (rec / "eval").mkdir(parents=True)
    (rec / "eval" / "white-pgd.json.gz").write_bytes(gzip.compress(b'{"from": "the zoo"}'))
    (rec / "eval" / "white-fgsm.json.gz").write_bytes(b"not gzip")
    (rec / "audit").mkdir()
    (rec / "audit" / "square.json.gz").write_bytes(gzip.compress(b'{"from": "the zoo"}'))
    run = RunDir(tmp_path / "store", key)
    (run.path / "eval").mkdir(parents=True)
    (run.path / "eval" / "white-pgd.json").write_text('{"from": "this machine"}')
    with caplog.at_level(logging.WARNING):
        assert zoo.restore_records(run, z) == 1  # the audit record; the damaged one skipped, the store's kept
    assert "white-fgsm.json.gz cannot be read" in caplog.text
    assert json.loads((run.path / "eval" / "white-pgd.json").read_text()) == {"from": "this machine"}
    assert json.loads((run.path / "audit" / "square.json").read_text()) == {"from": "the zoo"}
    assert not (run.path / "eval" / "white-fgsm.json").exists()


def test_a_result_set_aside_is_never_saved_as_a_record(exported, tmp_path):  # noqa: F811
    """A result renamed ``.stale-`` (other weights, or set aside to be computed again) is not a result: the zoo
    never carries it (records save once copied such files too)."""
    tmp, _ = exported
    z = _copy_zoo(tmp, tmp_path / "zoo")
    key = zoo.find("fake-lenet5-ce-s0", z)["key"]
    store = tmp_path / "store"
    shutil.copytree(tmp / "runs" / key, store / key)
    result = json.dumps({"from": "this machine"}).encode()
    (store / key / "eval").mkdir(exist_ok=True)
    (store / key / "eval" / "white-pgd-x.json").write_bytes(result)
    (store / key / "eval" / "white-pgd-x.stale-20261205-120000.json").write_bytes(result)
    written = records.save(store, keys=[key], zoo=z)
    assert "white-pgd-x.json.gz" in {p.name for p in written}
    assert not [p for p in zoo.records_dir(key, z).rglob("*") if ".stale-" in p.name]


def test_the_command_line_saves_and_refuses_in_one_line(exported, tmp_path, monkeypatch, capsys):  # noqa: F811
    tmp, _ = exported
    monkeypatch.setenv("PCLC_ZOO", str(_copy_zoo(tmp, tmp_path / "zoo")))
    with pytest.raises(SystemExit, match="error: run x-s0-1 is not a finished zoo run"):
        records.main(["save", "--store", str(tmp / "runs"), "--keys", "x-s0-1"])
    assert records.main(["save", "--store", str(tmp / "runs")]) == 0
    assert capsys.readouterr().out.strip().endswith("record(s) written")
