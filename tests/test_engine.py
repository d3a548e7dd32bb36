"""Our attack engine against advertorch as it ships: the same adversarial examples, bit for bit."""

from __future__ import annotations

import pytest
import torch

from pclc.attacks import ATTACKS, build_attack, engine
from pclc.attacks.paper import check_engine
from pclc.config import compose, group_config
from pclc.metrics import row_blocks
from pclc.models import create_model

# every registered attack our engine computes (the ones taking a backend), at small budgets
ENGINE_ATTACKS = sorted(n for n in ATTACKS if "backend" in ATTACKS.get(n).meta.get("runtime", ()))
SMALL = {
    "bim": {"nb_iter": 6},
    "pgd": {"nb_iter": 6},
    "mim": {"nb_iter": 6},
    "cw": {"max_iterations": 10, "binary_search_steps": 3, "learning_rate": 0.05},
}


class Counted(torch.nn.Module):
    """A model that counts the rows it is given (to see work saved)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


def _lenet(scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("lenet5", 10, 1, 28).eval()
    with torch.no_grad():
        m.head.weight *= scale  # margins > ~104: every softmax term underflows, the CE gradient is exactly 0
        m.head.bias *= scale
    return m.requires_grad_(False)


def _data(model, n: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(n) % 2 == 0, pred, torch.randint(0, 10, (n,), generator=g))
    return x, y  # half the labels are the model's own prediction (saturated rows), half random


def _both(name: str, model, x, y, eps, chunk=16, **over):
    cfg = {**group_config("attack", name), **SMALL.get(name, {}), **over}
    ref = build_attack(cfg, engine={"backend": "advertorch"})(model, x, y, eps, 1000)
    ours = build_attack(cfg, engine={"backend": "pclc", "chunk": chunk})(model, x, y, eps, 1000)
    return ref, ours


def test_the_engine_covers_every_paper_attack_but_spsa():
    assert ENGINE_ATTACKS == ["bim", "cw", "fgsm", "mim", "pgd"]


@pytest.mark.parametrize("name", ENGINE_ATTACKS)
@pytest.mark.parametrize("scale", [1.0, 3000.0])
def test_ours_equals_advertorch_bit_for_bit(name, scale):
    model = _lenet(scale)
    x, y = _data(model)
    eps = None if name == "cw" else 0.1
    ref, ours = _both(name, model, x, y, eps)
    assert torch.equal(ref, ours)
    assert not torch.equal(ref, x)  # the attack did move examples


@pytest.mark.parametrize(
    "name,over",
    [
        ("pgd", {"nb_iter": 5, "rel_eps_iter": 0.3, "eps_iter": None}),
        ("mim", {"decay_factor": 0.5}),
        ("bim", {"eps_iter": 0.05}),
        ("cw", {"max_iterations": 4, "binary_search_steps": 10}),
        ("cw", {"abort_early": False, "confidence": 2.0}),
    ],
)
def test_ours_equals_advertorch_at_other_settings(name, over):
    model = _lenet(50.0, seed=3)
    x, y = _data(model, n=40, seed=4)
    ref, ours = _both(name, model, x, y, None if name == "cw" else 0.3, chunk=None, **over)
    assert torch.equal(ref, ours)


def test_fixed_point_rows_leave_the_batch_without_changing_the_result():
    model = _lenet(3000.0)
    x, y = _data(model, n=64)
    counted = Counted(model)
    cfg = {**group_config("attack", "pgd"), "nb_iter": 8}
    ref = build_attack(cfg, engine={"backend": "advertorch"})(model, x, y, 0.1, 7)
    ours = build_attack(cfg, engine={"backend": "pclc", "chunk": 16})(counted, x, y, 0.1, 7)
    assert torch.equal(ref, ours)
    probe = 4 * min(len(x), engine.PROBE_ROWS) + engine.MIN_ROWS  # rows_independent's forward passes
    zero = (engine.ce_grad(model, x, y, None).flatten(1).abs().sum(1) == 0).sum().item()
    assert zero >= 16  # rows whose gradient is exactly zero at the start
    assert counted.rows - probe <= 8 * len(x) - 5 * zero  # they left the batch within three steps


class BatchCoupled(torch.nn.Module):
    """Rows depend on each other (a batch mean): blocks would change the numbers."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x - x.mean(0, keepdim=True) * 0.5)


