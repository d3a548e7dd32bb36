"""Figure analyses: predictive behaviour (Fig. 2), t-SNE of features (Fig. 1, 3), probability gaps."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from pclc.analysis import (
    behaviour,
    behaviour_from_eval_files,
    embed,
    gap_stats,
    gaps,
    newly_successful,
    penultimate_features,
    plot_behaviour,
    plot_gaps,
    plot_tsne,
    probability_gaps,
    tsne,
    tsne_panels,
)
from pclc.attacks import attack_config, build_attack
from pclc.config import compose
from pclc.data import load_splits
from pclc.metrics import probability_gap
from pclc.store import RunDir, load_run
from pclc.train import train

PNG = b"\x89PNG\r\n\x1a\n"

# Six examples; example 5 is misclassified when clean and never counts. Grid given out of order.
LABEL = [0, 1, 2, 3, 4, 5]
CLEAN = [0, 1, 2, 3, 4, 9]
TOP5 = [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [3, 4, 5, 6, 7], [4, 5, 6, 7, 8], [9, 5, 0, 1, 2]]
ADV = {
    0.05: [0, 1, 2, 3, 4, 5],  # nothing fooled
    0.1: [1, 1, 2, 3, 4, 5],  # ex0 -> its rank 2
    0.2: [1, 3, 2, 9, 4, 0],  # ex0 still wrong (not new); ex1 -> rank 3; ex3 -> outside top 5; ex5 excluded
    0.3: [0, 4, 5, 7, 8, 0],  # ex0 back to correct; ex1, ex3 still wrong; ex2 -> rank 4; ex4 -> rank 5
    0.4: [2, 4, 5, 7, 8, 0],
}  # ex0 fooled again after being correct -> new again, rank 3
EXPECTED = [
    {"eps": 0.05, "count": 0, "rank2": 0.0, "rank3": 0.0, "rank4": 0.0, "rank5": 0.0, "other": 0.0},
    {"eps": 0.1, "count": 1, "rank2": 1.0, "rank3": 0.0, "rank4": 0.0, "rank5": 0.0, "other": 0.0},
    {"eps": 0.2, "count": 2, "rank2": 0.0, "rank3": 0.5, "rank4": 0.0, "rank5": 0.0, "other": 0.5},
    {"eps": 0.3, "count": 2, "rank2": 0.0, "rank3": 0.0, "rank4": 0.5, "rank5": 0.5, "other": 0.0},
    {"eps": 0.4, "count": 1, "rank2": 0.0, "rank3": 1.0, "rank4": 0.0, "rank5": 0.0, "other": 0.0},
]


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """t-SNE's OpenMP threads spin-wait for ages on busy shared cores; one thread is fast at this size."""
    with threadpool_limits(1):
        yield


def assert_rows(rows, expected):
    assert len(rows) == len(expected)
    for r, e in zip(rows, expected):
        assert r == pytest.approx(e)


def check_png(path, height, width):
    assert path.read_bytes()[:8] == PNG
    assert mpimg.imread(path).shape[:2] == (height, width)


def test_newly_successful_hand_built_example():
    grid = [(e, ADV[e]) for e in (0.3, 0.05, 0.4, 0.1, 0.2)]
    assert_rows(newly_successful(LABEL, CLEAN, TOP5, grid), EXPECTED)


def test_newly_successful_with_fewer_than_five_classes_and_bad_input():
    rows = newly_successful([0, 1], [0, 1], [[0, 1, 2], [1, 2, 0]], [(0.1, [2, 2])])
    assert rows[0] == pytest.approx(
        {"eps": 0.1, "count": 2, "rank2": 0.5, "rank3": 0.5, "rank4": 0.0, "rank5": 0.0, "other": 0.0}
    )
    with pytest.raises(ValueError, match="duplicate"):
        newly_successful([0], [0], [[0, 1]], [(0.1, [1]), (0.1, [1])])
    with pytest.raises(ValueError):
        newly_successful([0, 1], [0, 1], [[0, 1], [1, 0]], [(0.1, [1])])


