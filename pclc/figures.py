"""The paper's figures from trained runs: t-SNE (Figures 1, 3), predictive behaviour (Figure 2), gaps.

Each figure is written as PNG to ``<out_dir>/figures/`` with a caption file naming the runs, and
logged to W&B in the experiment's group.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pclc.attacks import build_attack
from pclc.config import group_config, resolve_device
from pclc.data import eval_tensors
from pclc.evaluate import evaluate
from pclc.experiment import eval_cfg, out_dir, train_cfg
from pclc.files import atomic_write_json, atomic_write_text
from pclc.paper_data import paper_gaps
from pclc.store import RunDir, load_run, provenance, provenance_lines, run_key

log = logging.getLogger(__name__)

NAMES = {
    "ce": "CE",
    "pclc": "PC+LC",
    "gce": "GCE",
    "ce+at": "CE+AT",
    "gce+at": "GCE+AT",
    "pclc+at": "PC+LC+AT",
}


def _grid(spec: DictConfig) -> list[float]:
    n = int(round((float(spec.stop) - float(spec.start)) / float(spec.step))) + 1
    return [round(float(spec.start) + i * float(spec.step), 6) for i in range(n)]


def _load_cell(cell, cfg: DictConfig, device, subset: int | None):
    """A cell's finished run: its key, frozen model and test tensors (``subset`` first images, balanced)."""
    tc = train_cfg(cell, cfg)
    run = RunDir(cfg.store, run_key(tc))
    run_cfg, model = load_run(run, device)
    run_cfg.dataset.root = tc.dataset.root
    x, y = eval_tensors(run_cfg.dataset, subset, device)
    return run, run_cfg, model, x, y


def _figure_path(cfg: DictConfig, name: str) -> Path:
    path = out_dir(cfg) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _caption(path: Path, title: str, runs: dict[str, str], cfg: DictConfig, extra: list[str] = ()) -> Path:
    prov = provenance(resolve_device(cfg.device))
    lines = [
        f"{path.name}: {title}",
        f"protocol: {cfg.profile}" + ("" if cfg.profile == "full" else " (NOT the paper's protocol)"),
        *[f"run {k}: {v}" for k, v in runs.items()],
        *extra,
        *provenance_lines(prov),
        "config (experiment, resolved):",
        OmegaConf.to_yaml(
            OmegaConf.create(
                {
                    "experiment": OmegaConf.to_container(cfg.experiment, resolve=True),
                    "profile": cfg.profile,
                    "datasets": cfg.get("datasets"),
                }
            )
        ).rstrip(),
    ]
    cap = path.with_suffix(".caption.txt")
    atomic_write_text(cap, "\n".join(lines) + "\n")
    return cap


def _dataset_title(cells) -> str:
    c = cells[0]
    return f"{c.dataset} / {c.model}"


def behaviour(cfg: DictConfig, cells, tracker) -> list[Path]:
    """Figure 2: for FGSM and MIM over a fine eps grid, where newly successful attacks land."""
    from pclc.analysis import behaviour_from_eval_files, plot_behaviour

    exp = cfg.experiment
    out = []
    for cell in cells:
        ec = eval_cfg(cell, cfg, "demo")
        grid = _grid(exp.grid[ec.dataset.family])
        ec.suite = OmegaConf.create(
            {
                "families": [],
                "entries": [{"attack": a, "eps": grid} for a in exp.attacks],
                "attacks": {a: group_config("attack", a) for a in exp.attacks},
            }
        )
        res = evaluate(ec)
        panels = []
        for a in exp.attacks:
            files = [r["file"] for r in res["results"] if r["attack"] == a]
            panels.append((a.upper(), behaviour_from_eval_files(files)))
        name = f"{exp.name}-{cell.dataset}-{cell.model}-{cell.method}"
        path = _figure_path(cfg, name)
        title = (
            f"Predictive behaviour (paper Fig. 2) redone on {cell.dataset} / {cell.model} "
            f"({NAMES.get(cell.method, cell.method)})"
        )
        plot_behaviour(panels, path, title)
        atomic_write_json(
            path.with_suffix(".json"),
            {
                "provenance": provenance(resolve_device(cfg.device)),
                "run": res["run"],
                "eps_grid": grid,
                "panels": [{"attack": a, "rows": r} for a, r in panels],
            },
        )
        out += [path, _caption(path, title, {cell.label: res["run"]}, cfg, [f"eps grid: {grid}"])]
        tracker.log_image(name, path)
    return out


