"""Robustness audit (pclc.audit) on tiny models trained on synthetic data, with tiny attack budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

import pclc.audit as au
import pclc.audit.run as au_run
from pclc.attacks import linf
from pclc.audit.checks import checks, explain_verdict, named
from pclc.config import compose
from pclc.data import eval_tensors
from pclc.store import RunDir, load_run
from pclc.train import train

BASE = ["dataset=fake", "model=lenet5", "logger=none", "trainer.epochs_per_phase=2"]
EPS = [0.1]
SUBSET = 60
LADDER = "{group: steps, attack: {_target_: pclc.attacks.adaptive.ce_pgd, nb_iter: %d, rel_eps_iter: %g}}"
TINY = [
    "audit.profile.batch_size=64",
    "audit.profile.sweep_max_eps=0.2",
    "audit.attacks.pgd-paper.attack.nb_iter=8",
    "~audit.attacks.pgd-ce-10",
    "~audit.attacks.pgd-ce-100",
    "~audit.attacks.pgd-ce-1000",
    f"+audit.attacks.pgd-ce-2={LADDER % (2, 1.25)}",
    f"+audit.attacks.pgd-ce-4={LADDER % (4, 0.625)}",
    "audit.attacks.pgd-margin.attack.nb_iter=10",
    "audit.attacks.pgd-margin.attack.restarts=2",
    "audit.attacks.pgd-ce-temp.attack.nb_iter=10",
    "audit.attacks.apgd-ce.attack.nb_iter=8",
    "audit.attacks.apgd-ce.attack.restarts=1",
    "audit.attacks.apgd-dlr.attack.nb_iter=8",
    "audit.attacks.apgd-dlr.attack.restarts=1",
    "audit.attacks.apgdt.attack.nb_iter=4",
    "audit.attacks.apgdt.attack.targets=2",
    "audit.attacks.square.attack.queries=20",
    "audit.attacks.autoattack.attack.version=custom",
    "+audit.attacks.autoattack.attack.nb_iter=4",
    "+audit.attacks.autoattack.attack.targets=2",
    "+audit.attacks.autoattack.attack.queries=20",
    "audit.attacks.transfer-pgd.attack.nb_iter=5",
    "audit.attacks.transfer-pgd.attack.rel_eps_iter=0.5",
]
S = au.audit_settings(compose("audit", [*BASE, *TINY]))  # attacks, profile, thresholds of the tiny audit
ATTACKS, PROFILE, TH = S["attacks"], S["profile"], S["thresholds"]
PAPER = "pgd-paper"


def model_audit(model, x, y, eps, cache, profile=None, **kw):
    return au.audit_model(model, x, y, eps, ATTACKS, profile or PROFILE, TH, cache, **kw)


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine's cores are shared; one thread avoids oversubscription (no effect on results). The count
    is restored after: a module-scoped fixture of the next test file would otherwise train at one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    x, y = eval_tensors(cfg.dataset, SUBSET, "cpu")
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
    specs = au.attack_specs(ATTACKS, 10, ("pclc", source))
    assert [s.name for s in specs] == [
        "fgsm",
        PAPER,
        "pgd-ce-2",
        "pgd-ce-4",
        "pgd-margin",
        "pgd-ce-temp",
        "apgd-ce",
        "apgd-dlr",
        "apgdt",
        "square",
        "autoattack",
        "transfer-pgd",
    ]  # by group
    eps = 0.1
    for s in specs:
        before = x.clone()
        adv = s.attack(model, x, y, eps, 3)
        assert torch.equal(x, before), f"{s.name} modified its input"
        assert adv.shape == x.shape
        assert (adv - x).abs().max() <= eps + 1e-6, s.name
        assert adv.min() >= 0 and adv.max() <= 1, s.name
        again = s.attack(model, x, y, eps, 3)
        assert torch.equal(adv, again), f"{s.name} is not reproducible with a fixed seed"
    names = {k: {s.name for s in au.attack_specs(ATTACKS, k)} for k in (2, 3)}
    assert "apgd-dlr" not in names[2] and "apgd-dlr" in names[3] and "apgdt" not in names[3]  # DLR: K >= 3, 4


@pytest.mark.parametrize("loss", ["ce", "cw", "temp"])
def test_dropping_fooled_examples_changes_no_result(ce_data, loss):
    model, x, y = ce_data
    kw = {
        "ce": {},
        "cw": {"loss": linf.margin_loss},
        "temp": {"temperature": torch.linspace(1, 3, len(x))[:, None]},
    }[loss]
    runs = {}
    for every in (0, 3):
        torch.manual_seed(5)
        runs[every] = linf.sign_pgd(model, x, y, 0.15, 12, 0.02, keep_first=True, compact_every=every, **kw)
    with torch.no_grad():
        fooled = {k: model(v).argmax(1) != y for k, v in runs.items()}
    assert 0 < int(fooled[0].sum()) < len(y)  # some examples leave the batch early, some stay to the end
    assert torch.equal(fooled[0], fooled[3]) and torch.allclose(runs[0], runs[3], atol=1e-6)


def test_worst_case_needs_every_attack_to_fail():
    per_attack = {
        "clean": torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool),
        "a": torch.tensor([1, 0, 1, 1, 1], dtype=torch.bool),
        "b": torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool),
    }
    assert au.worst_case(per_attack).tolist() == [True, False, False, False, True]


def test_eps_sweep_extends_until_zero():
    calls = []

    def correct_at(eps):
        calls.append(eps)
        return torch.tensor([eps < 0.35, eps < 0.15, False, False])

    out = au_run.eps_sweep(correct_at, [0.1, 0.2], max_eps=1.0)
    assert out == {"eps": [0.1, 0.2, 0.4], "accuracy": [50.0, 25.0, 0.0]} and calls == [0.1, 0.2, 0.4]


@pytest.mark.slow
def test_masked_model_is_flagged_and_broken(ce_data, tmp_path):
    ce, x, y = ce_data
    masked = Masked(ce)
    probe = au.saturation_probe(masked, x, y)
    clean = (masked(x).argmax(1) == y).float().mean().item()
    assert clean > 0.4
    assert probe["share_p_y_one"] >= 0.9 * clean and probe["share_zero_grad"] >= 0.9 * clean
    assert au.saturation_probe(ce, x, y)["share_zero_grad"] == 0.0

    reference = au_run.reference_level(ce, x, y, EPS, ATTACKS, PROFILE, tmp_path / "ce")
    # each attack on every example: the CE attacks find no gradient, the margin-loss attacks break it
    alone = model_audit(masked, x, y, EPS, tmp_path / "masked", {**PROFILE, "cascade": False}, reference=reference)
    acc = {n: d["0.1"] for n, d in alone.accuracy.items()}
    adaptive = min(acc["pgd-margin"], acc["apgd-dlr"])
    assert acc[PAPER] - adaptive > 20 and acc["apgd-ce"] - adaptive > 20
    assert alone.cascade == [] and alone.strongest_adaptive in ("pgd-margin", "apgd-dlr", "apgdt", "square")
    # the cascade (default) reaches the same verdict
    for out in (alone, model_audit(masked, x, y, EPS, tmp_path / "masked", reference=reference)):
        assert out.worst_case["0.1"] <= reference[0.1] + 10
        assert out.verdict == "artefact of gradient masking", out.verdict_reason
        assert out.flags["paper_attack_overestimates_robustness"]
        json.dumps(out.to_dict())  # JSON-ready
    assert out.cascade == ["pgd-margin", "pgd-ce-temp", "apgd-ce", "apgd-dlr", "apgdt"]
    assert out.strongest_adaptive in (
        "pgd-margin",
        "apgd-dlr",
    )  # margin losses break what CE attacks could not


@pytest.mark.slow
def test_cascade_attacks_only_survivors_and_nests_eps(ce_data, tmp_path):
    model, x, y = ce_data
    out = model_audit(model, x, y, [0.05, 0.1], tmp_path)
    files = {(d["attack"], d["eps"]): d for d in (json.loads(f.read_text()) for f in tmp_path.glob("*.json"))}
    alive = None
    for e in (0.05, 0.1):
        before = au.worst_case(
            {
                "clean": torch.tensor(files[("fgsm", e)]["correct"]) | True,
                **{
                    n: torch.tensor(files[(n, e)]["correct"], dtype=torch.bool)
                    for n in out.accuracy
                    if n not in out.cascade
                },
            }
        )
        if alive is not None:
            before &= alive  # broken at the smaller eps: not attacked again
        for n in out.cascade:
            d = files[(n, e)]
            after = torch.tensor(d["correct"], dtype=torch.bool)
            assert d["attacked"] == int(before.sum()) and not bool((after & ~before).any())
            assert out.cascade_counts[n][f"{e:g}"] == [int(before.sum()), int(before.sum() - after.sum())]
            assert out.accuracy[n][f"{e:g}"] == pytest.approx(100 * after.double().mean().item())
            before = after
        alive = before
        assert out.worst_case[f"{e:g}"] == pytest.approx(100 * alive.double().mean().item())
    assert out.worst_case["0.1"] <= out.worst_case["0.05"]
    # the sweep runs the cascade past the grid on what survived; it ends at 0 or at sweep_max_eps
    sweep = out.sweeps[au.CASCADE]
    assert sweep["eps"][:2] == [0.05, 0.1] and sweep["accuracy"][:2] == [
        out.worst_case["0.05"],
        out.worst_case["0.1"],
    ]
    assert sweep["accuracy"][-1] == 0.0 or sweep["eps"][-1] == PROFILE["sweep_max_eps"]


def test_transfer_examples_are_crafted_once_per_source(ce_data, runs, tmp_path, monkeypatch):
    ce, x, y = ce_data
    store, _, pc = runs
    _, pclc = load_run(RunDir(store, pc["key"]), torch.device("cpu"))
    import pclc.attacks.adaptive as adaptive

    crafted, real = [], adaptive.sign_pgd
    monkeypatch.setattr(adaptive, "sign_pgd", lambda m, *a, **k: crafted.append(len(a[0])) or real(m, *a, **k))
    spec = next(s for s in au.attack_specs(ATTACKS, 10, ("ce", ce, tmp_path / "adv")) if s.name == "transfer-pgd")
    first = au_run.attack_correct(pclc, x, y, spec.attack, 0.1, 25)
    assert crafted == [25, 25, 10] and len(list((tmp_path / "adv").glob("transfer-pgd-*.pt"))) == 3
    again = au_run.attack_correct(pclc, x, y, spec.attack, 0.1, 25)
    on_ce = au_run.attack_correct(ce, x, y, spec.attack, 0.1, 25)
    assert crafted == [25, 25, 10] and torch.equal(first, again)  # read back, not crafted again
    uncached = next(s for s in au.attack_specs(ATTACKS, 10, ("ce", ce)) if s.name == "transfer-pgd")
    fresh = au_run.attack_correct(pclc, x, y, uncached.attack, 0.1, 25)
    assert torch.equal(first, fresh) and not torch.equal(on_ce, first)


def test_verdict_rules():
    base = {"eps": 0.1, "paper_accuracy": 60.0, "reference_accuracy": 5.0, "near_reference": True}
    assert au.verdict({**base, "worst_case_accuracy": 58.0, "drop": 2.0, "masking_signs": ["x"]}, TH) == au.VERDICTS[0]
    assert au.verdict({**base, "worst_case_accuracy": 40.0, "drop": 20.0, "masking_signs": []}, TH) == au.VERDICTS[1]
    assert au.verdict({**base, "worst_case_accuracy": 8.0, "drop": 52.0, "masking_signs": ["x"]}, TH) == au.VERDICTS[2]
    far = {**base, "worst_case_accuracy": 40.0, "drop": 20.0, "masking_signs": ["x"], "near_reference": False}
    assert au.verdict(far, TH) == au.VERDICTS[1]
    assert (
        au.verdict(
            {**base, "worst_case_accuracy": 8.0, "drop": 52.0, "masking_signs": ["x"]},
            {**TH, "masking_drop": 60.0},
        )
        == au.VERDICTS[1]
    )  # the YAML's thresholds decide


GROUPS = {
    "fgsm": "single-step",
    "pgd-paper": "paper",
    "pgd-ce-10": "steps",
    "pgd-ce-100": "steps",
    "square": "black-box",
    "transfer-pgd": "transfer",
    "pgd-margin": "adaptive (cascade)",
}


def test_sanity_flags_on_numbers():
    """Carlini et al.'s checks on hand-made accuracies (no model): a masked profile and a healthy one."""
    masked = {
        "fgsm": {0.1: 40.0},
        "pgd-paper": {0.1: 45.0},
        "pgd-ce-10": {0.1: 30.0},
        "pgd-ce-100": {0.1: 35.0},
        "square": {0.1: 3.0},
        "transfer-pgd": {0.1: 60.0},
        "pgd-margin": {0.1: 1.0},
    }
    sweeps = {
        "pgd-paper": {"eps": [0.1, 0.2], "accuracy": [45.0, 4.0]},
        "adaptive-cascade": {"eps": [0.1, 0.2], "accuracy": [0.5, 4.0]},
    }
    flags = {k: v[0] for k, v in checks(masked, {0.1: 0.5}, sweeps, GROUPS, TH).items()}
    assert flags == {
        "iterative_beats_single_step": False,
        "white_box_beats_black_box": False,
        "white_box_beats_transfer": True,
        "accuracy_reaches_zero": False,
        "more_steps_change_nothing": False,
        "paper_attack_overestimates_robustness": True,
    }
    healthy = {
        "fgsm": {0.1: 40.0},
        "pgd-paper": {0.1: 10.0},
        "pgd-ce-10": {0.1: 10.4},
        "pgd-ce-100": {0.1: 10.0},
        "square": {0.1: 12.0},
        "transfer-pgd": {0.1: 60.0},
        "pgd-margin": {0.1: 9.0},
    }
    ok = checks(healthy, {0.1: 8.0}, {"adaptive-cascade": {"eps": [0.1, 0.8], "accuracy": [8.0, 0.0]}}, GROUPS, TH)
    assert all(v[0] == au.HEALTHY[k] for k, v in ok.items()), ok
    assert "spread over pgd-ce-10, pgd-ce-100: 0.4 points" in ok["more_steps_change_nothing"][1]
    assert named(GROUPS, "adaptive") == ["pgd-margin"]
    evidence = au.verdict_evidence(
        {"share_zero_grad": 0.0, "share_p_y_one": 0.0}, masked, {0.1: 0.5}, flags, GROUPS, TH, {0.1: 0.0}
    )
    assert evidence["drop"] == 44.5 and evidence["masking_signs"] == [
        "sanity flag iterative_beats_single_step is False",
        "sanity flag white_box_beats_black_box is False",
    ]
    assert au.verdict(evidence, TH) == "artefact of gradient masking"