def test_shares_sum_to_one_when_count_is_positive():
    g = np.random.default_rng(0)
    n, k = 500, 10
    label = g.integers(0, k, n)
    clean = np.where(g.random(n) < 0.9, label, g.integers(0, k, n))
    offsets = np.argsort(g.random((n, k - 1)), 1)[:, :4] + 1  # 4 distinct non-zero class offsets per row
    top5 = (label[:, None] + np.hstack([np.zeros((n, 1), int), offsets])) % k
    grid = [(e, np.where(g.random(n) < e, g.integers(0, k, n), label).tolist()) for e in (0.1, 0.2, 0.4, 0.8)]
    rows = newly_successful(label.tolist(), clean.tolist(), top5.tolist(), grid)
    assert all(r["count"] > 0 for r in rows)
    for r in rows:
        assert sum(r[f"rank{i}"] for i in (2, 3, 4, 5)) + r["other"] == pytest.approx(1.0)
        assert all(0.0 <= r[key] <= 1.0 for key in ("rank2", "rank3", "rank4", "rank5", "other"))


def write_eval(path, eps, adv, run="r1", attack="fgsm", n=6):
    rec = {"label": LABEL, "clean_pred": CLEAN, "clean_top5": TOP5, "adv_pred": adv}
    path.write_text(
        json.dumps(
            {
                "run": run,
                "substitute": None,
                "subset": None,
                "clean_accuracy": 83.3,
                "device": "cpu",
                "provenance": {},
                "attack": attack,
                "kind": attack,
                "eps": eps,
                "source": "white",
                "params": {},
                "n": n,
                "seconds": 0.1,
                "adv_accuracy": 0.0,
                "max_linf": eps,
                "records": rec,
            }
        )
    )
    return path


def test_behaviour_from_eval_files(tmp_path):
    paths = [write_eval(tmp_path / f"white-fgsm-eps{e:g}.json", e, ADV[e]) for e in (0.4, 0.1, 0.05, 0.3, 0.2)]
    assert_rows(behaviour_from_eval_files(paths), EXPECTED)
    other_run = write_eval(tmp_path / "other-run.json", 0.5, ADV[0.4], run="r2")
    with pytest.raises(ValueError, match="run"):
        behaviour_from_eval_files([*paths, other_run])
    other_attack = write_eval(tmp_path / "other-attack.json", 0.5, ADV[0.4], attack="mim")
    with pytest.raises(ValueError, match="attack"):
        behaviour_from_eval_files([paths[0], other_attack])
    with pytest.raises(ValueError, match="n is"):
        behaviour_from_eval_files([paths[0], write_eval(tmp_path / "n.json", 0.5, ADV[0.4], n=7)])