def tsne(cfg: DictConfig, cells, tracker) -> list[Path]:
    """Figures 1 and 3: t-SNE of penultimate features, CE beside PC+LC (optionally with FGSM successes)."""
    from pclc.analysis import plot_tsne, tsne_panels

    exp = cfg.experiment
    device = resolve_device(cfg.device)
    by_dataset: dict[str, list] = {}
    for c in cells:
        by_dataset.setdefault(c.dataset, []).append(c)
    out = []
    for dataset, group in by_dataset.items():
        panels, runs = [], {}
        for cell in group:
            run, run_cfg, model, x, y = _load_cell(cell, cfg, device, int(exp.n_points))
            x_adv = success = None
            if exp.get("adversarial"):
                a = exp.adversarial
                x_adv = build_attack(group_config("attack", a.attack))(model, x, y, float(a.eps), 0)
                with torch.no_grad():
                    success = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) != y)
            for p in tsne_panels(
                model,
                x.cpu(),
                y.cpu(),
                None if x_adv is None else x_adv.cpu(),
                None if success is None else success.cpu(),
                n=int(exp.n_points),
                seed=int(exp.seed),
            ):
                p["title"] = f"{NAMES.get(cell.method, cell.method)}: {p['title']}"
                panels.append(p)
            runs[cell.label] = run.key
        name = f"{exp.name}-{dataset}-{group[0].model}"
        path = _figure_path(cfg, name)
        adv = exp.get("adversarial")
        title = f"t-SNE of penultimate features ({exp.paper_figure} redone on {dataset} / {group[0].model})" + (
            f"; '+' = successful {adv.attack.upper()} eps={adv.eps}" if adv else ""
        )
        plot_tsne(
            panels, path, title, list(train_cfg(group[0], cfg).dataset.get("classes") or [])
        )  # the config's names
        out += [
            path,
            _caption(path, title, runs, cfg, [f"points: first {exp.n_points} test images, class-balanced"]),
        ]
        tracker.log_image(name, path)
    return out


def gaps(cfg: DictConfig, cells, tracker) -> list[Path]:
    """Mean probability gap p_y - max_{k!=y} p_k on the test set, CE vs PC+LC, beside the paper's."""
    from pclc.analysis import gap_stats, plot_gaps, probability_gaps

    device = resolve_device(cfg.device)
    paper = paper_gaps()
    rows, series, runs = [], {}, {}
    for cell in cells:
        run, _, model, x, y = _load_cell(cell, cfg, device, None)
        st = gap_stats(model, x, y)
        p = paper[(paper.dataset == cell.dataset) & (paper.model == cell.model) & (paper.method == cell.method)]
        rows.append(
            {
                "dataset": cell.dataset,
                "model": cell.model,
                "method": cell.method,
                "ours": st["mean"],
                "median": st["median"],
                "negative_share": st["negative_share"],
                "paper": float(p.mean_probability_gap.iloc[0]) if len(p) else None,
                "run": run.key,
            }
        )
        series[f"{cell.dataset} {NAMES.get(cell.method, cell.method)}"] = probability_gaps(model, x, y)
        runs[cell.label] = run.key
    folder = out_dir(cfg)
    prov = provenance(device)
    md = [
        "# Mean probability gap p_y − max_{k≠y} p_k on the test set",
        "",
        f"- protocol: {cfg.profile}",
        f"- command: `{prov['command']}`",
        f"- commit: `{prov['commit']}` (pclc {prov.get('pclc', '?')})",
        f"- device: {prov['device']}",
        f"- date: {prov['date']}",
        "",
        "| dataset | model | method | ours | paper | run |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['dataset']} | {r['model']} | {NAMES.get(r['method'], r['method'])} | {r['ours']:.3f} | "
        f"{'—' if r['paper'] is None else format(r['paper'], '.3f')} | `{r['run']}` |"
        for r in rows
    ]
    atomic_write_text(folder / "gaps.md", "\n".join(md) + "\n")
    atomic_write_json(folder / "gaps.json", {"provenance": prov, "rows": rows})
    out = [folder / "gaps.md", folder / "gaps.json"]
    path = _figure_path(cfg, "gaps")
    plot_gaps(series, path, "Probability gap p_y − max p_k on the test set")
    out += [path, _caption(path, "probability gaps", runs, cfg)]
    tracker.log_image("gaps", path)
    return out


KINDS = {"behaviour": behaviour, "tsne": tsne, "gaps": gaps}


def write(cfg: DictConfig, cells, tracker) -> list[Path]:
    kind = cfg.experiment.kind
    if kind not in KINDS:
        raise ValueError(f"unknown experiment kind {kind!r}; known: table, all, {', '.join(KINDS)}")
    return KINDS[kind](cfg, cells, tracker)
