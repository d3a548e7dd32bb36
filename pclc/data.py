"""Datasets: parsed once, cached as uint8 tensors, held on the training device, batched by index there.

Every loader returns ``(x, y)`` with ``x`` uint8 of shape (N, C, H, W) and ``y`` int64 (N,). Pixels
reach the model as float in [0, 1] (paper, Experiments: "We scale all pixel values to [0, 1]"); no
normalisation happens outside the model.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pclc.augment import build_augment
from pclc.files import atomic_torch_save, load_tensors
from pclc.registry import Registry

log = logging.getLogger(__name__)

CACHE_VERSION = 1
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)


# --------------------------------------------------------------------------------------------
# Loaders: name -> function(root, download, cfg) -> (train Split, test Split), all on the CPU.
# --------------------------------------------------------------------------------------------
LOADERS = Registry("dataset", positional=("root", "download", "cfg"))


def register_loader(name: str, classes: int | None = None):
    """Register ``loader(root, download, cfg) -> (train, test)``; ``classes``: the dataset's class count (a
    synthetic dataset takes its config's)."""
    return LOADERS.register(name, classes=None if classes is None else int(classes))


def _not_found(title: str, folder: Path, files: list[str], how: str, cause: BaseException | None = None):
    reason = f" Download failed: {type(cause).__name__}: {cause}." if cause is not None else ""
    return DatasetNotFoundError(
        f"{title} not found: expected {', '.join(files)} in {folder}.{reason} {how} "
        f"Set dataset.root (or the PCLC_DATA environment variable) to the folder that holds it."
    )


def _mnist_like(cls_name: str, title: str, system_copy: bool = False, how: str = ""):
    """MNIST, KMNIST and Fashion-MNIST through torchvision (idx files; .gz copies are unpacked)."""

    def load(root: Path, download: bool, cfg) -> tuple[Split, Split]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        raw = root / cls_name / "raw"
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        folders = (raw, FMNIST_SYSTEM_DIR) if system_copy else (raw,)
        for name in names:  # unpack idx .gz files found in raw/ or in the Debian package's folder
            if (raw / name).exists():
                continue
            for folder in folders:
                if (folder / f"{name}.gz").exists():
                    raw.mkdir(parents=True, exist_ok=True)
                    tmp = raw / f".{name}.tmp"
                    with gzip.open(folder / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, raw / name)
                    break
        have = all((raw / n).exists() for n in names)
        if not have and not download:
            raise _not_found(title, raw, [f"{n}[.gz]" for n in names], how)
        try:
            splits = []
            for train in (True, False):
                ds = cls(str(root), train=train, download=download and not have)
                splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.long()))
        except Exception as e:  # torchvision's download failed (offline) or the files are unreadable
            raise _not_found(title, raw, [f"{n}[.gz]" for n in names], how, e) from e
        return splits[0], splits[1]

    return load


register_loader("mnist", classes=10)(_mnist_like("MNIST", "MNIST"))
register_loader("kmnist", classes=10)(_mnist_like("KMNIST", "KMNIST"))
register_loader("fmnist", classes=10)(
    _mnist_like(
        "FashionMNIST",
        "Fashion-MNIST",
        system_copy=True,
        how=f"On Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs them in {FMNIST_SYSTEM_DIR}).",
    )
)


def _cifar(cls_name: str, title: str, folder: str):
    def load(root: Path, download: bool, cfg) -> tuple[Split, Split]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        try:  # torchvision verifies every file's md5 before parsing
            splits = []
            for train in (True, False):
                ds = cls(str(root), train=train, download=download)
                x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
                splits.append(Split(x, torch.as_tensor(ds.targets, dtype=torch.long)))
        except Exception as e:
            raise _not_found(
                title,
                root / folder,
                files,
                "Download it on a machine with a network (dataset.download=true) and copy the folder here.",
                e,
            ) from e
        return splits[0], splits[1]

    return load