def _overrides(store: Path, out: Path) -> list[str]:
    return [
        *BASE,
        "loss=pclc",
        f"store={store}",
        f"audit.eps={EPS}",
        f"audit.subset={SUBSET}",
        f"audit.out_dir={out}",
        *TINY,
    ]


@pytest.mark.slow
def test_audit_run_caches_and_reports(runs, tmp_path, monkeypatch):
    store, ce, pc = runs
    run, ref = RunDir(store, pc["key"]), RunDir(store, ce["key"])
    first = au.audit_run(run, torch.device("cpu"), ATTACKS, PROFILE, TH, EPS, ref, SUBSET)
    cached = sorted(p.name for p in (run.path / "audit").glob("*.json"))
    assert any(n.startswith("transfer-pgd-eps0.1-sub60-") for n in cached) and len(cached) >= 11

    def boom(*a, **k):
        raise AssertionError("an attack ran although its result is cached")

    monkeypatch.setattr(au_run, "attack_correct", boom)
    # one cached result computed on another machine (a zoo record, pclc.records): the report names both machines
    other = "cpu (Other CPU, AVX2, 2 threads)"
    moved = run.path / "audit" / next(n for n in cached if n.startswith("square-"))
    d = json.loads(moved.read_text())
    moved.write_text(json.dumps({**d, "provenance": {**d["provenance"], "device": other}}))
    second = au.audit_run(run, torch.device("cpu"), ATTACKS, PROFILE, TH, EPS, ref, SUBSET)
    assert second.accuracy == first.accuracy and second.verdict == first.verdict
    here = first.provenance["device"]
    assert first.provenance["attack_devices"] == [here] and second.provenance["attack_devices"] == sorted([here, other])
    assert (
        f"- device: {', '.join(sorted([here, other]))}"
        in au.write_audit_report([second], tmp_path / "2")[0].read_text()
    )
    assert first.verdict in au.VERDICTS and first.reference_run == ce["key"]

    paper = [
        {
            "dataset": "fake",
            "model": "lenet5",
            "method": "pclc",
            "attack": "pgd",
            "param": "0.1",
            "accuracy": 55.5,
        }
    ]
    md, csv, png, robust = au.write_audit_report([first], tmp_path, paper)
    rb = json.loads(
        robust.read_text()
    )  # RobustBench's record (pclc.robustbench, the schema experiment=autoattack writes)
    assert robust.name == f"{pc['key']}.json" and rb["weights"] == run.read_summary()["weights"]
    assert robust.parent == tmp_path / "audit"  # not autoattack/: experiment=autoattack's records of the same models
    assert (
        rb["run"] == pc["key"]
        and rb["threat_model"] == "Linf"
        and rb["attack"] == dict(ATTACKS["autoattack"]["attack"])
    )
    assert rb["name"] == (first.method or first.loss)  # not a zoo run: named by its method (a zoo run by its zoo name)
    assert rb["eps"] == {
        "0.1": {
            "clean_acc": first.clean_accuracy,
            "autoattack_acc": first.accuracy["autoattack"]["0.1"],
            "reported": 55.5,
            "paper_attacks_here": {"pgd": first.accuracy["pgd-paper"]["0.1"]},
            "n": first.n,
        }
    }
    text = md.read_text()
    assert text.startswith("# Robustness audit") and "commit:" in text and "(paper 55.5)" in text
    assert first.verdict in text and "worst case" in text and "p_y == 1.0" in text
    df = pd.read_csv(csv, comment="#")
    assert list(df.columns) == au.CSV_COLUMNS
    assert set(df.attack) >= {"clean", PAPER, "worst-case", "square"} and (df.model == pc["key"]).all()
    assert csv.read_text().startswith("# command:") and png.stat().st_size > 0
    # the cascade's attacked / broken counts are reported; with nothing broken no attack is called strongest
    attacked, broken = first.cascade_counts["apgd-ce"]["0.1"]
    assert f"| apgd-ce | {attacked} / {broken} |" in text and " |\n\nAdaptive attacks ran as a cascade" in text
    spent = au.AuditResult(
        **{
            **first.to_dict(),
            "strongest_adaptive": None,
            "cascade_counts": {n: {"0.1": [0, 0]} for n in first.cascade},
        }
    )
    text = au.write_audit_report([spent], tmp_path / "none", paper)[0].read_text()
    assert "| pgd-margin | 0 / 0 |" in text and text.count("none needed (no example survived") == 2


