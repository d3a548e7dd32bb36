"""Robustness audit (pclc.audit) on tiny models trained on synthetic data, with tiny attack budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import pclc.audit as au
from pclc.config import CONFIG_DIR, compose
from pclc.evaluate import load_run
from pclc.store import RunDir
from pclc.train import train

BASE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2"]
EPS = [0.1]
SUBSET = 60
TINY = {"batch_size": 64, "paper_pgd_steps": 8, "pgd_steps": [2, 4], "margin_steps": 10, "margin_restarts": 2,
        "temp_steps": 10, "apgd_steps": 8, "apgd_restarts": 1, "apgdt_steps": 4, "apgdt_targets": 2,
        "square_queries": 20, "transfer_steps": 5, "sweep_max_eps": 0.2}


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine's cores are shared; one thread avoids oversubscription (no effect on results)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A store with a CE LeNet-5 and the PC+LC run that fine-tunes its warm-up."""
    store = tmp_path_factory.mktemp("audit-store")
    ce = train(compose("train", [*BASE, "loss=ce", f"store={store}"]))
    pc = train(compose("train", [*BASE, "loss=pclc", f"store={store}"]))
    return store, ce, pc


@pytest.fixture(scope="session")
def ce_data(runs):
    store, ce, _ = runs
    cfg, model = load_run(RunDir(store, ce["key"]), torch.device("cpu"))
    x, y = au._test_data(cfg, SUBSET, torch.device("cpu"), None)
    return model, x, y


class Masked(torch.nn.Module):
    """Gradient masking by construction: log_softmax(T * logits) saturates float32 CE gradients to zero."""

    def __init__(self, inner: torch.nn.Module, t: float = 1e4):
        super().__init__()
        self.inner, self.t = inner, t

    def forward(self, x):
        return torch.log_softmax(self.t * self.inner(x), 1)


def test_attacks_respect_eps_and_box_and_leave_input(runs, ce_data):
    store, _, pc = runs
    model, x, y = ce_data
    x, y = x[:12], y[:12]
    _, source = load_run(RunDir(store, pc["key"]), torch.device("cpu"))
    specs = au.attack_specs(au._profile(TINY), 10, ("pclc", source))
    assert {s.name for s in specs} >= {"fgsm", au.PAPER, "pgd-ce-2", "pgd-ce-4", "pgd-margin", "pgd-ce-temp",
                                       "apgd-ce", "apgd-dlr", "apgdt", "square", "transfer-pgd"}
    eps = 0.1
    for s in specs:
        before = x.clone()
        adv = s.fn(model, x, y, eps, seed=3, **s.params, **s.extra)
        assert torch.equal(x, before), f"{s.name} modified its input"
        assert adv.shape == x.shape
        assert (adv - x).abs().max() <= eps + 1e-6, s.name
        assert adv.min() >= 0 and adv.max() <= 1, s.name
        again = s.fn(model, x, y, eps, seed=3, **s.params, **s.extra)
        assert torch.equal(adv, again), f"{s.name} is not reproducible with a fixed seed"
    names = {k: {s.name for s in au.attack_specs(au._profile(TINY), k)} for k in (2, 3)}
    assert "apgd-dlr" not in names[2] and "apgd-dlr" in names[3] and "apgdt" not in names[3]  # DLR: K >= 3, 4


@pytest.mark.parametrize("loss", ["ce", "cw", "temp"])
def test_dropping_fooled_examples_changes_no_result(ce_data, loss):
    model, x, y = ce_data
    kw = {"ce": {}, "cw": {"loss": au._cw}, "temp": {"temperature": torch.linspace(1, 3, len(x))[:, None]}}[loss]
    runs = {}
    for every in (0, 3):
        torch.manual_seed(5)
        runs[every] = au._pgd(model, x, y, 0.15, steps=12, step=0.02, compact_every=every, **kw)
    with torch.no_grad():
        fooled = {k: model(v).argmax(1) != y for k, v in runs.items()}
    assert 0 < int(fooled[0].sum()) < len(y)  # some examples leave the batch early, some stay to the end
    assert torch.equal(fooled[0], fooled[3]) and torch.allclose(runs[0], runs[3], atol=1e-6)


