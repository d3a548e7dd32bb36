"""Regenerate a paper table or figure: list its cells, train and evaluate what is missing, write results/.

    python -m pclc.reproduce experiment=table1                      # everything, in this process
    python -m pclc.reproduce experiment=table1 datasets=[fmnist]    # one column group
    python -m pclc.reproduce experiment=table1 plan=true            # cells, what is done, predicted time
    python -m pclc.reproduce experiment=table1 profile=quick        # short schedule, test subset (titled so)
    python -m pclc.reproduce -m experiment=table1 stage=cell cell='range(0,10)' hydra/launcher=joblib
    python -m pclc.reproduce experiment=table1 stage=tables         # assemble from the store
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pclc.config import compose, resolve_device
from pclc.evaluate import expand_suite
from pclc.io import atomic_write_json, atomic_write_text
from pclc.store import RunDir, provenance, run_key
from pclc.tables import combine, header, table_rows, to_markdown

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One trained model an experiment needs: dataset, model and method (loss + trainer)."""

    dataset: str
    model: str
    method: str
    loss: str
    trainer: str

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.model}/{self.method}"


# ------------------------------------------------------------------------------------------
# Cells and their configs
# ------------------------------------------------------------------------------------------
def dataset_config(cfg: DictConfig, dataset: str) -> str:
    """The dataset config a paper dataset runs on (``dataset_map`` swaps in synthetic data for smoke tests)."""
    return (cfg.get("dataset_map") or {}).get(dataset, dataset)


def family_of(cfg: DictConfig, dataset: str) -> str:
    return compose("train", [f"dataset={dataset_config(cfg, dataset)}"]).dataset.family


def make_cell(cfg: DictConfig, dataset: str, model: str, method: str) -> Cell:
    if method not in cfg.methods:
        raise ValueError(f"unknown method {method!r}; known: {sorted(cfg.methods)}")
    m = cfg.methods[method]
    trainer = m.trainer if isinstance(m.trainer, str) else m.trainer[family_of(cfg, dataset)]
    return Cell(dataset, model, method, m.loss, trainer)


def experiment_cells(cfg: DictConfig) -> list[Cell]:
    """Cells of the experiment, restricted to ``cfg.datasets`` when given."""
    exp = cfg.experiment
    datasets = list(cfg.datasets) if cfg.get("datasets") else None
    if exp.kind == "table":
        rows = table_rows(exp.table, datasets, exp.get("attacks"))
        triples = list(dict.fromkeys(zip(rows.dataset, rows.model, rows.method)))
    else:
        chosen = datasets or list(exp.datasets)
        triples = [(d, exp.model_for[family_of(cfg, d)], meth) for d in chosen for meth in exp.methods]
    return [make_cell(cfg, *t) for t in triples]


def cell_overrides(cell: Cell, cfg: DictConfig) -> list[str]:
    prof = cfg.profiles[cfg.profile]
    return [f"dataset={dataset_config(cfg, cell.dataset)}", f"model={cell.model}", f"loss={cell.loss}", f"trainer={cell.trainer}",
            f"store={cfg.store}", f"device={cfg.device}", f"run_group={cfg.experiment.name}",
            f"logger={cfg.logger.name}", *prof.train, *cfg.extra]


def train_cfg(cell: Cell, cfg: DictConfig) -> DictConfig:
    return compose("train", cell_overrides(cell, cfg))


def eval_cfg(cell: Cell, cfg: DictConfig, suite: str) -> DictConfig:
    return compose("evaluate", [*cell_overrides(cell, cfg), f"attack/suite={suite}",
                                *cfg.profiles[cfg.profile].eval])


def suites_of(exp: DictConfig) -> list[str]:
    return [exp.suite] if exp.get("suite") else []


def missing_evals(cell: Cell, cfg: DictConfig) -> list[str]:
    """Eval files this cell still needs (names in ``runs/<key>/eval``)."""
    out = []
    for suite in suites_of(cfg.experiment):
        ec = eval_cfg(cell, cfg, suite)
        run = RunDir(cfg.store, run_key(ec))
        sub = ec.eval.subset
        for e in expand_suite(ec.suite, ec.dataset, ec.eval.get("param_overrides")):
            name = f"{e.name(None if sub is None else int(sub), ec.eval.get('precision') or 'fp32')}.json"
            if not (run.eval / name).exists():
                out.append(name)
    return out


def run_cell(cell: Cell, cfg: DictConfig) -> dict[str, Any]:
    """Train (if missing) and evaluate (what is missing) one cell."""
    from pclc.evaluate import evaluate
    from pclc.train import train

    summary = train(train_cfg(cell, cfg))
    evals = [evaluate(eval_cfg(cell, cfg, s)) for s in suites_of(cfg.experiment)]
    return {"cell": cell.label, "key": summary["key"], "evaluations": evals}