@pytest.mark.slow
def test_entrypoint_config_and_report(runs, tmp_path):
    store, ce, pc = runs
    defaults = compose("audit").audit
    assert named({n: a.group for n, a in defaults.attacks.items()}, "steps") == [
        "pgd-ce-10",
        "pgd-ce-100",
        "pgd-ce-1000",
    ]
    assert defaults.attacks.square.attack.queries == 5000 and defaults.thresholds.masking_drop == 10.0
    assert OmegaConf.to_container(defaults.attacks["pgd-paper"].attack) == OmegaConf.to_container(
        compose("evaluate").suite.attacks.pgd
    )  # the audited PGD is exactly Table 1's
    cfg = compose("audit", _overrides(store, tmp_path / "report"))
    out = au.audit(cfg)
    assert [a.run for a in out["audits"]] == [pc["key"], ce["key"]]  # the target, then its CE reference
    assert out["audits"][0].transfer_source == ce["key"] and out["audits"][1].transfer_source is None
    assert sorted(Path(f).name for f in out["files"])[:3] == ["audit.csv", "audit.md", "audit_eps.png"]
    md = next(Path(f) for f in out["files"] if f.endswith("audit.md")).read_text()
    assert "<details><summary>resolved config</summary>" in md and f"store: {store}" in md
    assert md.index("## Verdicts") < md.index("<details><summary>resolved config")  # the reader's part first
    csv = next(Path(f) for f in out["files"] if f.endswith("audit.csv")).read_text()
    assert "# attack budgets: {" in csv and "# resolved config: in audit.md" in csv
    with pytest.raises(ValueError, match="unknown parameter.*steps"):  # a misspelt budget is refused
        au.attack_specs(
            {
                **ATTACKS,
                "pgd-margin": {
                    "group": "adaptive",
                    "attack": {**ATTACKS["pgd-margin"]["attack"], "steps": 3},
                },
            },
            10,
        )
    with pytest.raises(ValueError, match="unknown group"):
        au.attack_specs({**ATTACKS, "x": {"group": "strong", "attack": ATTACKS["fgsm"]["attack"]}}, 10)


