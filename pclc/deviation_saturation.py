"""The deviations study's saturation table (finding 6): float32 saturation of every trained arm run and of the
black-box substitute its transfer attacks craft on, and how many of CE's survivors of the paper's PGD are
saturated examples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from pclc.analysis.saturation import saturation_probe
from pclc.config import resolve_device
from pclc.experiment import cell_suites, experiment_cells, train_cfg
from pclc.files import atomic_write_json
from pclc.reports import substitute_run
from pclc.results import read_result, run_results, run_weights
from pclc.store import RunDir, load_run, run_key


def saturation_of(run: RunDir, root: str, device) -> dict[str, float]:
    """pclc.audit's float32 saturation probe of a finished run on its full test set, cached in the run directory
    as ``saturation.json`` (beside eval/, whose files are attack results only)."""
    from pclc.data import eval_tensors

    path = run.path / "saturation.json"
    if (
        path.exists()
        and (cached := json.loads(path.read_text())).get("weights") == run_weights(run)
        and "p_y_one_idx" in cached
    ):
        sat = {k: v for k, v in cached.items() if k != "weights"}
    else:
        run_cfg, model = load_run(run, device)
        run_cfg.dataset.root = root
        x, y = eval_tensors(run_cfg.dataset, None, device)
        sat = {k: v for k, v in saturation_probe(model, x, y, indices=True).items() if k != "margin_hist"}
        atomic_write_json(path, {**sat, "weights": run.read_summary().get("weights")})
    return {**sat, **_survivors(run, sat)}


def _survivors(run: RunDir, sat: dict) -> dict[str, int]:
    """Of the examples the paper's PGD at eps 0.1 (full test set) leaves correct, how many have p_y == 1.0 and an
    all-zero CE gradient: whether CE's survival is float32 saturation, per example (issue 29)."""
    for rec in run_results(run):
        paper_pgd = rec["source"] == "white" and rec["attack"] == "pgd" and rec["eps"] == 0.1
        if not paper_pgd or rec["subset"] is not None or json.loads(rec["budget"]).get("nb_iter") != 40:
            continue
        r = read_result(Path(rec["file"]), run)  # the per-example records
        if r is None:
            continue
        rec = r["records"]
        alive = {i for i, (a, lab) in enumerate(zip(rec["adv_pred"], rec["label"])) if a == lab}
        return {
            "pgd01_survivors": len(alive),
            "pgd01_survivors_p_y_one": len(alive & set(sat["p_y_one_idx"])),
            "pgd01_survivors_zero_grad": len(alive & set(sat["zero_grad_idx"])),
        }
    return {}


def saturation(cfg: DictConfig) -> pd.DataFrame:
    """Float32 saturation of every trained arm run, and of the CE substitute transfer arms craft on (finding 6:
    is the substitute saturated like our CE target?), on the full test set."""
    device, rows, seen = resolve_device(cfg.device), [], set()
    for cell in experiment_cells(cfg):
        tc = train_cfg(cell, cfg)
        runs = [
            (
                cell.arm if cell.train_extra else "the paper's protocol",
                cell.method,
                RunDir(cfg.store, run_key(tc)),
            )
        ]
        for suite in cell_suites(cell, cfg):
            found = substitute_run(cell, cfg, suite)
            if found is not None:
                sc, run = found
                runs.append((f"transfer substitute ({sc.model.name})", sc.loss.name, run))
        for training, method, run in runs:
            if not run.finished or run.key in seen:
                continue
            seen.add(run.key)
            sat = saturation_of(run, tc.dataset.root, device)
            rows.append(
                {
                    "training": training,
                    "method": method,
                    "seed": cell.seed,
                    "run": run.key,
                    "share_p_y_one": 100 * sat["share_p_y_one"],
                    "share_zero_grad": 100 * sat["share_zero_grad"],
                    "margin_q10": sat["margin_q10"],
                    "margin_median": sat["margin_median"],
                    "margin_q90": sat["margin_q90"],
                    **{k: sat.get(k) for k in SURVIVORS},
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "training",
            "method",
            "seed",
            "run",
            "share_p_y_one",
            "share_zero_grad",
            "margin_q10",
            "margin_median",
            "margin_q90",
            *SURVIVORS,
        ],
    )


SURVIVORS = ["pgd01_survivors", "pgd01_survivors_p_y_one", "pgd01_survivors_zero_grad"]