def test_worst_case_needs_every_attack_to_fail():
    per_attack = {"clean": torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool),
                  "a": torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool),
                  "b": torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)}
    assert au.worst_case(per_attack).tolist() == [True, False, False, False, True]


def test_eps_sweep_extends_until_zero():
    calls = []

    def correct_at(eps):
        calls.append(eps)
        return torch.tensor([eps < 0.35, eps < 0.15, False, False])

    out = au.eps_sweep(None, None, None, None, [0.1, 0.2], max_eps=1.0, correct_fn=correct_at)
    assert out == {"eps": [0.1, 0.2, 0.4], "accuracy": [50.0, 25.0, 0.0]} and calls == [0.1, 0.2, 0.4]


def test_masked_model_is_flagged_and_broken(ce_data, tmp_path):
    ce, x, y = ce_data
    masked = Masked(ce)
    probe = au.saturation_probe(masked, x, y)
    clean = (masked(x).argmax(1) == y).float().mean().item()
    assert clean > 0.4
    assert probe["share_p_y_one"] >= 0.9 * clean and probe["share_zero_grad"] >= 0.9 * clean
    assert au.saturation_probe(ce, x, y)["share_zero_grad"] == 0.0

    reference = au.reference_level(ce, x, y, EPS, TINY, tmp_path / "ce")
    # each attack on every example: the CE attacks find no gradient, the margin-loss attacks break it
    alone = au.audit_model(masked, x, y, EPS, {**TINY, "cascade": False}, tmp_path / "masked", reference=reference)
    acc = {n: d["0.1"] for n, d in alone["accuracy"].items()}
    adaptive = min(acc["pgd-margin"], acc["apgd-dlr"])
    assert acc[au.PAPER] - adaptive > 20 and acc["apgd-ce"] - adaptive > 20
    assert alone["cascade"] == [] and alone["strongest_adaptive"] in ("pgd-margin", "apgd-dlr", "apgdt", "square")
    # the cascade (default) reaches the same verdict
    for out in (alone, au.audit_model(masked, x, y, EPS, TINY, tmp_path / "masked", reference=reference)):
        assert out["worst_case"]["0.1"] <= reference[0.1] + 10
        assert out["verdict"] == "artefact of gradient masking", out["verdict_reason"]
        assert out["flags"]["paper_attack_overestimates_robustness"]
        json.dumps(out)  # JSON-ready
    assert out["cascade"] == ["pgd-margin", "pgd-ce-temp", "apgd-ce", "apgd-dlr", "apgdt"]
    assert out["strongest_adaptive"] == "pgd-margin"  # first in line, it breaks what the CE attacks could not


def test_cascade_attacks_only_survivors_and_nests_eps(ce_data, tmp_path):
    model, x, y = ce_data
    out = au.audit_model(model, x, y, [0.05, 0.1], TINY, tmp_path)
    files = {(d["attack"], d["eps"]): d for d in map(lambda f: json.loads(f.read_text()), tmp_path.glob("*.json"))}
    alive = None
    for e in (0.05, 0.1):
        before = au.worst_case({"clean": torch.tensor(files[("fgsm", e)]["correct"]) | True, **{
            n: torch.tensor(files[(n, e)]["correct"], dtype=torch.bool) for n in out["accuracy"]
            if n not in out["cascade"]}})
        if alive is not None:
            before &= alive  # broken at the smaller eps: not attacked again
        for n in out["cascade"]:
            d = files[(n, e)]
            after = torch.tensor(d["correct"], dtype=torch.bool)
            assert d["attacked"] == int(before.sum()) and not bool((after & ~before).any())
            assert out["cascade_counts"][n][f"{e:g}"] == [int(before.sum()), int(before.sum() - after.sum())]
            assert out["accuracy"][n][f"{e:g}"] == pytest.approx(100 * after.double().mean().item())
            before = after
        alive = before
        assert out["worst_case"][f"{e:g}"] == pytest.approx(100 * alive.double().mean().item())
    assert out["worst_case"]["0.1"] <= out["worst_case"]["0.05"]
    # the sweep runs the cascade past the grid on what survived; it ends at 0 or at sweep_max_eps
    sweep = out["sweeps"][au.CASCADE]
    assert sweep["eps"][:2] == [0.05, 0.1] and sweep["accuracy"][:2] == [out["worst_case"]["0.05"],
                                                                        out["worst_case"]["0.1"]]
    assert sweep["accuracy"][-1] == 0.0 or sweep["eps"][-1] == TINY["sweep_max_eps"]


