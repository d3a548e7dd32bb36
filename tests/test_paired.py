"""Issue 31 item 4: the declared paired comparison behind README's row "PC+LC adds robustness to adversarial
training" (pclc/paired.py), on report rows built here."""

from __future__ import annotations

import pandas as pd
import pytest

from pclc.config import compose
from pclc.paired import check_comparisons, comparison_lines, outcome, paired


def _rows(values: dict[tuple[str, int], list[float]], recipe: str = "paper") -> pd.DataFrame:
    """Report rows: {(method, seed): AutoAttack accuracy at eps 0.1, 0.2, 0.3}."""
    return pd.DataFrame(
        [
            {"method": m, "recipe": recipe, "seed": s, "eps": e, "autoattack": a}
            for (m, s), accs in values.items()
            for e, a in zip((0.1, 0.2, 0.3), accs)
        ]
    )


def test_the_outcome_follows_the_interval_of_the_mean_difference():
    assert outcome([2.0, 2.5, 3.0]) == "yes"  # mean 2.5, half-width t(0.975, 2) 0.5 / sqrt 3 = 1.24
    assert outcome([-2.0, -2.5, -3.0]) == "no"
    assert outcome([2.0, -1.0, 3.0]) == "within noise"  # a mean of +1.3 that the seeds do not pin down
    assert outcome([9.0]) == "not judged: 1 paired seed" and outcome([]) == "not judged: 0 paired seeds"


def test_pairs_are_made_by_seed_on_the_papers_recipe_only():
    df = pd.concat(
        [
            _rows({("pclc+pgdat", 0): [70, 20, 1], ("pclc+pgdat", 1): [71, 21, 1], ("pclc+pgdat", 2): [90, 90, 90]}),
            _rows({("ce+pgdat", 0): [68, 20, 0], ("ce+pgdat", 1): [69, 22, 0]}),
            _rows({("ce+pgdat", 2): [0, 0, 0]}, recipe="other"),  # another recipe's seed 2 is no partner
        ]
    )
    p = paired(df, "pclc+pgdat", "ce+pgdat").set_index("eps")
    assert p.seeds.tolist() == ["0;1"] * 3  # seed 2 has no CE partner of the paper's recipe
    assert p.loc[0.1, "treated_mean"] == 70.5 and p.loc[0.1, "control_mean"] == 68.5 and p.loc[0.1, "difference"] == 2.0
    assert p.loc[0.1, "outcome"] == "yes" and p.loc[0.1, "ci95"] == 0.0  # both seeds +2: no spread
    assert p.loc[0.2, "outcome"] == "within noise"  # 0 and -1
    none = paired(df, "pclc+trades", "ce+trades")
    assert none.eps.tolist() == [0.1, 0.2, 0.3] and (none.outcome == "not judged: 0 paired seeds").all()


def test_the_report_states_the_declared_claim_and_every_pair():
    cfg = compose("reproduce", ["experiment=baselines", "logger=none"])
    df = _rows(
        {("pclc+pgdat", s): [72 - s, 20, 1] for s in range(3)} | {("ce+pgdat", s): [70, 21, 1] for s in range(3)}
    )
    lines = comparison_lines(df, cfg)
    assert lines[-1] == (
        "**Claim** (pclc+pgdat against ce+pgdat at ε 0.1): within noise: "
        "difference +1.0 [-1.5, +3.5] points over 3 seeds."
    )
    rows = [ln for ln in lines if ln.startswith("| pclc")]
    assert len(rows) == 3 * len(cfg.experiment.comparisons)  # every declared pair at every eps, judged or not
    assert "| pclc+trades | ce+trades | 0.1 | — | — | — | — | not judged: 0 paired seeds |" in rows
    better = df.assign(autoattack=df.autoattack + (df.method == "pclc+pgdat") * df.seed * 1.0 + 0.0)
    assert comparison_lines(better, cfg)[-1].startswith("**Claim** (pclc+pgdat against ce+pgdat at ε 0.1): yes:")


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiment.comparisons=[{treated: pclc+pgd, control: ce+pgdat}]", r"unknown method 'pclc\+pgd'"),
        ("experiment.claim={treated: pclc+trades, control: ce, eps: 0.1}", "is not one of experiment.comparisons"),
    ],
)
def test_a_comparison_that_cannot_be_judged_is_refused_before_any_work(tmp_path, override, message):
    from pclc.reproduce import reproduce

    cfg = compose("reproduce", ["experiment=baselines", "logger=none", f"store={tmp_path}/runs", override])
    with pytest.raises(ValueError, match=message):
        check_comparisons(cfg)
    with pytest.raises(ValueError, match=message):
        reproduce(cfg)
    assert not any(tmp_path.iterdir())  # nothing written