def test_plot_behaviour_writes_png(tmp_path):
    out = plot_behaviour([("FGSM", EXPECTED), ("MIM", EXPECTED[1:])], tmp_path / "fig2.png", "LeNet-5, CE")
    w, h = (int(v * behaviour.DPI) for v in behaviour.PANEL_SIZE)
    check_png(out, h, 2 * w)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet-5 trained for 4 short epochs on 10 well-separated synthetic classes, and its 300 test examples."""
    store = tmp_path_factory.mktemp("store")
    cfg = compose(
        "train",
        [
            "dataset=fake",
            "model=lenet5",
            "loss=ce",
            "logger=none",
            "trainer.epochs_per_phase=2",
            "dataset.n_test=300",
            f"store={store}",
        ],
    )
    s = train(cfg)
    run_cfg, model = load_run(RunDir(store, s["key"]), torch.device("cpu"))
    _, test = load_splits(run_cfg.dataset)
    return model, test.x.float() / 255, test.y


def test_tsne_keeps_class_structure(trained):
    model, x, y = trained
    feats = penultimate_features(model, x, batch_size=128)
    assert feats.shape[0] == len(x) and not feats.requires_grad
    (panel,) = tsne_panels(model, x, y, n=len(y))
    xy = panel["xy"]
    assert xy.shape == (len(y), 2) and np.isfinite(xy).all() and "adv_mask" not in panel
    knn = cross_val_score(KNeighborsClassifier(5), xy, panel["labels"], cv=5).mean()
    assert knn > 0.8, knn
    assert embed(feats[:5].numpy()).shape == (5, 2)  # perplexity clipped below N


@pytest.mark.slow
def test_tsne_with_adversarial_examples(trained, tmp_path):
    model, x, y = trained
    adv = build_attack(attack_config("fgsm"))(model, x.clone(), y, 0.1, 0)
    fooled = (model(adv).argmax(1) != y).numpy()
    assert 0 < fooled.sum() < len(y)
    clean, both = tsne_panels(model, x, y, x_adv=adv, n=len(y))
    assert both["adv_mask"].sum() == fooled.sum() and len(both["xy"]) == len(y) + fooled.sum()
    assert (both["labels"][both["adv_mask"]] == y.numpy()[fooled]).all()  # adversarial points keep true labels
    assert np.array_equal(clean["xy"], both["xy"][: len(y)]) and np.isfinite(both["xy"]).all()
    # explicit success mask and a random subset of n examples
    given = np.zeros(len(y), bool)
    given[:40] = True
    _, sub = tsne_panels(model, x, y, x_adv=adv, adv_success=given, n=100, seed=1)
    chosen = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:100].numpy()
    assert sub["adv_mask"].sum() == given[chosen].sum() and len(sub["xy"]) == 100 + given[chosen].sum()
    out = plot_tsne([clean, both], tmp_path / "fig3.png", "LeNet-5, CE, FGSM eps=0.1")
    w, h = (int(v * tsne.DPI) for v in tsne.PANEL_SIZE)
    check_png(out, h, 2 * w)


def test_plot_tsne_many_classes(tmp_path):
    g = np.random.default_rng(0)
    panel = {
        "title": "100 classes",
        "xy": g.normal(size=(300, 2)),
        "labels": np.arange(300) % 100,
        "adv_mask": np.arange(300) < 20,
    }
    out = plot_tsne([panel], tmp_path / "tsne100.png", "CIFAR-100-like")
    w, h = (int(v * tsne.DPI) for v in tsne.PANEL_SIZE)
    check_png(out, h, w)


def test_gap_stats(trained, tmp_path):
    model, x, y = trained
    with torch.no_grad():
        logits = model(x)
    direct = probability_gap(logits, y).double()
    s = gap_stats(model, x, y, batch_size=64)
    assert s["mean"] == pytest.approx(float(direct.mean()), abs=1e-6)
    assert s["median"] == pytest.approx(float(direct.median()), abs=0.05)  # torch takes the lower middle value
    assert s["std"] == pytest.approx(float(direct.std(unbiased=False)), abs=1e-6)
    assert s["negative_share"] == pytest.approx(float((logits.argmax(1) != y).float().mean()))  # gap < 0 iff wrong
    assert sum(s["hist"]["counts"]) == s["n"] == len(y)
    assert len(s["hist"]["counts"]) == 40 and s["hist"]["edges"][0] == -1.0 and s["hist"]["edges"][-1] == 1.0
    json.dumps(s)
    g = probability_gaps(model, (x * 255).round().to(torch.uint8), y)  # uint8 input is scaled like the data
    assert g.shape == (len(y),) and np.allclose(g, direct.numpy(), atol=1e-5)
    out = plot_gaps({"CE": g, "PC+LC": np.clip(g + 0.1, -1, 1)}, tmp_path / "gaps.png", "probability gaps")
    w, h = (int(v * gaps.DPI) for v in gaps.FIG_SIZE)
    check_png(out, h, w)


def test_figures_are_written_atomically(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pclc.files import atomic_savefig

    path = tmp_path / "f.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_savefig(fig, path, dpi=50)
    before = path.read_bytes()
    assert before.startswith(PNG) and mpimg.imread(path).shape[:2] == (240, 320)  # 6.4 x 4.8 in at 50 dpi

    def half_then_fail(f, **kw):
        f.write(b"\x89PNG partial")
        raise OSError("disk full")

    fig.savefig = half_then_fail
    with pytest.raises(OSError, match="disk full"):
        atomic_savefig(fig, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["f.png"]
    plt.close(fig)


def test_tsne_legend_names_the_classes(tmp_path, monkeypatch):
    import matplotlib.axes

    from pclc.config import compose

    seen, real = [], matplotlib.axes.Axes.legend
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "legend",
        lambda self, *a, **k: seen.extend(h.get_label() for h in k.get("handles", [])) or real(self, *a, **k),
    )
    names = list(compose("train", ["dataset=fmnist"]).dataset.classes)
    g = np.random.default_rng(0)
    plot_tsne(
        [{"title": "t", "xy": g.normal(size=(50, 2)), "labels": np.arange(50) % 10}],
        tmp_path / "t.png",
        "t",
        names,
    )
    assert seen[:10] == names and names[0] == "T-shirt/top" and names[9] == "Ankle boot"
