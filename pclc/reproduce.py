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

from pclc import costs
from pclc.config import CONFIG_DIR, compose, resolve_device
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
    """grey | colour | large: the ``family`` of the dataset's config file (read directly: no composition)."""
    name = dataset_config(cfg, dataset)
    path = CONFIG_DIR / "dataset" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    return str(OmegaConf.load(path).family)


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


def eval_cfg(cell: Cell, cfg: DictConfig, suite: str, restrict: bool = False) -> DictConfig:
    """The cell's evaluation config; ``restrict`` keeps only the suite entries of ``cfg.attacks`` (when set)."""
    ec = compose("evaluate", [*cell_overrides(cell, cfg), f"attack/suite={suite}", *cfg.profiles[cfg.profile].eval])
    if restrict and cfg.get("attacks"):
        ec.suite.entries = [e for e in ec.suite.entries if e.attack in cfg.attacks]
    return ec


def check_attacks(cfg: DictConfig) -> None:
    """``attacks=[...]`` must name attack configs of the experiment's suite."""
    if not cfg.get("attacks") or not suites_of(cfg.experiment):
        return
    known = {e.attack for e in compose("evaluate", [f"attack/suite={cfg.experiment.suite}"]).suite.entries}
    unknown = sorted(set(cfg.attacks) - known)
    if unknown:
        raise ValueError(f"attacks={list(cfg.attacks)}: {unknown} not in suite {cfg.experiment.suite!r} "
                         f"(its attacks: {sorted(known)})")


def suites_of(exp: DictConfig) -> list[str]:
    return [exp.suite] if exp.get("suite") else []


def eval_name(ec: DictConfig, e) -> str:
    """The file stem of entry ``e``'s result under evaluation config ``ec`` (``runs/<key>/eval/<stem>.json``)."""
    sub = ec.eval.subset
    return e.name(None if sub is None else int(sub), ec.eval.get("precision") or "fp32")


def missing_entries(cell: Cell, cfg: DictConfig) -> list[tuple[DictConfig, Any]]:
    """(evaluation config, suite entry) of each evaluation this cell still needs."""
    out = []
    for suite in suites_of(cfg.experiment):
        ec = eval_cfg(cell, cfg, suite, restrict=True)
        run = RunDir(cfg.store, run_key(ec))
        for e in expand_suite(ec.suite, ec.dataset, ec.eval.get("param_overrides")):
            if not (run.eval / f"{eval_name(ec, e)}.json").exists():
                out.append((ec, e))
    return out


def run_cell(cell: Cell, cfg: DictConfig) -> dict[str, Any]:
    """Train (if missing) and evaluate (what is missing) one cell."""
    from pclc.evaluate import evaluate
    from pclc.train import train

    summary = train(train_cfg(cell, cfg))
    evals = [evaluate(eval_cfg(cell, cfg, s, restrict=True)) for s in suites_of(cfg.experiment)]
    return {"cell": cell.label, "key": summary["key"], "evaluations": evals}


# ------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------
def _adv_kind(trainer) -> tuple | None:
    """What sets an epoch's cost beyond the model and data: the adversarial-training attack and its steps."""
    adv = (trainer or {}).get("adversarial")
    return None if not adv else (adv.get("attack"), adv.get("steps"), adv.get("fraction"))


def _epoch_seconds(store: Path, dataset: str, model: str, trainer: DictConfig) -> float | None:
    """Median measured epoch time of this model with this kind of training, on this dataset (else any)."""
    kind = _adv_kind(trainer)
    for pattern in (f"{dataset}-{model}-*/metrics.json", f"*-{model}-*/metrics.json"):
        secs = []
        for m in store.glob(pattern):
            conf = m.parent / "config.yaml"
            resolved = OmegaConf.load(conf).get("resolved") or {} if conf.exists() else {}
            if _adv_kind(resolved.get("trainer")) == kind:
                secs += [r["seconds"] for r in json.loads(m.read_text()) if "source" not in r]
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


