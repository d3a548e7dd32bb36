"""Progress where a user waits (issue 32): bars on a terminal, one line per cell in logs, ETA per cell."""

from __future__ import annotations

import logging

import pytest
import torch

import pclc.progress as progress
from pclc.attacks.engine import cw_l2
from pclc.config import compose
from pclc.evaluate import evaluate
from pclc.train import train

BASE = ["dataset=fake", "dataset.n_test=200", "logger=none", "trainer.epochs_per_phase=1", "model=lenet5", "loss=ce"]


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    assert isinstance(progress.bar(10, "x"), progress.Silent)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    b = progress.bar(10, "x")
    assert not isinstance(b, progress.Silent) and b.total == 10
    b.close()


@pytest.mark.slow
def test_an_attack_cell_shows_a_bar_on_a_terminal_and_one_line_in_a_log(tmp_path, monkeypatch, capsys, caplog):
    train(compose("train", [*BASE, f"store={tmp_path}"]))
    cfg = compose("evaluate", [*BASE, f"store={tmp_path}", "attack/suite=demo", "eval.batch_size=50"])
    cfg.suite.entries = [e for e in cfg.suite.entries if e.attack == "pgd"][:1]
    cfg.suite.entries[0].eps = [0.1]
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="pclc"):
        evaluate(cfg)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name == "pclc.evaluate"]
    assert len(lines) == 1 and "pgd eps=0.1" in lines[0], lines  # no per-batch lines in a log
    assert "img" not in capsys.readouterr().err
    for f in (tmp_path).glob("*/eval/*.json"):
        f.unlink()  # attack again, on a "terminal"
    monkeypatch.setattr(progress, "interactive", lambda: True)
    evaluate(cfg)
    err = capsys.readouterr().err
    assert "white-pgd-eps0.1" in err and "200/200" in err  # tqdm's bar over the cell's examples


def test_cw_shows_its_binary_search_steps(monkeypatch):
    import pclc.attacks.engine as engine

    shown = []

    class Recorder(progress.Silent):
        def __init__(self, total, desc, unit, nested):
            shown.append({"total": total, "desc": desc, "nested": nested, "n": 0})

        def update(self, n=1):
            shown[-1]["n"] += n

    monkeypatch.setattr(engine, "bar", lambda total, desc, unit, nested: Recorder(total, desc, unit, nested))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    kw = {"confidence": 0.0, "learning_rate": 0.01, "max_iterations": 3, "abort_early": False, "initial_const": 0.01}
    cw_l2(model, x, y, 3, None, binary_search_steps=4, **kw)
    assert shown == [{"total": 4, "desc": "C&W search steps", "nested": True, "n": 4}]


def test_eta_line_scales_the_planner_by_the_pace_so_far():
    line = progress.eta_line(2, 3, "fmnist/lenet5/pclc", [120.0, 60.0], measured=50.0, done_predicted=100.0)
    assert line == (
        "cell 2/3 fmnist/lenet5/pclc: predicted 1.0 min; ETA for the rest 1.5 min (planner x 0.50, this machine's "
        "pace so far)"
    )
    assert progress.eta_line(1, 2, "a", [None, 5.0], 0.0, 0.0).endswith("ETA unknown")
    assert "nothing left to compute" in progress.eta_line(1, 1, "a", [0.0], 0.0, 0.0)


def test_eta_line_names_the_work_no_prediction_holds():
    """The audit's attacks follow the cells and are priced by nothing: "0 s" must not read as "finished"."""
    line = progress.eta_line(1, 1, "a", [0.0], 0.0, 0.0, unplanned="the audit's attacks")
    assert line == (
        "cell 1/1 a: nothing left to train or evaluate (finished results reused); ETA for the rest 0 s (planner); "
        "not in this ETA: the audit's attacks"
    )


def test_finished_cells_do_not_replan_the_rest(monkeypatch, caplog):
    """The planner runs again after a cell only when that cell computed something (the store gained a measurement):
    on the H100 lease, with no bench for the GPU, it replanned after each of 46 finished cells, ~5 s each."""
    from omegaconf import OmegaConf

    import pclc.reproduce as rp

    calls = []

    def cell_seconds(cfg):
        calls.append(1)
        return [0.0, 0.0, 0.0, None, None]  # three finished cells, two the planner cannot price

    monkeypatch.setattr(rp, "cell_seconds", cell_seconds)
    monkeypatch.setattr(rp, "run_cell", lambda cell, cfg: {"cell": cell.label})
    cells = [OmegaConf.create({"label": f"c{i}"}) for i in range(5)]
    cfg = OmegaConf.create({"experiment": {"kind": "table"}})
    with caplog.at_level(logging.INFO, logger="pclc.reproduce"):
        rp.run_cells(cells, cfg)
    assert len(calls) == 1 + 1  # once at the start, once after c3 (it computed); none after c0-c2 or the last
    assert "cell 5/5 c4" in caplog.text