register_loader("cifar10", classes=10)(_cifar("CIFAR10", "CIFAR-10", "cifar-10-batches-py"))
register_loader("cifar100", classes=100)(_cifar("CIFAR100", "CIFAR-100", "cifar-100-python"))


@register_loader("svhn", classes=10)
def _svhn(root: Path, download: bool, cfg) -> tuple[Split, Split]:
    import torchvision.datasets as tvd

    folder = root / "SVHN"
    try:  # torchvision verifies the .mat md5 and maps label 10 to 0
        splits = []
        for split in ("train", "test"):
            ds = tvd.SVHN(str(folder), split=split, download=download)
            splits.append(
                Split(
                    torch.from_numpy(np.ascontiguousarray(ds.data)),
                    torch.as_tensor(ds.labels, dtype=torch.long),
                )
            )
    except Exception as e:
        raise _not_found(
            "SVHN",
            folder,
            ["train_32x32.mat", "test_32x32.mat"],
            "Download them on a machine with a network (dataset.download=true).",
            e,
        ) from e
    return splits[0], splits[1]


@register_loader("tinyimagenet")  # its class count is wnids.txt's
def _tinyimagenet(root: Path, download: bool, cfg) -> tuple[Split, Split]:
    """Tiny ImageNet in its standard layout; the labelled ``val/`` split serves as the test set."""
    base = root / "tiny-imagenet-200"
    needed = ["wnids.txt", "train/<wnid>/images/*.JPEG", "val/val_annotations.txt", "val/images/*.JPEG"]
    if not (base / "wnids.txt").exists() and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
        except Exception as e:
            raise _not_found("Tiny ImageNet", base, needed, f"Get {TINY_URL} and unzip it into {root}.", e) from e
    if not (base / "wnids.txt").exists():
        raise _not_found("Tiny ImageNet", base, needed, f"Get {TINY_URL} and unzip it into {root}.")
    wnids = sorted(w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, index[w]) for w in wnids for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    test = []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            test.append((base / "val" / "images" / parts[0], index[parts[1]]))
    return _decode_images(train), _decode_images(test)


def _decode_images(items: list[tuple[Path, int]]) -> Split:
    """Decode JPEGs once (at cache time) into one uint8 tensor; greyscale images become RGB."""
    from PIL import Image

    if not items:
        raise DatasetNotFoundError("no images found for Tiny ImageNet")
    arrays = []
    for path, _ in items:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.tensor([label for _, label in items], dtype=torch.long))


@register_loader("fake")
def _fake(root: Path, download: bool, cfg) -> tuple[Split, Split]:
    """Synthetic, learnable data for tests: a smooth random prototype per class plus noise."""
    g = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    k, c, s = int(cfg.num_classes), int(cfg.channels), int(cfg.size)
    protos = torch.nn.functional.interpolate(torch.rand(k, c, 4, 4, generator=g), size=(s, s), mode="bilinear")

    def make(n: int) -> Split:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = protos[y] + float(cfg.get("noise", 0.25)) * torch.randn(n, c, s, s, generator=g)
        return Split((x.clamp(0, 1) * 255).round().to(torch.uint8), y)

    return make(int(cfg.n_train)), make(int(cfg.n_test))


# --------------------------------------------------------------------------------------------
# Caching, validation and subsets
# --------------------------------------------------------------------------------------------
def _check(name: str, split: Split, cfg) -> None:
    want = (int(cfg.channels), int(cfg.size), int(cfg.size))
    if tuple(split.x.shape[1:]) != want:
        raise ValueError(f"dataset {name}: images are {tuple(split.x.shape[1:])}, config says {want}")
    if split.x.dtype != torch.uint8 or len(split.x) != len(split.y):
        raise ValueError(f"dataset {name}: expected uint8 images and one label each")
    if len(split.y) and (int(split.y.min()) < 0 or int(split.y.max()) >= int(cfg.num_classes)):
        raise ValueError(f"dataset {name}: labels outside [0, {cfg.num_classes}) -- num_classes mismatch?")