class Costs:
    """Predicted seconds: measured in the run store first, else scaled from ``make bench`` (pclc.costs)."""

    def __init__(self, store: Path, bench: dict | None):
        self.store, self.bench = store, bench
        self.sources: set[str] = set()
        self._attacks: dict[tuple, dict[str, float]] = {}  # the store is read once per (dataset, model)
        self._epochs: dict[tuple, float | None] = {}

    def _measured_attacks(self, dataset: str, model: str) -> dict[str, float]:
        if (dataset, model) not in self._attacks:
            self._attacks[(dataset, model)] = _attack_seconds(self.store, dataset, model)
        return self._attacks[(dataset, model)]

    def _measured_epoch(self, tc: DictConfig) -> float | None:
        k = (tc.dataset.name, tc.model.name, _adv_kind(tc.trainer))
        if k not in self._epochs:
            self._epochs[k] = _epoch_seconds(self.store, tc.dataset.name, tc.model.name, tc.trainer)
        return self._epochs[k]

    def epoch(self, tc: DictConfig) -> float | None:
        s = self._measured_epoch(tc)
        if s is not None:
            self.sources.add("store")
            return s
        if self.bench is not None:
            s = costs.epoch_seconds(self.bench, tc.dataset, tc.model.name, tc.trainer)
            if s is not None:
                self.sources.add("bench")
            return s
        return None

    def training(self, tc: DictConfig, done_epochs: int) -> float | None:
        todo = 2 * int(tc.trainer.epochs_per_phase) - done_epochs
        if todo <= 0:
            return 0.0
        per = self.epoch(tc)
        return None if per is None else per * todo

    def attack(self, ec: DictConfig, model: str, entry) -> float | None:
        """Seconds of one evaluation entry over the test set (or subset); transfer: crafted on ``model``."""
        n = costs.split_sizes(ec.dataset)[1] if ec.eval.subset is None else int(ec.eval.subset)
        measured = self._measured_attacks(ec.dataset.name, model).get(entry.config)
        if measured is not None:
            self.sources.add("store")
            return measured * n
        if self.bench is None:
            return None
        per = costs.attack_seconds_per_example(self.bench, ec.dataset, model, entry.kind, entry.params)
        if per is not None:
            self.sources.add("bench")
        return None if per is None else per * n


def _done_epochs(store: Path, tc: DictConfig, cell: Cell | None, cfg: DictConfig) -> int:
    run = RunDir(store, run_key(tc))
    total = 2 * int(tc.trainer.epochs_per_phase)
    if run.finished:
        return total
    if run.metrics.exists():
        return len(json.loads(run.metrics.read_text()))
    if cell is not None and tc.loss.get("warmup"):  # phase 1 may exist in the warm-up run
        warm = RunDir(store, run_key(compose("train", [o if not o.startswith("loss=") else f"loss={tc.loss.warmup}"
                                                      for o in cell_overrides(cell, cfg)])))
        return int(tc.trainer.epochs_per_phase) if warm.warmup.exists() else 0
    return 0


def bench_path(cfg: DictConfig) -> Path:
    """``cfg.bench`` or ``<out_dir>/bench-<device>.json`` (written by ``make bench`` on this kind of device)."""
    if cfg.get("bench"):
        return Path(cfg.bench)
    return Path(cfg.out_dir) / f"bench-{costs.device_slug(resolve_device(cfg.device))}.json"


def plan_items(cfg: DictConfig, cost: Costs) -> tuple[list[dict], dict[tuple, float | None]]:
    """Rows (one per cell, and per black-box substitute) and the work still to do, keyed so that work shared
    between experiments (a run, one evaluation file of a run) counts once: {("train", key) or ("eval", key,
    file): predicted seconds, None where nothing has been measured}."""
    from pclc.evaluate import substitute_cfg

    store = Path(cfg.store)
    rows: list[dict] = []
    work: dict[tuple, float | None] = {}
    for i, cell in enumerate(experiment_cells(cfg)):
        tc = train_cfg(cell, cfg)
        key = run_key(tc)
        done = _done_epochs(store, tc, cell, cfg)
        train_s = cost.training(tc, done)
        if train_s != 0.0:
            work[("train", key)] = train_s
        todo = missing_entries(cell, cfg)
        eval_s: float | None = 0.0
        for ec, e in todo:
            model = cell.model
            if e.source == "transfer":
                sc = substitute_cfg(tc, ec.eval.substitute)
                model, skey = sc.model.name, run_key(sc)
                if ("train", skey) not in work and not RunDir(store, skey).finished:
                    sdone = _done_epochs(store, sc, None, cfg)
                    work[("train", skey)] = st = cost.training(sc, sdone)
                    rows.append({"cell": "-", "label": f"{cell.dataset}/{model}/ce (substitute)", "key": skey,
                                 "trained": False, "epochs_done": f"{sdone}/{2 * int(sc.trainer.epochs_per_phase)}",
                                 "evals_missing": 0, "predicted_seconds": None if st is None else round(st, 1)})
            s = cost.attack(ec, model, e)
            work[("eval", key, eval_name(ec, e))] = s
            eval_s = None if s is None or eval_s is None else eval_s + s
        rows.append({"cell": i, "label": cell.label, "key": key, "trained": RunDir(store, key).finished,
                     "epochs_done": f"{done}/{2 * int(tc.trainer.epochs_per_phase)}", "evals_missing": len(todo),
                     "predicted_seconds": None if train_s is None or eval_s is None else round(train_s + eval_s, 1)})
    return rows, work