@pytest.mark.slow
def test_any_run_of_the_store_by_key_or_path(runs, tmp_path):
    store, ce, pc = runs
    over = [o for o in _overrides(store, tmp_path / "r") if not o.startswith(("loss=", "dataset=", "model="))]
    by_key = au.audit(compose("audit", [*over, f"audit.run={pc['key']}", "audit.include_reference=false"]))
    assert [a.run for a in by_key["audits"]] == [pc["key"]] and by_key["audits"][0].reference_run == ce["key"]
    assert by_key["audits"][0].method == "pclc"
    with pytest.raises(ValueError, match="no run at"):
        au.audit(compose("audit", [*over, f"audit.run={tmp_path / 'nothing'}"]))


def test_the_audit_reference_keeps_the_runs_schedule_and_is_the_run_reproduce_derives():
    """One derivation (pclc.derived.audit_reference) for `python -m pclc.audit` and `experiment=audit`: an
    adversarially trained run with a shortened schedule gets a plain CE reference with that schedule (swapping the
    whole trainer group, as the CLI did, dropped the override and trained a 50-epoch-per-phase reference)."""
    from pclc.config import compose
    from pclc.derived import audit_reference
    from pclc.store import run_key

    over = ["dataset=fmnist", "model=lenet5", "trainer.epochs_per_phase=3", "logger=none"]
    at = compose("train", [*over, "loss=pclc", "trainer=adv_fgsm"])
    ref = audit_reference(at, "ce")
    assert ref.trainer.epochs_per_phase == 3 and ref.trainer.get("adversarial") is None and ref.loss.name == "ce"
    assert run_key(ref) == run_key(compose("train", [*over, "loss=ce", "trainer=paper"]))
    plain_ce = compose("train", [*over, "loss=ce"])
    assert audit_reference(plain_ce, "ce") is None and audit_reference(at, None) is None