def test_transfer_examples_are_crafted_once_per_source(ce_data, runs, tmp_path, monkeypatch):
    ce, x, y = ce_data
    store, _, pc = runs
    _, pclc = load_run(RunDir(store, pc["key"]), torch.device("cpu"))
    crafted, real = [], au._pgd
    monkeypatch.setattr(au, "_pgd", lambda m, *a, **k: crafted.append(len(a[0])) or real(m, *a, **k))
    spec = next(s for s in au.attack_specs(au._profile(TINY), 10, ("ce", ce, tmp_path / "adv"))
                if s.name == "transfer-pgd")
    first = au.attack_correct(pclc, x, y, spec.fn, 0.1, 25, **spec.params, **spec.extra)
    assert crafted == [25, 25, 10] and len(list((tmp_path / "adv").glob("transfer-pgd-*.pt"))) == 3
    again = au.attack_correct(pclc, x, y, spec.fn, 0.1, 25, **spec.params, **spec.extra)
    on_ce = au.attack_correct(ce, x, y, spec.fn, 0.1, 25, **spec.params, **spec.extra)
    assert crafted == [25, 25, 10] and torch.equal(first, again)  # read back, not crafted again
    fresh = au.attack_correct(pclc, x, y, spec.fn, 0.1, 25, **spec.params, source=ce)  # no cache
    assert torch.equal(first, fresh) and not torch.equal(on_ce, first)


def test_verdict_rules():
    base = {"eps": 0.1, "paper_accuracy": 60.0, "reference_accuracy": 5.0, "near_reference": True}
    assert au.verdict({**base, "worst_case_accuracy": 58.0, "drop": 2.0, "masking_signs": ["x"]}) == au.VERDICTS[0]
    assert au.verdict({**base, "worst_case_accuracy": 40.0, "drop": 20.0, "masking_signs": []}) == au.VERDICTS[1]
    assert au.verdict({**base, "worst_case_accuracy": 8.0, "drop": 52.0, "masking_signs": ["x"]}) == au.VERDICTS[2]
    far = {**base, "worst_case_accuracy": 40.0, "drop": 20.0, "masking_signs": ["x"], "near_reference": False}
    assert au.verdict(far) == au.VERDICTS[1]


def _overrides(store: Path, out: Path) -> list[str]:
    prof = [f"audit.profile.{k}={json.dumps(v, separators=(',', ':'))}" for k, v in TINY.items()]
    return [*BASE, "loss=pclc", f"store={store}", f"audit.eps={EPS}", f"audit.subset={SUBSET}",
            f"audit.out_dir={out}", *prof]