def plan(cfg: DictConfig) -> dict[str, Any]:
    """Which cells are trained and evaluated, and the predicted time of the rest from measured costs
    (``experiment=all``: every experiment's, shared work counted once)."""
    cost = Costs(Path(cfg.store), costs.load_bench(bench_path(cfg)))
    rows, work, audited = [], {}, []
    for sub in sub_experiments(cfg) if cfg.experiment.kind == "all" else [cfg]:
        r, w = plan_items(sub, cost)
        rows += [{"experiment": sub.experiment.name, **x} for x in r]
        work.update(w)
        if sub.experiment.kind == "audit":
            audited += [x["key"] for x in r if x["cell"] != "-"]
    total = sum(v for v in work.values() if v is not None)
    unknown = sorted({k[1] + (f" {k[2]}" if len(k) > 2 else " training") for k, v in work.items() if v is None})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    src = {"store": "the run store", "bench": f"{bench_path(cfg)} (scaled by FLOPs)"}
    print(f"predicted time for the rest: {total / 60:.1f} min ({total / 3600:.2f} h) on this device"
          + (f", from {' and '.join(src[k] for k in sorted(cost.sources, reverse=True))}" if cost.sources else "")
          + (f"; not predicted ({len(unknown)} items, no measurement: run `make bench` on this device): "
             + ", ".join(unknown[:6]) + (" ..." if len(unknown) > 6 else "") if unknown else ""))
    if audited:
        print(f"not in that figure: the audit's attacks on {len(audited)} runs (their cost depends on how many "
              "examples survive each attack: the adaptive ones run as a cascade on survivors); finished "
              "attacks are cached in runs/<key>/audit/")
    return {"cells": rows, "predicted_seconds": total, "unmeasured": unknown, "sources": sorted(cost.sources),
            "audits_not_predicted": audited}


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
        files = {(e.source, e.config, e.eps): run.eval / f"{eval_name(ec, e)}.json"
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


def substitute_notes(cfg: DictConfig) -> list[str]:
    """One line per black-box substitute the table's transfer attacks come from: its run and clean accuracy."""
    from pclc.evaluate import substitute_cfg

    subs: dict[str, str] = {}
    for cell in experiment_cells(cfg):
        ec = eval_cfg(cell, cfg, cfg.experiment.suite)
        if not any(e.get("source") == "transfer" for e in ec.suite.entries):
            continue
        sc = substitute_cfg(train_cfg(cell, cfg), ec.eval.substitute)
        run = RunDir(cfg.store, run_key(sc))
        acc = f"clean test accuracy {run.read_summary()['test_accuracy']:.2f}%" if run.finished else "not trained"
        subs[run.key] = f"substitute for `{cell.dataset}/{cell.model}`: `{cell.dataset}/{sc.model.name}/ce` → run " \
                        f"`{run.key}` ({acc})"
    return list(subs.values())


def write_table(cfg: DictConfig, tracker=None) -> list[Path]:
    exp = cfg.experiment
    df = collect_table(cfg)
    device = resolve_device(cfg.device)
    prov = provenance(device)
    title = f"{exp.title}" + ("" if cfg.profile == "full" else f" — {cfg.profile} profile, NOT the paper's protocol")
    cells = [f"`{c.label}` → run `{run_key(train_cfg(c, cfg))}`" for c in experiment_cells(cfg)]
    head = header(title, prov, cfg.profile, OmegaConf.to_yaml(cfg, resolve=True),
                  notes=[f"attack suite: `{exp.suite}`", "runs: " + "; ".join(cells), *substitute_notes(cfg)])
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


def write_audit(cfg: DictConfig, tracker=None) -> list[Path]:
    """Audit every cell's run (pclc.audit), each against the plain CE run of its dataset and model, into one
    report: ``<out_dir>/audit.md``, ``audit.csv``, ``audit_eps.png``."""
    from pclc import audit as au

    exp, device = cfg.experiment, resolve_device(cfg.device)
    prof = cfg.profiles[cfg.profile].get("audit") or []
    audits, cells = [], experiment_cells(cfg)
    for cell in cells:
        ac = compose("audit", [*cell_overrides(cell, cfg), *prof])
        run = RunDir(cfg.store, run_key(ac))
        if not run.finished:
            raise ValueError(f"run {run.key} ({cell.label}) is not trained; run stage=all first")
        ref = None
        if exp.get("reference"):
            ref_cell = make_cell(cfg, cell.dataset, cell.model, exp.reference)
            ref = RunDir(cfg.store, run_key(train_cfg(ref_cell, cfg)))
            if ref.key == run.key:
                ref = None
            elif not ref.finished:
                from pclc.train import train

                train(train_cfg(ref_cell, cfg))
        audits.append(au.audit_run(run, device, reference_run=ref, **au.audit_kwargs(ac)))
        log.info("%s: %s", cell.label, audits[-1]["verdict_reason"])
    paper = [r for c in dict.fromkeys((c.dataset, c.model) for c in cells)
             for r in au._paper_rows(*c)]
    title = exp.title if cfg.profile == "full" else f"{exp.title} — {cfg.profile} profile, NOT the full audit"
    exp_file = CONFIG_DIR / "experiment" / f"{exp.name}.yaml"
    listed = OmegaConf.load(exp_file).experiment.get("methods") if exp_file.exists() else None
    if listed is not None and list(exp.methods) != list(listed):
        title += f" — methods {', '.join(exp.methods)} only (the experiment lists {', '.join(listed)})"
    paths = au.write_audit_report(audits, out_dir(cfg), paper, title=title,
                                  config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
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
        return write_audit(cfg, tracker)
    from pclc import figures

    return figures.write(cfg, experiment_cells(cfg), tracker)


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------
def sub_experiments(cfg: DictConfig) -> list[DictConfig]:
    """The configs of ``experiment=all``'s experiments, with this run's settings."""
    keep = [f"profile={cfg.profile}", f"store={cfg.store}", f"out_dir={cfg.out_dir}", f"device={cfg.device}",
            f"logger={cfg.logger.name}", f"stage={cfg.stage}"]
    keep += [f"bench={cfg.bench}"] if cfg.get("bench") else []
    keep += [f"dataset_map={json.dumps(OmegaConf.to_container(cfg.dataset_map))}"] if cfg.get("dataset_map") else []
    keep += ["extra=" + json.dumps(list(cfg.extra))] if cfg.get("extra") else []
    out = []
    for name in cfg.experiment.experiments:
        sub = compose("reproduce", [f"experiment={name}", *keep])
        if cfg.get("datasets"):  # tables keep the datasets they have a column for (skipped if none);
            exp = sub.experiment  # figures are drawn for any dataset
            chosen = [d for d in cfg.datasets if exp.kind != "table" or d in set(table_rows(exp.table).dataset)]
            if not chosen:
                continue
            sub.datasets = chosen
        out.append(sub)
    if not out:
        raise ValueError(f"no experiment of {list(cfg.experiment.experiments)} has datasets {list(cfg.datasets)}")
    return out


def reproduce(cfg: DictConfig) -> dict[str, Any]:
    if cfg.profile not in cfg.profiles:
        raise ValueError(f"unknown profile {cfg.profile!r}; known: {sorted(cfg.profiles)}")
    if cfg.experiment.kind == "all":
        if cfg.plan:
            return plan(cfg)
        return {sub.experiment.name: reproduce(sub) for sub in sub_experiments(cfg)}
    cells = experiment_cells(cfg)  # validates the restrictions before any work
    check_attacks(cfg)
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
