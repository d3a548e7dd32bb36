"""Hydra callbacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class ReportFailures(Callback):
    """After a multirun, list the jobs that failed (each recorded by ``run_job``) and exit non-zero."""

    def on_multirun_end(self, config, **kwargs) -> None:
        folder = Path(config.hydra.sweep.dir) / "failures"
        failures = sorted(folder.glob("job*.json")) if folder.exists() else []
        if failures:
            for f in failures:
                d = json.loads(f.read_text())
                log.error("job %s %s failed: %s", d["job"], " ".join(d["overrides"]), d["error"])
            raise SystemExit(f"{len(failures)} job(s) of the sweep failed; the others finished (see {folder})")
