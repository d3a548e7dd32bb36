"""Experiment tracking: W&B (offline by default) or nothing. Secrets are never logged."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A config entry named like a credential (api_key, wandb_key, token, secret, password; not a run's `key`).
_SECRET = re.compile(r"(api_?key|_key$|^key_|token|secret|passw(or)?d|credential)", re.IGNORECASE)


def is_secret(name: str) -> bool:
    return bool(_SECRET.search(str(name)))


def scrub(obj: Any) -> Any:
    """Drop every entry whose name looks like a credential (nothing written or logged may hold one)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not is_secret(k)}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def run_identity(run_cfg, cfg=None) -> tuple[str, list[str]]:
    """A W&B display name and tags for a model: ``<dataset>-<model>-<loss>[-<trainer>]-s<seed>[-<profile>]``
    (the trainer when not the paper's, so CE and CE+AT differ; the profile, so a quick run never shares a full
    run's name) and ``key:value`` tags to filter by. ``run_cfg`` is the run's training config; ``cfg`` the
    job's (its profile and experiment), by default the same."""
    cfg = run_cfg if cfg is None else cfg
    trainer = (run_cfg.get("choices") or {}).get("trainer") or (
        "adversarial" if run_cfg.trainer.get("adversarial") else None
    )
    profile, experiment = cfg.get("profile"), cfg.get("experiment_name")
    parts = [run_cfg.dataset.name, run_cfg.model.name, run_cfg.loss.name]
    parts += [trainer] if trainer and trainer != "paper" else []
    parts += [f"s{run_cfg.seed}"] + ([profile] if profile else [])
    tags = {
        "dataset": run_cfg.dataset.name,
        "model": run_cfg.model.name,
        "loss": run_cfg.loss.name,
        "trainer": trainer,
        "seed": run_cfg.seed,
        "profile": profile,
        "experiment": experiment,
    }
    return "-".join(parts), [f"{k}:{v}" for k, v in tags.items() if v is not None]


def metric_key(attack: str, eps: float | None, source: str = "white") -> str:
    """``adv/<attack>/eps<eps>`` (``adv/transfer-<attack>/...`` for a transfer attack, ``adv/<attack>`` for an
    unbounded one): the same key in every run, so accuracy against eps can be charted across runs."""
    name = attack if source == "white" else f"{source}-{attack}"
    return f"adv/{name}" if eps is None else f"adv/{name}/eps{eps:g}"


class Tracker:
    """Logs nothing: the ``logger=none`` choice (and the base of the W&B tracker)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record per-step metrics (nothing to record without a backend)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Record final values (nothing to record without a backend)."""

    def log_table(self, key: str, df) -> None:
        """Record a results table (nothing to record without a backend)."""

    def log_image(self, key: str, path) -> None:
        """Record a figure (nothing to record without a backend)."""

    def log_curves(self, key: str, curves: dict[str, list[tuple[float, float]]], title: str, x: str) -> None:
        """Record a line plot, one line per name of ``curves`` ({name: [(x, y), ...]}) (nothing without a backend)."""

    def log_artifact(self, name: str, kind: str, paths, metadata: dict | None = None) -> None:
        """Record files as a versioned artifact (nothing to record without a backend)."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (nothing to close without a backend)."""


_HINTED: set[Path] = set()


def _sync_hint(folder: Path) -> None:
    """Once per process, when it exits: where the offline W&B runs are and how to upload them."""
    if folder in _HINTED:
        return
    if not _HINTED:
        import atexit
        import sys

        atexit.register(
            lambda: print(
                "W&B runs were logged offline in "
                + ", ".join(map(str, sorted(_HINTED)))
                + "; upload them with: wandb sync "
                + " ".join(f"{f}/offline-run-*" for f in sorted(_HINTED)),
                file=sys.stderr,
            )
        )
    _HINTED.add(folder)


class WandbTracker(Tracker):
    def __init__(
        self,
        project: str,
        name: str,
        group: str,
        config: dict,
        mode: str,
        dir: str,
        tags: list[str] | None = None,
        entity: str | None = None,
        job_type: str = "train",
        run_id: str | None = None,
    ):
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            job_type=job_type,
            config=scrub(config),
            mode=mode,
            dir=dir,
            tags=tags or [],
            # no banners in our console; the console's output captured for the run's Logs tab
            settings=wandb.Settings(silent=True, console="wrap"),
            id=run_id,
            resume="allow" if run_id else None,  # one W&B run per model, resumes too
            reinit="create_new",
        )  # independent runs: an evaluation inside a reproduce run
        if mode == "offline":
            _sync_hint(Path(dir).resolve() / "wandb")
        self.dir = Path(self.run.dir).parent if self.run is not None and mode != "disabled" else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float, str, bool)):
                self.run.summary[k] = v

    def log_table(self, key: str, df) -> None:
        import wandb

        self.run.log({key: wandb.Table(dataframe=df.astype(object).where(df.notna(), None))})

    def log_image(self, key: str, path) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))})

    def log_curves(self, key: str, curves: dict[str, list[tuple[float, float]]], title: str, x: str) -> None:
        import wandb

        names = sorted(curves)
        self.run.log(
            {
                key: wandb.plot.line_series(
                    xs=[[p[0] for p in curves[n]] for n in names],
                    ys=[[p[1] for p in curves[n]] for n in names],
                    keys=names,
                    title=title,
                    xname=x,
                )
            }
        )

    def log_artifact(self, name: str, kind: str, paths, metadata: dict | None = None) -> None:
        """Files as a W&B Artifact (``kind``: model, evaluation, results), e.g. a run's weights and summary."""
        import wandb

        art = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "_", name)[:128], type=kind, metadata=scrub(metadata or {}))
        for p in paths:
            if Path(p).exists():
                art.add_file(str(p), name=Path(p).name)
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def build_tracker(
    cfg,
    name: str,
    group: str,
    config: dict,
    job_type: str = "train",
    run_id: str | None = None,
    tags: list[str] | None = None,
) -> Tracker:
    """``cfg`` is the ``logger`` config group: ``{name: wandb|none, mode, project, dir, ...}``."""
    if cfg is None or cfg.name == "none":
        return Tracker()
    if cfg.name != "wandb":
        raise ValueError(f"unknown logger {cfg.name!r}; known: wandb, none")
    mode = os.environ.get("WANDB_MODE") if cfg.get("mode") is None else cfg.mode
    mode = mode or "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be online, offline or disabled, got {mode!r}")
    return WandbTracker(
        project=cfg.project,
        entity=cfg.get("entity"),
        name=name,
        group=group,
        config=config,
        mode=mode,
        dir=cfg.dir,
        tags=[*(cfg.get("tags") or []), *(tags or [])],
        job_type=job_type,
        run_id=run_id,
    )
