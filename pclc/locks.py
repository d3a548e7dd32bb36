"""One process at a time per run and per evaluation file (filelock): a second identical command waits,
saying who holds the lock, and then reuses what the first one finished."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)

log = logging.getLogger(__name__)


def lock_path(store: str | Path, name: str) -> Path:
    """``<store>/.locks/<name>.lock``."""
    return Path(store) / ".locks" / f"{name}.lock"


@contextlib.contextmanager
def held(path: Path, what: str, report_every: float = 60.0):
    """Hold the lock at ``path`` for the block; while another process holds it, wait and say who."""
    lock, owner = FileLock(str(path)), path.with_suffix(".owner")
    waited = 0.0
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=0 if waited == 0 else report_every)
            break
        except Timeout:  # before OSError: filelock's Timeout is a TimeoutError, an OSError
            holder = owner.read_text().strip() if owner.exists() else "another process"
            log.info("waiting for %s: held by %s (%.0f s so far)", what, holder, waited)
            waited += report_every if waited else 1e-9
        except OSError as e:
            if e.errno not in READ_ONLY:
                raise
            # a read-only store (a shared copy of finished results): nothing can be written there, so there is
            # nothing to serialise; a write that is attempted still fails, with one line (pclc.files)
            log.info("%s: the store is read-only (%s); reading without a lock", what, e.strerror)
            yield
            return
    try:
        owner.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": platform.node(),
                    "since": time.strftime("%H:%M:%S"),
                    "command": " ".join(sys.argv)[:200],
                }
            )
        )
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