def test_the_unbounded_check_judges_the_adaptive_sweep_not_the_papers_pgd():
    """Issue 30: the paper's PGD moves at most 40 x 0.01 whatever eps is, so its sweep cannot reach 0% and must not
    decide the check (CE+AT rose from 0.2% to 0.6% between eps 0.3 and 1 under it); the adaptive sweep, whose steps
    scale with eps, must reach 0%."""
    acc = {"fgsm": {0.3: 40.0}, "pgd-paper": {0.3: 0.2}, "pgd-margin": {0.3: 0.0}}
    groups = {"fgsm": "single-step", "pgd-paper": "paper", "pgd-margin": "adaptive (cascade)"}
    paper_stuck = {"eps": [0.3, 0.6, 1.0], "accuracy": [0.2, 0.4, 0.6]}
    reaches = checks(
        acc,
        {0.3: 0.0},
        {"pgd-paper": paper_stuck, "adaptive-cascade": {"eps": [0.3, 0.6], "accuracy": [0.0, 0.0]}},
        groups,
        TH,
    )
    ok, note = reaches["accuracy_reaches_zero"]
    assert ok and "pgd-paper 0.6% at eps 1 (not judged)" in note
    stuck = {"eps": [0.3, 0.6, 1.0], "accuracy": [3.0, 3.0, 3.0]}
    assert not checks(acc, {0.3: 0.0}, {"pgd-paper": paper_stuck, "adaptive-cascade": stuck}, groups, TH)[
        "accuracy_reaches_zero"
    ][0]


