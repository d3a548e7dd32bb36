"""Hydra job helpers: one job of a sweep that fails is recorded and the sweep goes on; at the end the
failures are listed and the sweep exits non-zero."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportFailures(Callback):
    """After a multirun: a line per job (its overrides, run and accuracy) so that a sweep ends with its summary,
    then the jobs that failed (each recorded by ``run_job``) and a non-zero exit. Each job writes its line to the
    sweep folder, so the summary holds with launchers that run jobs in other processes."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        hc = config.get("hydra")
        if hc is None or hc.mode != RunMode.MULTIRUN:
            return
        from pclc.files import atomic_write_json

        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        value = value if isinstance(value, dict) else {}
        atomic_write_json(
            Path(hc.sweep.dir) / "summary" / f"job{hc.job.num}.json",
            {
                "job": int(hc.job.num),
                "overrides": list(hc.overrides.task),
                "run": value.get("key") or value.get("run"),
                "accuracy": value.get("test_accuracy", value.get("clean_accuracy")),
                "failed": bool(value.get("failed")) or value == {},
            },
        )

    def on_multirun_end(self, config, **kwargs) -> None:
        jobs = Path(config.hydra.sweep.dir) / "summary"
        lines = sorted((json.loads(f.read_text()) for f in jobs.glob("job*.json")), key=lambda d: d["job"])
        if lines:
            print(f"sweep of {len(lines)} jobs ({config.hydra.sweep.dir}):")
            for d in lines:
                acc = "failed" if d["failed"] else ("-" if d["accuracy"] is None else f"{d['accuracy']:.2f}%")
                print(f"  job {d['job']}: {' '.join(d['overrides'])} -> {acc}" + (f" ({d['run']})" if d["run"] else ""))
        folder = Path(config.hydra.sweep.dir) / "failures"
        failures = sorted(folder.glob("job*.json")) if folder.exists() else []
        if failures:
            for f in failures:
                d = json.loads(f.read_text())
                log.error("job %s %s failed: %s", d["job"], " ".join(d["overrides"]), d["error"])
            raise SystemExit(f"{len(failures)} job(s) of the sweep failed; the others finished (see {folder})")


def is_user_error(e: BaseException) -> bool:
    """An error the user can fix from its message (a bad setting, missing data, a damaged file): printed as
    one line with exit status 2. Anything else is a bug and keeps its traceback."""
    from pclc.errors import UserError

    return isinstance(e, (UserError, ValueError, FileNotFoundError))


def run_job(fn: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job; in a multirun a failure is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pclc.config import hydra_choices
    from pclc.files import atomic_write_json

    previous = (
        signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return fn(hydra_choices(cfg))
    except (KeyboardInterrupt, Terminated) as e:  # finally blocks ran: locks released, temp files removed
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        print(
            f"error: stopped by {name}; what finished is kept and the same command resumes from there",
            file=sys.stderr,
        )
        raise SystemExit(code) from None
    except Exception as e:
        hc = HydraConfig.get() if HydraConfig.initialized() else None
        if hc is None or hc.mode != RunMode.MULTIRUN:
            if is_user_error(e) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line; no traceback
                raise SystemExit(2) from None
            raise
        log.exception("job %s failed; the sweep goes on", hc.job.num)
        atomic_write_json(
            Path(hc.sweep.dir) / "failures" / f"job{hc.job.num}.json",
            {"job": hc.job.num, "overrides": list(hc.overrides.task), "error": f"{type(e).__name__}: {e}"},
        )
        return {"failed": True, "error": str(e)}
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM, raised where the process is (as KeyboardInterrupt is for SIGINT) so that cleanup runs."""


def _terminate(signum, frame):
    raise Terminated()