def _without_leftovers(root: Path, load: Callable):
    """``load()``; when it fails, the empty folders it made (a failed download's) are removed again."""

    def dirs() -> set[Path]:
        below = {p for p in root.rglob("*") if p.is_dir()} if root.exists() else set()
        return below | {p for p in (root, *root.parents) if p.exists()}

    before = dirs()
    try:
        return load()
    except BaseException:
        for d in sorted(dirs() - before, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        raise


def load_splits(cfg) -> tuple[Split, Split]:
    """Parse a dataset once, cache it as uint8 tensors under ``<root>/.pclc-cache``, apply ``subset``."""
    name = cfg.name
    loader = LOADERS.get(name)  # an unknown name: one line listing the known ones
    classes = loader.meta["classes"]
    if classes is not None and int(cfg.num_classes) != classes:
        raise ValueError(
            f"dataset {name} has {classes} classes, but num_classes={cfg.num_classes}; "
            f"leave dataset.num_classes at the dataset's count"
        )
    root = Path(cfg.root).expanduser()
    if name == "fake":
        train, test = loader.fn(root, False, cfg)
    else:
        cache = root / ".pclc-cache" / f"{name}-v{CACHE_VERSION}.pt"
        if cache.exists():
            t = load_tensors(cache)
            train, test = Split(t["train_x"], t["train_y"]), Split(t["test_x"], t["test_y"])
        else:
            train, test = _without_leftovers(root, lambda: loader.fn(root, bool(cfg.download), cfg))
            for s in (train, test):
                _check(name, s, cfg)
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}, cache)
    for s in (train, test):
        _check(name, s, cfg)
    sub = cfg.get("subset") or {}
    k = int(cfg.num_classes)
    if sub.get("train"):
        train = stratified_first(train, int(sub["train"]), k)
    if sub.get("test"):
        test = stratified_first(test, int(sub["test"]), k)
    return train, test


def stratified_first(split: Split, n: int, num_classes: int) -> Split:
    """The first ``n`` examples in file order, class-balanced (n // K per class, the rest to the lowest classes)."""
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    onehot = torch.nn.functional.one_hot(split.y, num_classes)
    rank = (onehot.cumsum(0) - 1).gather(1, split.y[:, None]).squeeze(1)  # position within its class
    quota = torch.full((num_classes,), n // num_classes) + (torch.arange(num_classes) < n % num_classes)
    keep = (rank < quota[split.y]).nonzero().squeeze(1)
    return Split(split.x[keep], split.y[keep])


def file_md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Device-side batches
# --------------------------------------------------------------------------------------------
class DeviceData:
    """A split held on ``device`` as uint8; batches are drawn by index and converted there."""

    def __init__(self, split: Split, device: torch.device | str, augment: Callable | None = None):
        self.x = split.x.to(device)
        self.y = split.y.to(device)
        self.device = self.x.device
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x float in [0, 1], y)``; ``start`` skips the first batches (resuming mid-epoch)."""
        n = len(self)
        order = torch.randperm(n, generator=generator, device="cpu").to(self.device) if shuffle else None
        for i in range(start * batch_size, n, batch_size):
            idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
            x = self.x[idx].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, self.y[idx]


def build_data(cfg, device: torch.device | str) -> tuple[DeviceData, DeviceData]:
    """Train (with the dataset's device-side augmentation) and test splits on ``device``."""
    train, test = load_splits(cfg)
    return DeviceData(train, device, build_augment(cfg.get("augment"))), DeviceData(test, device)


def eval_tensors(cfg, subset: int | None, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of dataset config ``cfg`` (its first ``subset`` examples, class-balanced; None = all) as
    float images in [0, 1] and labels on ``device``: what every evaluation attacks."""
    if subset is not None and int(subset) <= 0:
        raise ValueError(f"the test subset must be a positive number of examples, got {subset}")
    d = cfg.copy()
    d.subset = {"train": None, "test": None if subset is None else int(subset)}
    _, test = load_splits(d)
    return test.x.to(device).float() / 255, test.y.to(device)