def test_a_model_with_no_robustness_is_never_confirmed_and_catastrophic_overfitting_is_named():
    """Issue 30: CE+AT's profile (FGSM 84.8%, the paper's PGD 2.2%, worst case 0.0% at every eps) was "robustness
    confirmed"; it has no robustness, and on an FGSM-trained model that gap is catastrophic overfitting."""
    acc = {
        "fgsm": {0.1: 84.8, 0.2: 80.0, 0.3: 75.0},
        "pgd-paper": {0.1: 2.2, 0.2: 0.6, 0.3: 0.2},
        "pgd-margin": {0.1: 0.0, 0.2: 0.0, 0.3: 0.0},
    }
    groups = {"fgsm": "single-step", "pgd-paper": "paper", "pgd-margin": "adaptive (cascade)"}
    worst = {0.1: 0.0, 0.2: 0.0, 0.3: 0.0}
    probe = {"share_zero_grad": 0.0, "share_p_y_one": 0.0}
    ev = au.verdict_evidence(probe, acc, worst, {}, groups, TH, None, trained_with="fgsm")
    assert au.verdict(ev, TH) == "no robustness"
    assert ev["catastrophic_overfitting"].startswith("catastrophic overfitting: an FGSM-trained model")
    assert ev["signals"][:2] == [ev["catastrophic_overfitting"], "the worst case is at most 0.0% at every eps"]
    reason = explain_verdict(ev, au.verdict(ev, TH))
    assert (
        reason.startswith("no robustness — catastrophic overfitting:") and "Signals that fired: catastrophic" in reason
    )
    plain = au.verdict_evidence(probe, acc, worst, {}, groups, TH, None)  # not FGSM-trained: no such signal
    assert plain["catastrophic_overfitting"] is None and au.verdict(plain, TH) == "no robustness"
    robust = au.verdict_evidence(probe, acc, {0.1: 1.5, 0.2: 0.0, 0.3: 0.0}, {}, groups, TH, None)
    assert robust["drop"] <= TH["overestimate"] and au.verdict(robust, TH) == "robustness confirmed"


