"""Loaders read the real on-disk formats exactly; subsets, caching, device batches, missing-data errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from conftest import rng_images, write_cifar, write_idx_gz, write_svhn
from omegaconf import OmegaConf

import pclc.data as data
from pclc.config import compose
from pclc.data import DatasetNotFoundError, Split, build_data, file_md5, load_splits, stratified_first


def dataset_cfg(name: str, root, **over):
    cfg = compose("train", [f"dataset={name}"]).dataset
    cfg.root = str(root)
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("kmnist", "KMNIST"), ("fmnist", "FashionMNIST")])
def test_idx_gz_loaders_return_exact_pixels(tmp_path, monkeypatch, name, cls):
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    xtr, ytr = rng_images(30, 1, 28, seed=1)
    xte, yte = rng_images(12, 1, 28, seed=2)
    write_idx_gz(tmp_path / cls / "raw", "train", xtr, ytr)
    write_idx_gz(tmp_path / cls / "raw", "t10k", xte, yte)
    train, test = load_splits(dataset_cfg(name, tmp_path, download=False))
    assert torch.equal(train.x, torch.from_numpy(xtr)) and torch.equal(train.y, torch.from_numpy(ytr))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))
    assert (tmp_path / ".pclc-cache" / f"{name}-v{data.CACHE_VERSION}.pt").exists()


def test_fmnist_found_in_system_folder(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    xtr, ytr = rng_images(20, 1, 28, seed=3)
    write_idx_gz(system, "train", xtr, ytr)
    write_idx_gz(system, "t10k", xtr[:10], ytr[:10])
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", system)
    train, _ = load_splits(dataset_cfg("fmnist", tmp_path / "root", download=False))
    assert torch.equal(train.x, torch.from_numpy(xtr))


@pytest.mark.parametrize(
    "name,cls,folder,label_key,meta,meta_key,k,train_files,test_file",
    [
        (
            "cifar10",
            tvd.CIFAR10,
            "cifar-10-batches-py",
            "labels",
            "batches.meta",
            "label_names",
            10,
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
        ),
        (
            "cifar100",
            tvd.CIFAR100,
            "cifar-100-python",
            "fine_labels",
            "meta",
            "fine_label_names",
            100,
            ["train"],
            "test",
        ),
    ],
)
def test_cifar_pickles_return_exact_pixels(
    tmp_path, monkeypatch, name, cls, folder, label_key, meta, meta_key, k, train_files, test_file
):
    parts = {f: rng_images(7, 3, 32, seed=i) for i, f in enumerate(train_files + [test_file])}
    write_cifar(tmp_path / folder, parts, label_key, meta, meta_key, k)
    md5 = {f: file_md5(tmp_path / folder / f) for f in list(parts) + [meta]}
    # torchvision verifies each file's md5: register the md5s of the files this test wrote
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f in train_files])
    monkeypatch.setattr(cls, "test_list", [[test_file, md5[test_file]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[meta]})
    train, test = load_splits(dataset_cfg(name, tmp_path, download=False))
    assert torch.equal(train.x, torch.from_numpy(np.concatenate([parts[f][0] for f in train_files])))
    assert torch.equal(train.y, torch.from_numpy(np.concatenate([parts[f][1] for f in train_files])))
    assert torch.equal(test.x, torch.from_numpy(parts[test_file][0]))
    assert torch.equal(test.y, torch.from_numpy(parts[test_file][1]))


def test_svhn_mat_returns_exact_pixels_and_maps_label_10_to_0(tmp_path, monkeypatch):
    xtr, ytr = rng_images(9, 3, 32, seed=5)
    xte, yte = rng_images(6, 3, 32, seed=6)
    ytr[0] = 0  # stored as 10 in the .mat file
    write_svhn(tmp_path / "SVHN", "train", xtr, ytr)
    write_svhn(tmp_path / "SVHN", "test", xte, yte)
    split_list = {
        s: [u, f, file_md5(tmp_path / "SVHN" / f)]
        for s, (u, f, _) in tvd.SVHN.split_list.items()
        if s in ("train", "test")
    }
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    train, test = load_splits(dataset_cfg("svhn", tmp_path, download=False))
    assert torch.equal(train.x, torch.from_numpy(xtr)) and torch.equal(train.y, torch.from_numpy(ytr))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))


def test_tinyimagenet_folder_layout(tmp_path):
    from PIL import Image

    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # deliberately unsorted: classes are indexed in sorted order
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    g = np.random.default_rng(0)
    expected_train = []
    for w in sorted(wnids):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(2):
            img = g.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{w}_{i}.JPEG", quality=100)
            expected_train.append((d / f"{w}_{i}.JPEG", sorted(wnids).index(w)))
    (base / "val" / "images").mkdir(parents=True)
    ann, expected_test = [], []
    for i, w in enumerate(["n03", "n01", "n03", "n02"]):
        img = g.integers(0, 256, size=(64, 64), dtype=np.uint8)  # greyscale files exist in Tiny ImageNet
        Image.fromarray(img).save(base / "val" / "images" / f"val_{i}.JPEG", quality=100)
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        expected_test.append((base / "val" / "images" / f"val_{i}.JPEG", sorted(wnids).index(w)))
    (base / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")

    train, test = load_splits(dataset_cfg("tinyimagenet", tmp_path, download=False, num_classes=3))

    def decoded(path):  # exactly what the JPEG decodes to (JPEG itself is lossy)
        return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)

    assert train.x.shape == (6, 3, 64, 64) and test.x.shape == (4, 3, 64, 64)
    assert train.y.tolist() == [y for _, y in expected_train] and test.y.tolist() == [y for _, y in expected_test]
    for split, expected in ((train, expected_train), (test, expected_test)):
        for i, (path, _) in enumerate(expected):
            assert torch.equal(split.x[i], decoded(path))
    assert torch.equal(test.x[0, 0], test.x[0, 1])  # greyscale became RGB


def test_missing_dataset_offline_is_a_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "nothing-here")
    with pytest.raises(DatasetNotFoundError) as e:
        load_splits(dataset_cfg("fmnist", tmp_path, download=True))
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "Download failed" in msg
    with pytest.raises(DatasetNotFoundError, match="data_batch_1.*cifar-10-batches-py"):
        load_splits(dataset_cfg("cifar10", tmp_path, download=True))
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat"):
        load_splits(dataset_cfg("svhn", tmp_path, download=False))
    with pytest.raises(DatasetNotFoundError, match="wnids.txt"):
        load_splits(dataset_cfg("tinyimagenet", tmp_path, download=True))


def test_corrupt_cache_is_a_clear_error(tmp_path):
    from pclc.files import CorruptFileError

    cache = tmp_path / ".pclc-cache" / f"mnist-v{data.CACHE_VERSION}.pt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError, match="Delete it"):
        load_splits(dataset_cfg("mnist", tmp_path))


def test_label_outside_class_count_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "none")
    x, y = rng_images(10, 1, 28)
    y[3] = 9
    write_idx_gz(tmp_path / "MNIST" / "raw", "train", x, y)
    write_idx_gz(tmp_path / "MNIST" / "raw", "t10k", x, y)
    with pytest.raises(ValueError, match="num_classes"):
        load_splits(dataset_cfg("mnist", tmp_path, download=False, num_classes=5))


def test_stratified_subset_takes_first_examples_per_class():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0, 1, 2])
    s = stratified_first(Split(torch.arange(12, dtype=torch.uint8)[:, None, None, None], y), 7, 3)
    # quotas 3, 2, 2: class 0 -> idx 0, 2, 5; class 1 -> 1, 4; class 2 -> 3, 6
    assert s.x.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert torch.bincount(s.y, minlength=3).tolist() == [3, 2, 2]


def test_device_batches_cover_each_example_once_and_resume(tmp_path):
    cfg = dataset_cfg("fake", tmp_path, n_train=100, n_test=10)
    train, test = build_data(cfg, "cpu")
    seen = torch.cat([y for _, y in train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == 100 and torch.equal(seen.sort().values, train.y.sort().values)
    xs = [x for x, _ in test.batches(4)]
    assert torch.equal(torch.cat(xs), test.x.float() / 255)  # no augmentation on the test split
    assert 0.0 <= float(torch.cat(xs).min()) and float(torch.cat(xs).max()) <= 1.0
    full = list(train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1)))
    tail = list(train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1), start=2))
    assert len(tail) == 2 and all(torch.equal(a[1], b[1]) for a, b in zip(full[2:], tail))


def test_real_fashion_mnist(real_fmnist_root):
    """Real Fashion-MNIST (required in CI): 60k/10k images, 6,000/1,000 per class, pixels in [0, 1]."""
    train, test = build_data(dataset_cfg("fmnist", real_fmnist_root, download=False), "cpu")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    x, _ = next(test.batches(10000))
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    sub, _ = load_splits(dataset_cfg("fmnist", real_fmnist_root, download=False, **{"subset.train": 1000}))
    assert torch.bincount(sub.y).tolist() == [100] * 10
