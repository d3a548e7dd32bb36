"""``python -m pclc.audit``: audit one run of the store and its CE reference; write the report.

python -m pclc.audit dataset=fmnist model=lenet5 loss=pclc      # the run the training config names
python -m pclc.audit audit.run=<key or path>                    # any run of the store
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from pclc.audit.report import paper_rows, write_audit_report
from pclc.audit.run import audit_run
from pclc.config import CONFIG_DIR, resolve_device
from pclc.derived import audit_reference
from pclc.headers import config_yaml
from pclc.store import RunDir, checked_config, run_key

log = logging.getLogger(__name__)


def audit_settings(cfg: DictConfig) -> dict[str, Any]:
    """``audit_run``'s settings from an audit config (configs/audit.yaml): eps, attacks and their budgets,
    profile, subset, data root, thresholds."""
    a = cfg.audit
    return {
        "eps_list": None if a.eps is None else list(a.eps),
        "attacks": {  # an attack set to null (a profile's overlay) is left out
            k: v for k, v in OmegaConf.to_container(a.attacks, resolve=True).items() if v is not None
        },
        "profile": OmegaConf.to_container(a.profile, resolve=True),
        "subset": a.subset,
        "data_root": cfg.dataset.root,
        "thresholds": OmegaConf.to_container(a.thresholds, resolve=True),
    }


def _named_run(cfg: DictConfig) -> tuple[DictConfig, RunDir]:
    """The run to audit: ``audit.run`` (a key or path; its stored config names the reference), else the run
    the training config names."""
    a = cfg.audit
    if not a.get("run"):
        return cfg, RunDir(cfg.store, run_key(cfg))
    run = RunDir.at(a.run) if "/" in str(a.run) else RunDir(cfg.store, str(a.run))
    if not run.config.exists():
        raise ValueError(f"audit.run={a.run}: no run at {run.path} (expected {run.config})")
    cfg, resolved, root = (
        cfg.copy(),
        checked_config(run),
        cfg.dataset.root,
    )  # an edited config.yaml: refused now
    with open_dict(cfg):
        for k in ("dataset", "model", "loss", "trainer", "seed"):
            cfg[k] = resolved[k]
        cfg.dataset.root = root  # where the data is on this machine, not where the run was trained
        cfg.store = str(run.path.parent)
    return cfg, run


def audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit the run that the config names (and its CE reference); write the report."""
    device = resolve_device(cfg.device)
    cfg, run = _named_run(cfg)
    a = cfg.audit
    if not run.finished:
        raise ValueError(
            f"run {run.key} is not finished; train it first: python -m pclc.train "
            f"dataset={cfg.dataset.name} model={cfg.model.name} loss={cfg.loss.name}"
        )
    checked_config(run)  # before a reference run is trained from it
    ref_run = None
    ref = audit_reference(cfg, a.reference)
    if ref is not None:
        ref_run = RunDir(cfg.store, run_key(ref))
        if not ref_run.finished:
            from pclc.train import train

            log.info("training the reference run %s", ref_run.key)
            train(ref)
    kw = audit_settings(cfg)
    audits = [audit_run(run, device, reference_run=ref_run, **kw)]
    if ref_run is not None and a.include_reference:
        audits.append(audit_run(ref_run, device, **kw))
    files = write_audit_report(
        audits, Path(a.out_dir), paper_rows(cfg.dataset.name, cfg.model.name), config_yaml=config_yaml(cfg)
    )
    for x in audits:
        log.info("%s: %s", x.run, x.verdict_reason)
    return {"audits": audits, "files": [str(f) for f in files]}


@hydra.main(config_path=str(CONFIG_DIR), config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.jobs import run_job

    return run_job(audit, cfg)
