"""The jobs of a paper table or figure (dataset, model, method, seed: a model to train and evaluate) and the
configs that train, evaluate and audit them. Nothing here runs anything. (A table *cell* is a number of the
paper's layout; one job fills many.)"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pclc.attacks.suite import expand_suite
from pclc.config import compose, group_config, quoted
from pclc.inputs import file_name, not_empty, seed
from pclc.paper_data import table_rows
from pclc.results import result_file
from pclc.store import RunDir, run_key


@dataclass(frozen=True)
class Job:
    """One job of an experiment, the unit a launcher fans out (``stage=cell cell=<k>``): a model to train
    (dataset, model and method: loss + trainer) and its evaluations; a study arm of
    ``experiment=deviations`` adds its training overrides and its evaluation (JSON: suite entries, attack
    parameters, test subset)."""

    dataset: str
    model: str
    method: str
    loss: str
    trainer: str
    seed: int = 0
    arm: str = ""  # "<study>.<arm>" (deviations only)
    train_extra: tuple[str, ...] = ()  # Hydra overrides of the training config
    evaluation: str = ""  # JSON {entries, params, subset} applied to the evaluation config

    @property
    def label(self) -> str:
        return (
            f"{self.dataset}/{self.model}/{self.method}"
            + (f"/s{self.seed}" if self.seed else "")
            + (f"/{self.arm}" if self.arm else "")
        )


def dataset_config(cfg: DictConfig, dataset: str) -> str:
    """The dataset config a paper dataset runs on (``dataset_map`` swaps in synthetic data for smoke tests)."""
    return (cfg.get("dataset_map") or {}).get(dataset, dataset)


def family_of(cfg: DictConfig, dataset: str) -> str:
    """grey | colour | large: the ``family`` of the dataset's config."""
    return str(group_config("dataset", dataset_config(cfg, dataset)).family)


def make_cell(cfg: DictConfig, dataset: str, model: str, method: str, seed: int = 0) -> Job:
    if method not in cfg.methods:
        raise ValueError(f"unknown method {method!r}; known: {sorted(cfg.methods)}")
    m = cfg.methods[method]
    trainer = m.trainer if isinstance(m.trainer, str) else m.trainer[family_of(cfg, dataset)]
    return Job(dataset, model, method, m.loss, trainer, seed)


def experiment_seeds(cfg: DictConfig) -> list[int]:
    """``cfg.seeds`` (default [0]): every table cell is trained and evaluated once per seed."""
    not_empty("seeds", cfg.get("seeds"), "seed")
    seeds = [seed(s, "seeds") for s in list(cfg.get("seeds") or [0])]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    if len(seeds) > 1 and cfg.experiment.kind != "table":
        raise ValueError(
            f"seeds={seeds}: several seeds apply to tables (mean ± sd per cell); "
            f"{cfg.experiment.name} is a {cfg.experiment.kind}: pass one seed"
        )
    return seeds


def chosen_studies(cfg: DictConfig) -> list[str]:
    """The studies of ``experiment=deviations`` to run: ``cfg.studies`` (checked), else all of them."""
    known = list(cfg.experiment.studies)
    chosen = list(cfg.get("studies") or known)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"studies={chosen}: unknown {unknown}; known: {known}")
    return chosen


def _arm_cells(cfg: DictConfig, dataset: str, model: str) -> list[Job]:
    """The cells of the chosen studies' arms (``cfg.arms``: only those ``<study>.<arm>``): each method and seed
    of an arm, with its overrides."""
    out, studies = [], chosen_studies(cfg)
    only = list(cfg.get("arms") or [])
    known = [f"{n}.{a.name}" for n in studies for a in cfg.experiment.studies[n].get("arms") or []]
    if [a for a in only if a not in known]:
        raise ValueError(f"arms={only}: unknown {[a for a in only if a not in known]}; known: {known}")
    for name in studies:
        for arm in cfg.experiment.studies[name].get("arms") or []:
            if only and f"{name}.{arm.name}" not in only:
                continue
            spec = {
                k: OmegaConf.to_container(arm[k]) if OmegaConf.is_config(arm[k]) else arm[k]
                for k in ("entries", "params", "subset", "precision")
                if arm.get(k) is not None
            }
            for s in list(arm.get("seeds") or [0]):  # seed by seed: an interrupted study has whole seeds
                for meth in arm.methods:
                    out.append(
                        replace(
                            make_cell(cfg, dataset, model, meth, seed=int(s)),
                            arm=f"{name}.{arm.name}",
                            train_extra=tuple(arm.get("train") or ()),
                            evaluation=json.dumps(spec, sort_keys=True) if spec else "",
                        )
                    )
    return out