def test_an_attack_whose_package_is_missing_is_refused_before_any_work(monkeypatch):
    """Issue 32: without torchattacks the audit failed after its first attacks had run, with a traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchattacks" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"attack apgd needs the torchattacks package, which is not installed: pip"):
        au.attack_specs(ATTACKS, 10)
    from pclc.attacks.suite import expand_suite

    cfg = compose("evaluate", ["attack/suite=table1"])
    assert expand_suite(cfg.suite, cfg.dataset)  # the paper's attacks need nothing more


def test_a_robustbench_record_is_the_schema_or_nothing():
    from pclc import robustbench

    good = {"clean_acc": 90.0, "autoattack_acc": 1.0, "reported": None, "paper_attacks_here": {"pgd": 5.0}, "n": 10}
    rec = robustbench.record(
        name="m", run="k", weights="w", dataset="d", architecture="a", per_eps={0.2: good, 0.1: good}, provenance=["p"]
    )
    assert list(rec["eps"]) == ["0.1", "0.2"] and rec["eps"]["0.1"] == good and rec["threat_model"] == "Linf"
    with pytest.raises(ValueError, match="eps 0.1: keys"):  # the audit's old "paper_attack_acc" is not the schema
        robustbench.record(
            name="m",
            run="k",
            weights="w",
            dataset="d",
            architecture="a",
            per_eps={0.1: {**{k: v for k, v in good.items() if k != "paper_attacks_here"}, "paper_attack_acc": 5.0}},
            provenance=[],
        )