def test_audit_run_caches_and_reports(runs, tmp_path, monkeypatch):
    store, ce, pc = runs
    run, ref = RunDir(store, pc["key"]), RunDir(store, ce["key"])
    first = au.audit_run(run, torch.device("cpu"), EPS, TINY, ref, SUBSET)
    cached = sorted(p.name for p in (run.path / "audit").glob("*.json"))
    assert any(n.startswith("transfer-pgd-eps0.1-sub60-") for n in cached) and len(cached) >= 11

    def boom(*a, **k):
        raise AssertionError("an attack ran although its result is cached")

    monkeypatch.setattr(au, "attack_correct", boom)
    second = au.audit_run(run, torch.device("cpu"), EPS, TINY, ref, SUBSET)
    assert second["accuracy"] == first["accuracy"] and second["verdict"] == first["verdict"]
    assert first["verdict"] in au.VERDICTS and first["reference_run"] == ce["key"]

    paper = [{"dataset": "fake", "model": "lenet5", "method": "pclc", "attack": "pgd", "param": "0.1",
              "accuracy": 55.5}]
    md, csv, png = au.write_audit_report([first], tmp_path, paper)
    text = md.read_text()
    assert text.startswith("# Robustness audit") and "commit:" in text and "(paper 55.5)" in text
    assert first["verdict"] in text and "worst case" in text and "p_y == 1.0" in text
    df = pd.read_csv(csv, comment="#")
    assert list(df.columns) == au.CSV_COLUMNS
    assert set(df.attack) >= {"clean", au.PAPER, "worst-case", "square"} and (df.model == pc["key"]).all()
    assert csv.read_text().startswith("# command:") and png.stat().st_size > 0
    # the cascade's attacked / broken counts are reported; with nothing broken no attack is called strongest
    attacked, broken = first["cascade_counts"]["apgd-ce"]["0.1"]
    assert f"| apgd-ce | {attacked} / {broken} |" in text and " |\n\nAdaptive attacks ran as a cascade" in text
    spent = {**first, "strongest_adaptive": None,
             "cascade_counts": {n: {"0.1": [0, 0]} for n in first["cascade"]}}
    text = au.write_audit_report([spent], tmp_path / "none", paper)[0].read_text()
    assert "| pgd-margin | 0 / 0 |" in text and text.count("none needed (no example survived") == 2


def test_entrypoint_config_and_report(runs, tmp_path):
    store, ce, pc = runs
    defaults = OmegaConf.load(CONFIG_DIR / "audit.yaml").audit
    assert OmegaConf.to_container(defaults.thresholds) == au.THRESHOLDS
    assert defaults.profile.pgd_steps == [10, 100, 1000] and defaults.profile.square_queries == 5000
    cfg = compose("audit", _overrides(store, tmp_path / "report"))
    out = au.audit(cfg)
    assert [a["run"] for a in out["audits"]] == [pc["key"], ce["key"]]  # the target, then its CE reference
    assert out["audits"][0]["transfer_source"] == ce["key"] and out["audits"][1]["transfer_source"] is None
    assert sorted(Path(f).name for f in out["files"]) == ["audit.csv", "audit.md", "audit_eps.png"]
    md = next(Path(f) for f in out["files"] if f.endswith("audit.md")).read_text()
    assert "<details><summary>resolved config</summary>" in md and f"store: {store}" in md
    assert md.index("resolved config") < md.index("## Verdicts")
    csv = next(Path(f) for f in out["files"] if f.endswith("audit.csv")).read_text()
    assert "# attack budgets: {" in csv and "# resolved config: in audit.md" in csv
    with pytest.raises(ValueError, match="unknown audit profile keys"):
        au._profile({"steps": 3})


def test_any_run_of_the_store_by_key_or_path(runs, tmp_path):
    store, ce, pc = runs
    over = [o for o in _overrides(store, tmp_path / "r") if not o.startswith(("loss=", "dataset=", "model="))]
    by_key = au.audit(compose("audit", [*over, f"audit.run={pc['key']}", "audit.include_reference=false"]))
    assert [a["run"] for a in by_key["audits"]] == [pc["key"]] and by_key["audits"][0]["reference_run"] == ce["key"]
    assert by_key["audits"][0]["method"] == "pclc"
    with pytest.raises(ValueError, match="no run at"):
        au.audit(compose("audit", [*over, f"audit.run={tmp_path / 'nothing'}"]))
