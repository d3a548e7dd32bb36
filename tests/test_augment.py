"""Device-side augmentation: shapes and range kept, real changes when on, none when off, seeded."""

from __future__ import annotations

import pytest
import torch

from pclc.augment import build_augment, crop_flip
from pclc.config import compose

AUGMENTED = ["cifar10", "svhn", "cifar100", "tinyimagenet"]


@pytest.mark.parametrize("name", AUGMENTED)
def test_dataset_augmentation_keeps_shape_and_range_and_is_seeded(name):
    cfg = compose("train", [f"dataset={name}", "model=resnet56"]).dataset
    aug = build_augment(cfg.augment)
    x = torch.rand(16, 3, cfg.size, cfg.size)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).abs().flatten(1).amax(1).gt(0).float().mean() > 0.5  # most images changed
    assert torch.equal(x, x.clone())  # input untouched (functional)


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fmnist", "fake"])
def test_grey_datasets_have_no_augmentation(name):
    assert build_augment(compose("train", [f"dataset={name}"]).dataset.augment) is None


def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors():
    x = torch.rand(6, 2, 8, 8)
    out = crop_flip(x, torch.Generator().manual_seed(3), pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = crop_flip(x, torch.Generator().manual_seed(3), pad=0, flip=True)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(2)) for f, o in zip(flipped, x))
    assert any(torch.equal(f, o.flip(2)) for f, o in zip(flipped, x))


def test_tiny_augmentation_leaves_a_share_of_images_untouched():
    aug = build_augment({"name": "tiny", "p": 0.8, "degrees": 10, "scale": [0.08, 1.0], "ratio": [0.75, 1.333]})
    x = torch.rand(400, 3, 16, 16)
    out = aug(x, torch.Generator().manual_seed(0))
    same = (out - x).abs().flatten(1).amax(1) < 1e-5
    assert 0.1 < float(same.float().mean()) < 0.3  # p = 0.8 applied -> about 20% identical


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment({"name": "mixup"})