def _autoattack_cells(cfg: DictConfig, dataset: str) -> list[Job]:
    """``experiment=autoattack``: each method at its seeds, and the deviations study's retraining arms named in
    ``arms`` (their overrides and seeds read from configs/experiment/deviations.yaml: one home)."""
    exp = cfg.experiment
    model = exp.model_for[family_of(cfg, dataset)]
    spec = json.dumps({"subset": int(exp.subset)}) if exp.get("subset") is not None else ""
    out = [
        replace(make_cell(cfg, dataset, model, m, seed=int(s)), evaluation=spec)
        for m in exp.methods
        for s in exp.seeds[m]
    ]
    studies = compose("reproduce", ["experiment=deviations"]).experiment.studies
    for name in exp.get("arms") or []:
        study, arm_name = name.split(".", 1)
        arm = next(a for a in studies[study].arms if a.name == arm_name)
        out += [
            replace(
                make_cell(cfg, dataset, model, m, seed=int(s)),
                arm=name,
                train_extra=tuple(arm.get("train") or ()),
                evaluation=spec,
            )
            for s in list(arm.get("seeds") or [0])
            for m in arm.methods
            if m in exp.methods
        ]
    return out


def experiment_cells(cfg: DictConfig) -> list[Job]:
    """Cells of the experiment, restricted to ``cfg.datasets`` when given."""
    exp = cfg.experiment
    datasets = list(cfg.datasets) if cfg.get("datasets") else None
    if exp.kind == "deviations":
        return [
            c for d in (datasets or list(exp.datasets)) for c in _arm_cells(cfg, d, exp.model_for[family_of(cfg, d)])
        ]
    if exp.kind == "autoattack":
        return [c for d in (datasets or list(exp.datasets)) for c in _autoattack_cells(cfg, d)]
    if exp.kind == "table":
        rows = table_rows(exp.table, datasets, exp.get("attacks"))
        triples = list(dict.fromkeys(zip(rows.dataset, rows.model, rows.method)))
    else:
        chosen = datasets or list(exp.datasets)
        triples = [(d, exp.model_for[family_of(cfg, d)], meth) for d in chosen for meth in exp.methods]
    return [make_cell(cfg, *t, seed=s) for t in triples for s in experiment_seeds(cfg)]


def cell_overrides(cell: Job, cfg: DictConfig) -> list[str]:
    """The cell's training config as overrides: its groups and seed, the arm's and ``extra`` overrides, and the
    profile's overlay (``configs/profiles/train/<profile>.yaml``, applied after every group)."""
    return [
        f"dataset={dataset_config(cfg, cell.dataset)}",
        f"model={cell.model}",
        f"loss={cell.loss}",
        f"trainer={cell.trainer}",
        f"seed={cell.seed}",
        f"store={quoted(cfg.store)}",
        f"device={cfg.device}",
        f"experiment_name={cfg.experiment.name}",
        f"logger={cfg.logger.name}",
        f"+profiles/train={cfg.profile}",
        *cell.train_extra,
        *cfg.extra,
        *zoo_overrides(cfg),
    ]


def zoo_overrides(cfg: DictConfig) -> list[str]:
    """``from_zoo``/``zoo_dir``/``zoo_records`` carried into a cell's train and evaluate configs."""
    if not cfg.get("from_zoo"):
        return []
    out = ["from_zoo=true", *([f"zoo_dir={quoted(cfg.zoo_dir)}"] if cfg.get("zoo_dir") else [])]
    return out + ([] if cfg.get("zoo_records", True) else ["zoo_records=false"])