# ------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------
def _epoch_seconds(store: Path, dataset: str, model: str) -> float | None:
    """Median measured epoch time of this model on this dataset (else on any dataset)."""
    for pattern in (f"{dataset}-{model}-*/metrics.json", f"*-{model}-*/metrics.json"):
        secs = [r["seconds"] for m in store.glob(pattern) for r in json.loads(m.read_text()) if "source" not in r]
        if secs:
            return statistics.median(secs)
    return None


def _attack_seconds(store: Path, dataset: str, model: str) -> dict[str, float]:
    """Measured seconds per example of each attack config on this model and dataset (else any dataset)."""
    per: dict[str, list[float]] = {}
    for pattern in (f"*-{model}-*/eval/*.json", f"{dataset}-{model}-*/eval/*.json"):  # the exact pair wins
        found: dict[str, list[float]] = {}
        for f in store.glob(pattern):
            r = json.loads(f.read_text())
            found.setdefault(r["attack"], []).append(r["seconds"] / max(1, r["n"]))
        per.update(found)
    return {k: statistics.median(v) for k, v in per.items()}


TEST_SIZES = {"svhn": 26032}  # every other dataset of the paper has 10,000 test images (Tiny ImageNet: val/)


def _test_size(dataset: str, subset) -> int:
    return int(subset) if subset is not None else TEST_SIZES.get(dataset, 10000)


def plan(cfg: DictConfig) -> dict[str, Any]:
    """Which cells are trained and evaluated, and the predicted time of the rest from measured costs."""
    store = Path(cfg.store)
    rows, total, unknown = [], 0.0, []
    for i, cell in enumerate(experiment_cells(cfg)):
        tc = train_cfg(cell, cfg)
        run = RunDir(store, run_key(tc))
        epochs_total = 2 * int(tc.trainer.epochs_per_phase)
        done_epochs = epochs_total if run.finished else (
            len(json.loads(run.metrics.read_text())) if run.metrics.exists() else 0)
        if tc.loss.get("warmup") and not run.metrics.exists():  # phase 1 may exist in the warm-up run
            warm = RunDir(store, run_key(compose("train", [o if not o.startswith("loss=") else f"loss={tc.loss.warmup}"
                                                          for o in cell_overrides(cell, cfg)])))
            done_epochs = int(tc.trainer.epochs_per_phase) if warm.warmup.exists() else 0
        per_epoch = _epoch_seconds(store, tc.dataset.name, cell.model)
        todo = missing_evals(cell, cfg)
        train_s = None if per_epoch is None else per_epoch * (epochs_total - done_epochs)
        atk = _attack_seconds(store, tc.dataset.name, cell.model)
        n = _test_size(cell.dataset, eval_cfg(cell, cfg, suites_of(cfg.experiment)[0]).eval.subset) if todo else 0
        eval_s = 0.0
        for name in todo:
            kind = name.split("-")[1]
            if kind in atk:
                eval_s += atk[kind] * n
            else:
                eval_s = None
                break
        for part, v in (("train", train_s if epochs_total > done_epochs else 0.0), ("eval", eval_s if todo else 0.0)):
            if v is None:
                unknown.append(f"{cell.label} {part}")
            else:
                total += v
        rows.append({"cell": i, "label": cell.label, "key": run.key, "trained": run.finished,
                     "epochs_done": f"{done_epochs}/{epochs_total}", "evals_missing": len(todo),
                     "predicted_seconds": None if (train_s is None and epochs_total > done_epochs) or eval_s is None
                     else round((train_s or 0.0) + eval_s, 1)})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print(f"predicted time for the rest: {total / 60:.1f} min on this device"
          + (f" (plus unmeasured: {', '.join(unknown)})" if unknown else ""))
    return {"cells": rows, "predicted_seconds": total, "unmeasured": unknown}


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
def _eps_of(param: str) -> float | None:
    return None if param in ("-", "0.0") else float(param)


def collect_table(cfg: DictConfig) -> pd.DataFrame:
    """Our numbers for every paper cell of the table, read from the store (nothing is run)."""
    exp = cfg.experiment
    rows = table_rows(exp.table, list(cfg.datasets) if cfg.get("datasets") else None, exp.get("attacks"))
    ours: dict[tuple[str, str, str, str], float] = {}
    for cell in experiment_cells(cfg):
        ec = eval_cfg(cell, cfg, exp.suite)
        run = RunDir(cfg.store, run_key(ec))
        if not run.finished:
            continue
        sub = ec.eval.subset
        prec = ec.eval.get("precision") or "fp32"
        files = {(e.source, e.config, e.eps): run.eval / f"{e.name(None if sub is None else int(sub), prec)}.json"
                 for e in expand_suite(ec.suite, ec.dataset, ec.eval.get("param_overrides"))}
        clean = None
        for r in rows[(rows.dataset == cell.dataset) & (rows.method == cell.method)].itertuples():
            if r.attack == "clean":
                continue
            spec = exp.rows[r.attack]
            f = files.get((spec.get("source", "white"), spec.attack, _eps_of(r.param)))
            if f is not None and f.exists():
                res = json.loads(f.read_text())
                ours[(cell.dataset, cell.method, r.attack, r.param)] = res["adv_accuracy"]
                clean = res["clean_accuracy"]
        if sub is None:
            clean = run.read_summary()["test_accuracy"]
        if clean is not None:
            ours[(cell.dataset, cell.method, "clean", "-")] = clean
    return combine(rows, ours)


