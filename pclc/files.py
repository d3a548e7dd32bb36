"""Atomic writes and safe loads: nothing already written is lost when a run is interrupted."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from pclc.errors import UserError


class CorruptFileError(UserError, RuntimeError):
    """A checkpoint or cache file exists but cannot be read."""


def _host() -> str:
    """This machine's name as it appears in temp-file names (no dots, so the name parses back)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", platform.node() or "host") or "host"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ReadOnlyStoreError(UserError, OSError):
    """A write into a folder that cannot be written (a read-only store)."""


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyStoreError(f"cannot write {path}: {e.strerror}; pass a writable store= or out_dir=") from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would: mkstemp's 0600 hid a shared store from its group
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_savefig(fig, path: Path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (format from the suffix)."""
    _atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip("."), **kwargs))


def json_text(obj: Any) -> str:
    """The one way this project writes a JSON file (pclc.record_codec rebuilds records byte for byte from it)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def read_json(path: Path) -> Any:
    """A JSON file, with a clear error naming it when it is truncated or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"cannot read {path}: {e}") from e


STALE_FOREIGN_SECONDS = 24 * 3600  # an atomic write takes seconds; another host's temp file this old is dead


def remove_stale_temp(folder: Path) -> list[Path]:
    """Delete the temp files of interrupted atomic writes in ``folder``; returns what was removed. A writer named
    in the file name (``.<name>.<host>.<pid>.<random>.tmp``) on this host is checked by its PID; one on another
    host (a shared SLURM store) cannot be, so its file is removed only when a day old (no atomic write takes
    that long). A name without a host (older code) is taken as another host's."""
    import time

    removed = []
    for tmp in Path(folder).glob(".*.tmp") if Path(folder).exists() else []:
        parts = tmp.name[: -len(".tmp")].rsplit(".", 3)  # [.<name>, <host>, <pid>, <random>]
        host, pid = (parts[1], parts[2]) if len(parts) == 4 else (None, None)
        if pid is None or not pid.isdigit():
            continue
        try:
            age = time.time() - tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        if writer_gone(host, int(pid), age):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def writer_gone(host: str | None, pid: int, age_seconds: float) -> bool:
    """Whether the writer (host, PID) of a temp file or folder this old is gone: on this host, its PID is dead;
    on another (a shared store), the file is older than any write takes."""
    if host == _host():
        return pid != os.getpid() and not _alive(pid)
    return age_seconds > STALE_FOREIGN_SECONDS


def writer_tag() -> str:
    """``<host>.<pid>``: who writes a temp file or folder, as :func:`writer_gone` reads it back."""
    return f"{_host()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_tensors(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` with a clear error for a corrupt or foreign file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CorruptFileError(f"cannot read {path}: {type(e).__name__}: {e}. Delete it to recompute.") from e


def cached_tensor(path: Path | None, compute, device: torch.device | str = "cpu") -> torch.Tensor:
    """``compute()``, saved atomically at ``path`` and read back from there next time (no cache if None)."""
    if path is not None and Path(path).exists():
        return load_tensors(path).to(device)
    out = compute()
    if path is not None:
        atomic_torch_save(out.cpu(), path)
    return out