def train_cfg(cell: Job, cfg: DictConfig) -> DictConfig:
    return compose("train", cell_overrides(cell, cfg))


def eval_cfg(cell: Job, cfg: DictConfig, suite: str, restrict: bool = False) -> DictConfig:
    """The cell's evaluation config; ``restrict`` keeps only the suite entries of ``cfg.attacks`` (when set). The
    suite AutoAttack is reported beside (``experiment.reported``) is its table's: its attacks, its test set."""
    engine = [f"attack.{k}={v}" for k, v in (cfg.get("attack") or {}).items()]
    ec = compose(
        "evaluate",
        [*cell_overrides(cell, cfg), f"attack/suite={suite}", *engine, f"+profiles/eval={cfg.profile}"],
    )
    reported = cfg.experiment.get("reported") if cfg.experiment.kind == "autoattack" else None
    if reported and suite == reported.suite and suite != cfg.experiment.suite:
        ec.suite.entries = [e for e in ec.suite.entries if e.attack in reported.attacks]
        return ec
    if cell.evaluation:
        _apply_arm(ec, json.loads(cell.evaluation))
    if restrict and cfg.get("attacks"):
        ec.suite.entries = [e for e in ec.suite.entries if e.attack in cfg.attacks]
    return ec


def _apply_arm(ec: DictConfig, spec: dict) -> None:
    """A study arm's evaluation: its suite entries, its attack parameters (the profile's smaller budgets win,
    so smoke profiles stay small) and its test subset (the smaller of the arm's and the profile's)."""
    if "entries" in spec:
        ec.suite.entries = spec["entries"]
    if spec.get("params"):
        prof = OmegaConf.to_container(ec.eval.param_overrides) if ec.eval.get("param_overrides") else {}
        ec.eval.param_overrides = {
            a: {**spec["params"].get(a, {}), **prof.get(a, {})} for a in {*spec["params"], *prof}
        }
    if spec.get("precision"):
        ec.eval.precision = spec["precision"]
    if spec.get("subset") is not None:
        sub = ec.eval.subset
        ec.eval.subset = int(spec["subset"]) if sub is None else min(int(sub), int(spec["subset"]))


def audit_cfg(cell: Job, cfg: DictConfig) -> DictConfig:
    """The cell's audit config (configs/audit.yaml with the profile's overlay, configs/profiles/audit/)."""
    return compose("audit", [*cell_overrides(cell, cfg), f"+profiles/audit={cfg.profile}"])


def suites_of(exp: DictConfig) -> list[str]:
    return [exp.suite] if exp.get("suite") else []


def cell_suites(cell: Job, cfg: DictConfig) -> list[str]:
    """The suites a cell is evaluated under: the experiment's; a deviations arm without entries has none;
    AutoAttack's cells also the paper's attacks they are reported beside (``experiment.reported``)."""
    exp = cfg.experiment
    if exp.kind == "deviations":
        return suites_of(exp) if cell.evaluation and "entries" in json.loads(cell.evaluation) else []
    if exp.kind == "autoattack" and exp.get("reported"):
        return [*suites_of(exp), exp.reported.suite]
    return suites_of(exp)


def check_attacks(cfg: DictConfig) -> None:
    """``attacks=[...]`` must name attack configs of the experiment's suite (``[]`` names none)."""
    not_empty("attacks", cfg.get("attacks"), "attack")
    if cfg.experiment.get("name") is not None:
        file_name("experiment.name", cfg.experiment.name)
    if not cfg.get("attacks") or not suites_of(cfg.experiment):
        return
    known = {e.attack for e in compose("evaluate", [f"attack/suite={cfg.experiment.suite}"]).suite.entries}
    unknown = sorted(set(cfg.attacks) - known)
    if unknown:
        raise ValueError(
            f"attacks={list(cfg.attacks)}: {unknown} not in suite {cfg.experiment.suite!r} "
            f"(its attacks: {sorted(known)})"
        )