def out_dir(cfg: DictConfig) -> Path:
    base = Path(cfg.out_dir)
    return base if cfg.profile == "full" else base / cfg.profile


def write_table(cfg: DictConfig, tracker=None) -> list[Path]:
    exp = cfg.experiment
    df = collect_table(cfg)
    device = resolve_device(cfg.device)
    prov = provenance(device)
    title = f"{exp.title}" + ("" if cfg.profile == "full" else f" — {cfg.profile} profile, NOT the paper's protocol")
    cells = [f"`{c.label}` → run `{run_key(train_cfg(c, cfg))}`" for c in experiment_cells(cfg)]
    head = header(title, prov, cfg.profile, OmegaConf.to_yaml(cfg, resolve=True),
                  notes=[f"attack suite: `{exp.suite}`", "runs: " + "; ".join(cells)])
    folder = out_dir(cfg)
    md, csv = folder / f"{exp.name}.md", folder / f"{exp.name}.csv"
    atomic_write_text(md, head + to_markdown(df))
    prov_lines = "".join(f"# {k}: {v}\n" for k, v in prov.items() if k in ("command", "commit", "device", "date"))
    config_line = "# config: " + json.dumps({"experiment": exp.name, "suite": exp.suite, "profile": cfg.profile,
                                              "datasets": cfg.get("datasets") and list(cfg.datasets),
                                              "runs": {c.label: run_key(train_cfg(c, cfg)) for c in experiment_cells(cfg)}},
                                             default=str) + f" (resolved config in {md.name})\n"
    atomic_write_text(csv, f"# {title}\n# protocol: {cfg.profile}\n" + prov_lines + config_line + df.to_csv(index=False))
    if tracker is not None:
        tracker.log_table(exp.name, df)
    log.info("wrote %s and %s", md, csv)
    return [md, csv]


def write_outputs(cfg: DictConfig, tracker=None) -> list[Path]:
    kind = cfg.experiment.kind
    if kind == "table":
        return write_table(cfg, tracker)
    from pclc import figures

    return figures.write(cfg, experiment_cells(cfg), tracker)


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------
def reproduce(cfg: DictConfig) -> dict[str, Any]:
    if cfg.profile not in cfg.profiles:
        raise ValueError(f"unknown profile {cfg.profile!r}; known: {sorted(cfg.profiles)}")
    if cfg.experiment.kind == "all":
        out = {}
        for name in cfg.experiment.experiments:
            sub = compose("reproduce", [f"experiment={name}", f"profile={cfg.profile}", f"store={cfg.store}",
                                        f"out_dir={cfg.out_dir}", f"device={cfg.device}", f"logger={cfg.logger.name}"]
                          + ([f"datasets=[{','.join(cfg.datasets)}]"] if cfg.get("datasets") else []))
            out[name] = reproduce(sub)
        return out
    cells = experiment_cells(cfg)  # validates the restriction before any work
    if cfg.plan:
        return plan(cfg)
    if cfg.stage == "count":
        print(len(cells))
        return {"cells": len(cells)}
    if cfg.stage == "cell":
        if cfg.cell is None or not 0 <= int(cfg.cell) < len(cells):
            raise ValueError(f"stage=cell needs cell in [0, {len(cells)}), got {cfg.cell}")
        return run_cell(cells[int(cfg.cell)], cfg)
    if cfg.stage not in ("all", "tables"):
        raise ValueError(f"stage must be all, cell, tables or count; got {cfg.stage!r}")
    results = [run_cell(c, cfg) for c in cells] if cfg.stage == "all" else []
    from pclc.tracking import build_tracker

    tracker = build_tracker(cfg.logger, name=f"{cfg.experiment.name}-{cfg.profile}", group=cfg.experiment.name,
                            config=OmegaConf.to_container(cfg, resolve=True), job_type="reproduce")
    try:
        paths = write_outputs(cfg, tracker)
    finally:
        tracker.finish(0)
    return {"cells": [c.label for c in cells], "ran": len(results), "outputs": [str(p) for p in paths]}


@hydra.main(config_path="../configs", config_name="reproduce", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.train import run_job

    return run_job(reproduce, cfg)


if __name__ == "__main__":
    main()