def test_a_model_whose_rows_interact_runs_in_whole_batches_and_stays_exact():
    model = BatchCoupled(_lenet(30.0))
    x, y = _data(model)
    assert not engine.rows_independent(model, x, y, 16)
    assert engine.rows_independent(_lenet(30.0), x, y, 16)
    for name in ("fgsm", "pgd", "cw"):
        ref, ours = _both(name, model, x, y, None if name == "cw" else 0.2)
        assert torch.equal(ref, ours), name


def test_blocks_never_leave_a_block_smaller_than_min_rows():
    assert row_blocks(1000, 100) == [(i, i + 100) for i in range(0, 1000, 100)]
    blocks = row_blocks(205, 100)
    assert blocks == [(0, 100), (100, 205)] and all(b - a >= engine.MIN_ROWS for a, b in blocks)
    assert row_blocks(50, None) == [(0, 50)]


def test_engine_settings_are_checked_before_any_work():
    assert check_engine({}) == {"backend": "pclc", "chunk": "auto"}
    with pytest.raises(ValueError, match="attack.backend='foolbox'"):
        check_engine({"backend": "foolbox"})
    with pytest.raises(ValueError, match="attack.chunk=4 must be"):
        check_engine({"chunk": 4})
    with pytest.raises(ValueError, match="attack.chunks: unknown"):
        check_engine({"chunks": 100})
    cfg = compose("evaluate", ["dataset=fake", "logger=none", "attack.backend=advertorch"])
    assert check_engine(cfg.attack)["backend"] == "advertorch"
    repro = compose("reproduce", ["experiment=table1", "datasets=[fmnist]", "attack.backend=advertorch"])
    from pclc.experiment import eval_cfg, experiment_cells

    ec = eval_cfg(experiment_cells(repro)[0], repro, "table1")
    assert ec.attack.backend == "advertorch"  # reproduce hands it to every cell's evaluation


def test_cw_rows_with_zero_gradient_and_moments_skip_the_model_and_stay_exact():
    model = _lenet(30.0)
    x, y = _data(model, n=64)
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).sum().item()
    assert wrong >= 16  # misclassified at the start: zero gradient, zero Adam moments, a fixed point
    cfg = {
        **group_config("attack", "cw"),
        "max_iterations": 6,
        "binary_search_steps": 2,
        "abort_early": False,
    }
    counted = Counted(model)
    ref = build_attack(cfg, engine={"backend": "advertorch"})(model, x, y, None, 0)
    ours = build_attack(cfg, engine={"backend": "pclc", "chunk": 16})(counted, x, y, None, 0)
    assert torch.equal(ref, ours)
    probe = 4 * len(x) + engine.MIN_ROWS + 1  # rows_independent's passes, and one row for the class count
    assert counted.rows - probe <= 2 * (6 * len(x) - 5 * wrong)  # skipped after the first iteration of each step


def test_clean_metrics_and_predictions_in_row_blocks_are_the_whole_batches_bits():
    from pclc.data import DeviceData, Split
    from pclc.metrics import clean_metrics, forward_rows_independent, predict

    model = _lenet(30.0)
    x, y = _data(model, n=600)
    data = DeviceData(Split((x * 255).round().to(torch.uint8), y), "cpu")
    xs = data.x.float() / 255
    assert forward_rows_independent(model, xs, 100)  # so the blocks below are really used
    assert torch.equal(predict(model, xs, 512, chunk=100), predict(model, xs, 512, chunk=None))
    assert clean_metrics(model, data, 512, chunk=100) == clean_metrics(model, data, 512, chunk=None)
    coupled = BatchCoupled(model)  # blocks would change its logits: the probe says so and whole batches run
    with torch.no_grad():
        assert not torch.equal(coupled(xs[:300]), torch.cat([coupled(xs[:150]), coupled(xs[150:300])]))
    assert torch.equal(predict(coupled, xs, 300, chunk=100), torch.cat([coupled(xs[:300]), coupled(xs[300:])]))
    assert clean_metrics(coupled, data, 300, chunk=100) == clean_metrics(coupled, data, 300, chunk=None)
