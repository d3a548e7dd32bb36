"""Regenerate a paper table or figure: train and evaluate the cells that are missing, then write results/.

    python -m pclc.reproduce experiment=table1                      # everything, in this process
    python -m pclc.reproduce experiment=table1 datasets=[fmnist]    # one column group
    python -m pclc.reproduce experiment=table1 plan=true            # cells, what is done, predicted time
    python -m pclc.reproduce experiment=table1 profile=quick        # short schedule, test subset (titled so)
    python -m pclc.reproduce -m experiment=table1 stage=cell cell='range(0,10)' hydra/launcher=joblib
    python -m pclc.reproduce experiment=table1 stage=tables         # assemble from the store
    python -m pclc.reproduce experiment=deviations studies=[bim_step]   # some studies of the deviations

Orchestration only: cells and their configs are :mod:`pclc.experiment`, the planner :mod:`pclc.plan`,
tables :mod:`pclc.reports`, figures :mod:`pclc.figures`, the audit :mod:`pclc.audit`, the deviations
study :mod:`pclc.deviations` (written by :mod:`pclc.deviation_report`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pclc.config import CONFIG_DIR, group_config, group_names, resolve_device
from pclc.derived import audit_reference
from pclc.experiment import (
    Job,
    audit_cfg,
    cell_suites,
    check_attacks,
    eval_cfg,
    experiment_cells,
    out_dir,
    sub_experiments,
    train_cfg,
)
from pclc.headers import config_yaml, trained_on_notes
from pclc.paired import check_comparisons
from pclc.plan import cell_seconds, cell_timeout_minutes, plan
from pclc.progress import eta_line
from pclc.reports import check_table_file, write_table
from pclc.store import RunDir, checked_config, run_key

log = logging.getLogger(__name__)


def run_cell(cell: Job, cfg: DictConfig) -> dict[str, Any]:
    """Train (if missing) and evaluate (what is missing) one cell."""
    from pclc.evaluate import evaluate
    from pclc.train import train

    summary = train(train_cfg(cell, cfg))
    evals = [evaluate(eval_cfg(cell, cfg, s, restrict=True)) for s in cell_suites(cell, cfg)]
    return {"cell": cell.label, "key": summary["key"], "evaluations": evals}


def run_cells(cells: list[Job], cfg: DictConfig) -> list[dict[str, Any]]:
    """Every cell in turn, each announced with the planner's prediction and the ETA of the rest (scaled by
    this machine's pace on the cells before it)."""
    predicted = cell_seconds(cfg)
    # the planner prices training and the suites' evaluations; the audit's attacks follow every cell, unpriced
    unplanned = (
        "the audit's attacks, run after the cells (cached ones reused)" if cfg.experiment.kind == "audit" else None
    )
    results, measured, done_predicted = [], 0.0, 0.0
    for k, cell in enumerate(cells):
        log.info(eta_line(k + 1, len(cells), cell.label, predicted[k:], measured, done_predicted, unplanned))
        t0 = time.perf_counter()
        results.append(run_cell(cell, cfg))
        if predicted[k]:  # a finished cell (predicted 0) says nothing about the pace
            measured += time.perf_counter() - t0
            done_predicted += predicted[k]
        # a cell that computed something left measurements in the store: plan the rest again where it was unknown
        # (not after a finished cell: replanning costs seconds a cell, 5 s on the H100 lease's host without a bench)
        if predicted[k] != 0 and any(p is None for p in predicted[k + 1 :]):
            predicted = predicted[: k + 1] + cell_seconds(cfg)[k + 1 :]
    return results


