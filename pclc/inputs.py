"""Checks of user inputs that can fail before any work: each refuses with one line naming the setting, its
value and what is allowed (``pclc.jobs.run_job`` prints it and exits 2)."""

from __future__ import annotations

import re
from typing import Any

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer


def whole(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an integer in [lo, hi]; a bool, a fraction (1.5, 1.7) or a string is refused, never rounded."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a whole number >= {lo}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be a whole number in [{lo}, {hi if hi is not None else '...'}], got {value}")
    return value


def optional_whole(name: str, value: Any, lo: int = 1) -> int | None:
    return None if value is None else whole(name, value, lo)


def seed(value: Any, name: str = "seed") -> int:
    return whole(name, value, 0, MAX_SEED)


def not_empty(name: str, value: Any, what: str) -> None:
    """A list setting given as ``[]``: refused rather than read as 'all' or a default."""
    if value is not None and len(value) == 0:
        raise ValueError(f"{name}=[] names no {what}; omit it for the default")


def file_name(name: str, value: Any) -> str:
    """A name that becomes a file name in a results folder: letters, digits, ``_ . + -``, no path."""
    v = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*", v) or ".." in v:
        raise ValueError(f"{name}={v!r} must be a plain name (letters, digits, _ . + -): it names a results file")
    return v
