"""Issue 31's adversarial-training baselines, as configs of the one adversarial-training mechanism: PGD-AT (Madry et
al.) and fast AT (Wong et al.), checked on a tiny problem."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pclc.config import compose
from pclc.experiment import make_cell, train_cfg
from pclc.train import build_adversary


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def _batch(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.rand((n, 1, 4, 4), generator=g), torch.randint(0, 3, (n,), generator=g)


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_pgd_at_replaces_every_example_inside_the_ball_and_is_stronger_than_fgsm():
    model, (x, y) = _model(), _batch()
    pgd = build_adversary(compose("train", ["trainer=pgd_at"]).trainer)
    fgsm = build_adversary(compose("train", ["trainer=adv_fgsm", "trainer.adversarial.fraction=1.0",
                                             "trainer.adversarial.eps_range=[0.1,0.1]"]).trainer)  # fmt: skip
    adv = pgd(model, x, y, torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and (adv - x).abs().amax() <= 0.1 + 1e-6 and (adv != x).flatten(1).any(1).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert (
        _loss(model, adv, y) > _loss(model, fgsm(model, x, y, torch.Generator().manual_seed(0)), y) > _loss(model, x, y)
    )
    assert model.training  # crafting leaves the model as it found it


def test_fast_at_starts_at_random_inside_the_ball():
    model, (x, y) = _model(), _batch()
    fast = build_adversary(compose("train", ["trainer=fast_at"]).trainer)
    a = fast(model, x, y, torch.Generator().manual_seed(0))
    b = fast(model, x, y, torch.Generator().manual_seed(1))
    assert (a - x).abs().amax() <= 0.1 + 1e-6 and not torch.equal(a, b)  # the start is random, the step 1.25 eps
    plain = x + 0.1 * torch.autograd.grad(F.cross_entropy(model(x.requires_grad_()), y, reduction="sum"), x)[0].sign()
    assert not torch.equal(a, plain.clamp(0, 1))  # not FGSM from the clean point


def test_the_baseline_methods_train_through_the_run_store_with_the_paper_protocol_otherwise():
    cfg = compose("reproduce", ["experiment=table1", "logger=none", "datasets=[fmnist]"])
    for method, attack, steps in (("ce+pgdat", "pgd", 10), ("pclc+pgdat", "pgd", 10), ("ce+fastat", "pgd", 1)):
        tc = train_cfg(make_cell(cfg, "fmnist", "lenet5", method), cfg)
        adv = tc.trainer.adversarial
        assert (adv.attack, adv.nb_iter, adv.fraction, list(adv.eps_range)) == (attack, steps, 1.0, [0.1, 0.1])
        assert tc.trainer.lr == 0.01 and tc.trainer.batch_size == 256  # the paper's schedule otherwise


def test_trades_with_beta_0_is_the_clean_loss_and_its_examples_stay_in_the_ball():
    model, (x, y) = _model(), _batch()
    for beta in (0.0, 6.0):
        trades = build_adversary(compose("train", ["trainer=trades", f"trainer.adversarial.beta={beta}"]).trainer)
        both = trades(model, x, y, torch.Generator().manual_seed(0))
        assert both.shape[0] == 2 * len(x) and torch.equal(both[: len(x)], x)
        assert (both[len(x) :] - x).abs().amax() <= 0.1 + 1e-6
        loss, clean = trades.loss(F.cross_entropy, model(both), y)
        ce = F.cross_entropy(model(x), y)
        assert torch.equal(clean, model(x))
        assert torch.allclose(loss, ce) if beta == 0 else loss > ce + 1e-4  # the KL term is there, and positive


def test_a_trades_run_trains_through_the_run_store(tmp_path):
    from pclc.train import train

    cfg = compose(
        "train",
        ["dataset=fake", "loss=pclc", "trainer=trades", "+profiles/train=tiny", f"store={tmp_path}", "logger=none"],
    )
    out = train(cfg)
    assert out["finished"] and (tmp_path / out["key"] / "model.pt").exists()
    assert out["epochs"] == 2  # the CE warm-up phase and the PC+LC phase, both with TRADES


def test_make_baselines_lists_every_method_at_its_seeds_under_autoattack():
    from pclc.experiment import experiment_cells

    cfg = compose("reproduce", ["experiment=baselines", "logger=none"])
    jobs = experiment_cells(cfg)
    seeds = {m: sorted(j.seed for j in jobs if j.method == m) for m in cfg.experiment.methods}
    assert seeds["pclc+pgdat"] == seeds["ce+trades"] == [0, 1, 2] and seeds["ce+at"] == [0]
    assert cfg.experiment.kind == "autoattack" and cfg.experiment.subset == 1000 and not any(j.arm for j in jobs)
    assert {j.trainer for j in jobs} == {"paper", "adv_fgsm", "pgd_at", "fast_at", "trades"}


def test_the_report_names_a_recipe_only_where_the_experiment_has_several():
    """Every baseline is its own method's config (no arm): a recipe column reading "paper" beside PGD-AT said it
    followed the paper's recipe. The AutoAttack experiment's arms (the GCE recipe) keep the column."""
    import pandas as pd

    from pclc.autoattack_report import to_markdown, verdict_lines

    row = {"method": "ce+pgdat", "recipe": "paper", "seed": 0, "run": "r0", "eps": 0.1, "clean_accuracy": 77.6,
           "autoattack": 66.5, "square_only": 0.6, "pgd_here": 68.6, "pgd_paper": None}  # fmt: skip
    judged = pd.DataFrame([{"method": "ce+pgdat", "recipe": "paper", "seed": 0, "run": "r0", "verdict": "v",
                            "reason": ""}])  # fmt: skip
    one = to_markdown(pd.DataFrame([row]), ["pgd"])
    assert (
        one[0].startswith("| method | ε |")
        and one[2] == "| ce+pgdat | 0.1 | 77.6 (n=1) | 66.5 (n=1) | 0.6 (n=1) | 68.6 (n=1) | — |"
    )
    assert len(one[1].split("|")) == len(one[0].split("|")) == len(one[2].split("|"))
    assert "| method | verdict (seeds) |" in verdict_lines(judged) and "(ce+pgdat, seed 0)" in verdict_lines(judged)[-3]
    two = pd.DataFrame([row, {**row, "recipe": "gce_recipe", "run": "r1"}])
    assert to_markdown(two, ["pgd"])[0].startswith("| method | recipe | ε |")
    assert "| ce+pgdat | gce_recipe | 0.1 |" in "\n".join(to_markdown(two, ["pgd"]))
    both = pd.concat([judged, judged.assign(recipe="gce_recipe", run="r1")])
    assert "| ce+pgdat | gce_recipe | v (1) |" in verdict_lines(both)