def cell_runs(cell: Job, cfg: DictConfig) -> list[tuple[str, DictConfig, dict[str, Any]]]:
    """The trained models a cell needs, as (zoo name, training config, zoo metadata): its run and the black-box
    substitute its suites transfer from."""
    from pclc.derived import substitute_cfg
    from pclc.experiment import entries
    from pclc.zoo import zoo_name

    tc = train_cfg(cell, cfg)
    arm = cell.arm.rsplit(".", 1)[-1] if cell.train_extra else ""
    recipe = {"arm": cell.arm, "train": list(cell.train_extra)} if cell.train_extra else None
    out = [
        (
            zoo_name(tc.dataset.name, tc.model.name, cell.method, cell.seed, arm),
            tc,
            {
                "method": cell.method,
                "loss": cell.loss,
                "trainer": cell.trainer,
                "recipe": recipe,
                "role": "model",
            },
        )
    ]
    for suite in cell_suites(cell, cfg):
        ec = eval_cfg(cell, cfg, suite, restrict=True)
        if any(e.source == "transfer" for e in entries(ec)) and not ec.eval.get("substitute_run"):
            sc = substitute_cfg(tc, ec.eval.substitute)
            out.append(
                (
                    zoo_name(sc.dataset.name, sc.model.name, "ce", cell.seed, arm),
                    sc,
                    {
                        "method": "ce",
                        "loss": "ce",
                        "trainer": cell.trainer,
                        "recipe": recipe,
                        "role": f"black-box substitute for {tc.model.name}",
                    },
                )
            )
            break
    return out


def train_cell(cell: Job, cfg: DictConfig) -> list[str]:
    """Train (if missing) one cell's run and the black-box substitute its suites transfer from; attack nothing.
    Training is what differs between machines (the same seed trains other weights on another CPU), so
    ``stage=train`` lets a session train a whole result set on one machine before any attack runs."""
    from pclc.train import train

    return [train(c)["key"] for _, c, _ in cell_runs(cell, cfg)]


def export_cells(cells: list[Job], cfg: DictConfig) -> dict[str, Any]:
    """``stage=export``: add the cells' finished runs (and substitutes) to the zoo; list those not trained."""
    from pclc.zoo import export, zoo_dir

    done, missing = {}, []
    for cell in cells:
        for name, c, meta in cell_runs(cell, cfg):
            run = RunDir(cfg.store, run_key(c))
            if run.key in done:
                continue
            if run.finished:
                done[run.key] = export(run, name, meta, cfg.get("zoo_dir"))["name"]
            else:
                missing.append(f"{name} ({run.key})")
    log.info(
        "zoo %s: %d runs exported or already there; not trained yet: %s",
        zoo_dir(cfg.get("zoo_dir")),
        len(done),
        ", ".join(dict.fromkeys(missing)) or "none",
    )
    return {"exported": sorted(done.values()), "not_trained": list(dict.fromkeys(missing))}


def check_zoo(cells: list[Job], cfg: DictConfig) -> None:
    """``from_zoo=true``: every run the cells need must be in the zoo, checked before any work."""
    from pclc.zoo import ZooError, has, zoo_dir

    lacking = [
        f"{name} ({run_key(c)})"
        for cell in cells
        for name, c, _ in cell_runs(cell, cfg)
        if not has(run_key(c), cfg.get("zoo_dir"))
    ]
    if lacking:
        lacking = list(dict.fromkeys(lacking))
        raise ZooError(
            f"from_zoo=true: the zoo ({zoo_dir(cfg.get('zoo_dir'))}) lacks {len(lacking)} of the runs "
            f"this needs: {', '.join(lacking[:4])}{', ...' if len(lacking) > 4 else ''}; train them "
            f"(without FROM=zoo) and export them (stage=export), nothing was run"
        )