def entries(ec: DictConfig) -> list:
    """The (attack, eps, source) entries of an evaluation config."""
    return expand_suite(ec.suite, ec.dataset, ec.eval.get("param_overrides"))


def missing_entries(cell: Job, cfg: DictConfig) -> list[tuple[DictConfig, Any]]:
    """(evaluation config, suite entry) of each evaluation this cell still needs: neither in the store nor, with
    ``from_zoo`` (and ``zoo_records``), among the zoo's records of the run (restored, not recomputed)."""
    from pclc.zoo import records_dir, uses_records

    out = []
    for suite in cell_suites(cell, cfg):
        ec = eval_cfg(cell, cfg, suite, restrict=True)
        run = RunDir(cfg.store, run_key(ec))
        recorded = records_dir(run.key, cfg.get("zoo_dir")) / "eval" if uses_records(cfg) else None
        for e in entries(ec):
            path = result_file(run, ec, e)
            if not path.exists() and not (recorded and (recorded / f"{path.name}.gz").exists()):
                out.append((ec, e))
    return out


def out_dir(cfg: DictConfig) -> Path:
    """Where the experiment writes: ``out_dir`` for the paper's protocol, ``out_dir/<profile>`` otherwise; tables
    over seeds other than ``[0]`` under ``seeds/`` (a mean over seeds never replaces the seed-0 table the
    deviations study and the summary read)."""
    base = Path(cfg.out_dir)
    base = base if cfg.profile == "full" else base / cfg.profile
    return base / "seeds" if list(cfg.get("seeds") or [0]) != [0] else base


def sub_experiments(cfg: DictConfig) -> list[DictConfig]:
    """The configs of ``experiment=all``'s experiments, with this run's settings."""
    keep = [
        f"profile={cfg.profile}",
        f"store={quoted(cfg.store)}",
        f"out_dir={quoted(cfg.out_dir)}",
        f"device={cfg.device}",
        f"logger={cfg.logger.name}",
        f"stage={cfg.stage}",
    ]
    keep += [f"bench={quoted(cfg.bench)}"] if cfg.get("bench") else []
    if cfg.get("dataset_map"):  # Hydra's dict syntax (JSON's quoted keys are not in its grammar)
        keep.append("dataset_map={" + ", ".join(f"{k}: {quoted(v)}" for k, v in cfg.dataset_map.items()) + "}")
    keep += ["extra=" + json.dumps(list(cfg.extra))] if cfg.get("extra") else []
    keep += [f"attack.{k}={v}" for k, v in (cfg.get("attack") or {}).items()]
    keep += zoo_overrides(cfg)
    out = []
    for name in cfg.experiment.experiments:
        sub = compose("reproduce", [f"experiment={name}", *keep])
        if sub.experiment.kind == "table":  # several seeds: tables only
            sub.seeds = list(cfg.get("seeds") or [0])
        if cfg.get("attacks") is not None:  # tables keep the attacks their suite has; the rest is skipped
            if sub.experiment.kind != "table":
                continue
            suite = {e.attack for e in compose("evaluate", [f"attack/suite={sub.experiment.suite}"]).suite.entries}
            if not suite & set(cfg.attacks):
                continue
            sub.attacks = sorted(suite & set(cfg.attacks))
        if cfg.get("datasets"):  # tables keep the datasets they have a column for (skipped if none);
            exp = sub.experiment  # figures are drawn for any dataset
            chosen = [d for d in cfg.datasets if exp.kind != "table" or d in set(table_rows(exp.table).dataset)]
            if not chosen:
                continue
            sub.datasets = chosen
        out.append(sub)
    if not out:
        raise ValueError(
            f"no experiment of {list(cfg.experiment.experiments)} has datasets "
            f"{list(cfg.get('datasets') or [])} and attacks {list(cfg.get('attacks') or [])}"
        )
    return out
