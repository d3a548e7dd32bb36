"""Shared fixtures: small files in each dataset's real on-disk format, real Fashion-MNIST, offline mode."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pclc.data import FMNIST_SYSTEM_DIR

REQUIRE_REAL = os.environ.get("PCLC_REQUIRE_REAL_DATA") == "1"


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path):
    """Tests never upload to W&B and never write into the working tree's run store."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("PCLC_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def need_wandb():
    """wandb for the W&B logger's tests. Missing, it fails the test, except inside `make gpu-check` on a bare GPU
    image (PCLC_IN_GPU_CHECK), where only what the GPU path needs travels and the test is skipped, saying so."""
    try:
        import wandb
    except ImportError:
        if os.environ.get("PCLC_IN_GPU_CHECK"):
            pytest.skip("wandb is not installed on this GPU image (gpu-check carries only what the GPU path needs)")
        raise
    return wandb


@pytest.fixture
def offline(monkeypatch):
    """Make every network connection fail at once, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def rng_images(n: int, c: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.integers(0, 256, size=(n, c, s, s), dtype=np.uint8), g.integers(0, 10, size=n).astype(np.int64)


def write_idx_gz(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format (big-endian magic 0x803 / 0x801 and sizes), gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    n, _, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, h, w) + images[:, 0].tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())


def write_cifar(
    folder: Path,
    batches: dict[str, tuple[np.ndarray, np.ndarray]],
    label_key: str,
    meta_name: str,
    meta_key: str,
    num_classes: int,
) -> None:
    """CIFAR's python pickle batches: {'data': (N, 3072) uint8 rows in CHW order, label_key: [..]}."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), label_key: [int(v) for v in y]}, f)
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, f)


def write_svhn(folder: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """SVHN's .mat: X is (H, W, C, N), y is (N, 1) with digit 0 stored as 10."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None]})


@pytest.fixture(scope="session")
def real_fmnist_root(tmp_path_factory) -> Path:
    """A data root from which real Fashion-MNIST loads (the Debian package, or PCLC_DATA)."""
    candidates = [Path(os.environ["PCLC_DATA"])] if os.environ.get("PCLC_DATA") else []
    have_system = all(
        (FMNIST_SYSTEM_DIR / f"{p}-{k}-idx{d}-ubyte.gz").exists()
        for p in ("train", "t10k")
        for k, d in (("images", 3), ("labels", 1))
    )
    for root in candidates:
        if (root / "FashionMNIST" / "raw").exists():
            return root
    if have_system:
        return tmp_path_factory.mktemp("fmnist-root")  # the loader finds the Debian files itself
    msg = f"real Fashion-MNIST not found (apt-get install dataset-fashion-mnist puts it in {FMNIST_SYSTEM_DIR})"
    if REQUIRE_REAL:
        pytest.fail(msg + "; PCLC_REQUIRE_REAL_DATA=1 requires it")
    pytest.skip(msg)


def pytest_collection_modifyitems(config, items):
    """Real-data tests are slow too: `make test-fast` (-m "not slow") leaves them to `make test`."""
    for item in items:
        if item.get_closest_marker("realdata") is not None:
            item.add_marker(pytest.mark.slow)