def run_audit(cfg: DictConfig, tracker=None) -> list[Path]:
    """Audit every cell's run (pclc.audit), each against the plain CE run of its dataset and model, into one
    report: ``<out_dir>/audit.md``, ``audit.csv``, ``audit_eps.png``."""
    from pclc.audit import audit_run, audit_settings, paper_rows, write_audit_report

    exp, device = cfg.experiment, resolve_device(cfg.device)
    audits, cells = [], experiment_cells(cfg)
    for cell in cells:
        ac = audit_cfg(cell, cfg)
        run = RunDir(cfg.store, run_key(ac))
        if cfg.get("from_zoo"):  # also fills what the zoo's records hold and this store lacks
            from pclc.zoo import restore, uses_records

            restore(run.key, cfg.store, cfg.get("zoo_dir"), records=uses_records(cfg))
        if not run.finished:
            raise ValueError(f"run {run.key} ({cell.label}) is not trained; run stage=all first")
        checked_config(run)  # an edited config.yaml is refused before its reference run is trained
        ref = None
        rc = audit_reference(train_cfg(cell, cfg), cfg.methods[exp.reference].loss if exp.get("reference") else None)
        if rc is not None:
            ref = RunDir(cfg.store, run_key(rc))
            if not ref.finished:
                from pclc.train import train

                train(rc)
        audits.append(audit_run(run, device, reference_run=ref, **audit_settings(ac)))
        log.info("%s: %s", cell.label, audits[-1].verdict_reason)
    rows = [r for c in dict.fromkeys((c.dataset, c.model) for c in cells) for r in paper_rows(*c)]
    title = exp.title if cfg.profile == "full" else f"{exp.title} — {cfg.profile} profile, NOT the full audit"
    listed = group_config("experiment", exp.name).get("methods") if exp.name else None
    if listed is not None and list(exp.methods) != list(listed):
        title += f" — methods {', '.join(exp.methods)} only (the experiment lists {', '.join(listed)})"
    keys = [k for a in audits for k in (a.run, a.reference_run) if k]
    paths = write_audit_report(
        audits,
        out_dir(cfg),
        rows,
        title=title,
        config_yaml=config_yaml(cfg),
        notes=trained_on_notes(cfg.store, keys),
    )
    if tracker is not None:
        import pandas as pd

        tracker.log_table("audit", pd.read_csv(paths[1], comment="#"))
        tracker.log_image("audit_eps", paths[2])
    return paths


def write_outputs(cfg: DictConfig, tracker=None) -> list[Path]:
    kind = cfg.experiment.kind
    if kind == "table":
        return write_table(cfg, tracker)
    if kind == "audit":
        return run_audit(cfg, tracker)
    if kind == "deviations":
        from pclc import deviation_report

        return deviation_report.write(cfg, tracker)
    if kind == "autoattack":
        from pclc import autoattack_report

        return autoattack_report.write(cfg, tracker)
    from pclc import figures

    return figures.write(cfg, experiment_cells(cfg), tracker)


def reproduce(cfg: DictConfig) -> dict[str, Any]:
    known = group_names("profiles/train")
    if cfg.profile not in known:
        raise ValueError(f"unknown profile {cfg.profile!r}; known: {known} (configs/profiles/)")
    if cfg.experiment.kind == "all":
        if cfg.plan:
            return plan(cfg)
        return reproduce_all(cfg)
    cells = experiment_cells(cfg)  # validates the restrictions before any work
    check_attacks(cfg)
    if cfg.experiment.kind == "autoattack":
        check_comparisons(cfg)
    if cfg.plan:
        return plan(cfg)
    if cfg.get("from_zoo") and cfg.stage in ("all", "cell", "train"):
        check_zoo(cells, cfg)
    if cfg.experiment.kind == "table" and cfg.stage in ("all", "tables"):
        check_table_file(cfg)  # another protocol's or seed set's file: refused before any work
    if cfg.stage == "export":
        return export_cells(cells, cfg)
    if cfg.stage == "count":
        print(len(cells))
        return {"cells": len(cells)}
    if cfg.stage == "timeout":  # the launcher's per-cell limit in minutes (hydra/launcher=pclc_slurm)
        minutes = cell_timeout_minutes(cfg)
        if minutes is None:
            log.warning(
                "some cells have no predicted time on this device (run `make bench`, or pass "
                "bench=results/bench-<gpu>.json written by make bench on a GPU node); "
                "keeping the launcher's timeout_min"
            )
        print(minutes if minutes is not None else "")
        return {"timeout_min": minutes}
    if cfg.stage == "cell":
        if cfg.cell is None or not 0 <= int(cfg.cell) < len(cells):
            raise ValueError(f"stage=cell needs cell in [0, {len(cells)}), got {cfg.cell}")
        return run_cell(cells[int(cfg.cell)], cfg)
    if cfg.stage == "train":
        keys = [k for c in cells for k in train_cell(c, cfg)]
        return {"cells": [c.label for c in cells], "runs": list(dict.fromkeys(keys))}
    if cfg.stage not in ("all", "tables"):
        raise ValueError(f"stage must be all, train, export, cell, tables, count or timeout; got {cfg.stage!r}")
    results = run_cells(cells, cfg) if cfg.stage == "all" else []
    from pclc.tracking import build_tracker

    tracker = build_tracker(
        cfg.logger,
        name=f"{cfg.experiment.name}-{cfg.profile}",
        group=cfg.experiment.name,
        config=OmegaConf.to_container(cfg, resolve=True),
        job_type="reproduce",
        tags=[f"experiment:{cfg.experiment.name}", f"profile:{cfg.profile}"],
    )
    try:
        paths = write_outputs(cfg, tracker)
        tracker.log_artifact(
            f"results-{cfg.experiment.name}-{cfg.profile}",
            "results",
            paths,
            {"experiment": cfg.experiment.name, "profile": cfg.profile},
        )
    except BaseException:
        tracker.finish(1)  # the W&B run says the reproduce failed
        raise
    tracker.finish(0)
    if cfg.get("show"):
        show(cfg, paths)
    return {"cells": [c.label for c in cells], "ran": len(results), "outputs": [str(p) for p in paths]}


def show(cfg: DictConfig, paths: list[Path]) -> None:
    """``show=true`` (make demo): the table, the protocol line and where the files are; nothing else."""
    from hydra.core.hydra_config import HydraConfig

    from pclc.profiles import profile_line

    md = next(Path(p) for p in paths if Path(p).suffix == ".md")
    lines = md.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    print("\n".join(lines[start:end]))
    print(profile_line(cfg))
    logs = f"; log: {HydraConfig.get().runtime.output_dir}" if HydraConfig.initialized() else ""
    print("files: " + ", ".join(str(p) for p in paths) + logs)


def reproduce_all(cfg: DictConfig) -> dict[str, Any]:
    """``experiment=all``: every experiment in turn; for a launcher its cells are numbered across experiments
    (``stage=count`` prints their total, ``stage=cell cell=i`` runs the i-th), and ``stage=timeout`` is the
    largest of theirs."""
    subs = sub_experiments(cfg)
    if cfg.stage in ("count", "cell"):
        counts = [len(experiment_cells(s)) for s in subs]
        if cfg.stage == "count":
            print(sum(counts))
            return {"cells": sum(counts)}
        i = cfg.cell
        if i is None or isinstance(i, bool) or not 0 <= int(i) < sum(counts):
            raise ValueError(f"stage=cell needs cell in [0, {sum(counts)}), got {i}")
        i = int(i)
        for sub, n in zip(subs, counts):
            if i < n:
                sub.cell = i
                return reproduce(sub)
            i -= n
    if cfg.stage == "timeout":
        minutes = [m for s in subs if (m := cell_timeout_minutes(s)) is not None]
        print(max(minutes) if minutes else "")
        return {"timeout_min": max(minutes) if minutes else None}
    return {sub.experiment.name: reproduce(sub) for sub in subs}


@hydra.main(config_path=str(CONFIG_DIR), config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.jobs import run_job

    return run_job(reproduce, cfg)


if __name__ == "__main__":  # run the importable module's main, so that launchers pickle its task by reference
    from pclc.reproduce import main as _main

    _main()
