"""Evaluation: clean accuracy and accuracy under each (attack, eps, source) of a suite, per-run JSON.

``python -m pclc.evaluate dataset=fmnist model=lenet5 loss=pclc attack/suite=table1`` evaluates the finished
run that the training config names (``from_zoo=true``: its weights from results/zoo); ``run_dir=runs/<key>``
evaluates a run directory. A suite's attack budgets are Hydra config (``suite.attacks.pgd.nb_iter=100``).
Results go to ``runs/<key>/eval/<source>-<attack>-eps<eps>[-sub<N>]-<hash>.json``, with the attack's parameters,
n, seconds, device and per-example records (label, clean prediction and top-5, adversarial prediction); finished
files are reused, and an interrupted attack resumes from its last batch group.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from pclc.attacks import build_attack
from pclc.attacks.paper import check_engine
from pclc.attacks.suite import SuiteItem, expand_suite
from pclc.config import CONFIG_DIR, resolve_device
from pclc.data import eval_tensors
from pclc.derived import substitute_cfg
from pclc.files import (
    CorruptFileError,
    atomic_torch_save,
    atomic_write_json,
    cached_tensor,
    load_tensors,
    read_json,
    remove_stale_temp,
)
from pclc.inputs import optional_whole
from pclc.locks import held, lock_path
from pclc.metrics import percent, predict, with_precision
from pclc.progress import bar
from pclc.results import craft_cache, result_path
from pclc.sanity import sanity_warnings
from pclc.store import (
    STALE,
    RunDir,
    digest,
    load_run,
    machine_line,
    provenance,
    run_fingerprint,
    run_key,
    same_machine_type,
)
from pclc.tracking import build_tracker, metric_key, run_identity
from pclc.zoo import restore, uses_records

log = logging.getLogger(__name__)


def craft(
    attack,
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | None,
    lo: int,
    hi: int,
    batch_size: int,
    cache: Path | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Adversarial examples for ``x[lo:hi]``, batch by batch (batch at offset i seeded 1000 + i), and what the
    attack reports per example beside them (AutoAttack: which of its attacks broke each).

    With ``cache`` (a directory; transfer attacks use one in the substitute's run) the group is saved as
    ``<lo>-<hi>.pt`` and reused: every target attacked from the same substitute gets the same examples,
    crafted once (a cached attack reports nothing beside them).
    """
    outs = []

    def run() -> torch.Tensor:
        outs.extend(
            attack.run(model, x[i : min(i + batch_size, hi)], y[i : min(i + batch_size, hi)], eps, 1000 + i)
            for i in range(lo, hi, batch_size)
        )
        return torch.cat([a for a, _ in outs])

    adv = cached_tensor(None if cache is None else cache / f"{lo}-{hi}.pt", run, x.device)
    if cache is not None or not outs or not all(e.keys() == outs[0][1].keys() for _, e in outs):
        return adv, {}  # a batch without a report leaves it out for the whole group
    return adv, {k: torch.cat([e[k] for _, e in outs]) for k in outs[0][1]}


def run_entry(
    entry: SuiteItem,
    target,
    source_model,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    group_batches: int,
    out: Path,
    header: dict[str, Any],
    cache: Callable[[int], Path] | None = None,
    engine: dict | None = None,
) -> dict[str, Any]:
    """Attack ``x`` in batches; checkpoint finished batch groups in ``<out>.partial``; write ``out``.

    An attack's own ``batch_size`` parameter (SPSA's: it forwards ``nb_sample`` copies of each example)
    replaces ``batch_size``. ``cache``: the batch size -> the folder for :func:`craft` (transfer attacks).
    ``engine``: ``{backend, chunk}`` for the paper's attacks; both backends give the same examples, so it is
    recorded in the result, not in its name.
    """
    if out.exists():
        try:
            done = read_json(out)
        except CorruptFileError as e:
            log.warning("%s; set aside, recomputing", e)
            done = None
        # results written before weights were recorded (no "weights" key) are taken as they are
        if done is not None and all(
            done.get(k, header.get(k)) == header.get(k) for k in ("run", "weights", "substitute_weights")
        ):
            return done
        if done is not None:
            log.warning(
                "%s was computed with other weights (%s, now %s); set aside, recomputing",
                out,
                done.get("weights"),
                header["weights"],
            )
        out.rename(out.with_name(f"{out.stem}{STALE}{time.strftime('%Y%m%d-%H%M%S')}.json"))
    batch_size = int(entry.params.get("batch_size", batch_size))
    folder = None if cache is None else cache(batch_size)
    partial = out.with_suffix(".partial.pt")
    fresh = {"n": 0, "adv_pred": [], "seconds": 0.0, "linf": [], "l2": []}
    done = load_tensors(partial) if partial.exists() else fresh
    if done.get("weights", header["weights"]) != header["weights"] or "l2" not in done:  # other weights, or a
        done = fresh  # partial from before per-example L2 norms were recorded: redone
    here = header["provenance"]["machine"]
    if done.get("machine") and not same_machine_type(done["machine"], here):
        log.warning(
            "%s was begun on %s, this machine is %s: redone here, so the number is one machine's measurement",
            partial,
            machine_line(done["machine"]),
            machine_line(here),
        )
        done = fresh
    done["weights"] = header["weights"]
    attack = build_attack(entry.attack, engine=engine)
    n = len(y)
    step = batch_size * group_batches
    shown = bar(n, out.stem, "img")
    shown.update(done["n"])  # resumed: what the partial file holds
    while done["n"] < n:
        t0 = time.perf_counter()
        lo, hi = done["n"], min(done["n"] + step, n)
        adv, extras = craft(attack, source_model, x, y, entry.eps, lo, hi, batch_size, folder)
        pred = predict(target, adv, batch_size).argmax(1)
        delta = (adv - x[lo:hi]).flatten(1)
        reported = done.get("extras", {})
        done = {
            "n": hi,
            "adv_pred": done["adv_pred"] + pred.cpu().tolist(),
            "linf": done["linf"] + delta.abs().amax(1).cpu().tolist(),
            "l2": done["l2"] + delta.norm(dim=1).cpu().tolist(),  # C&W is a minimum-L2 attack: its budget curve
            # an attack's per-example report, kept only while every group so far has it
            "extras": {
                k: reported.get(k, []) + v.cpu().tolist() for k, v in extras.items() if k in reported or lo == 0
            },
            "weights": header["weights"],
            "machine": here,  # a resume on another machine type starts again (above)
            "seconds": done["seconds"] + time.perf_counter() - t0,
        }
        atomic_torch_save(done, partial)
        shown.update(hi - lo)
        # a bar on a terminal; in a log, the finished line per cell (logged by evaluate) is the progress
        log.debug("%s: %d/%d examples attacked (%.1fs)", out.stem, hi, n, done["seconds"])
    shown.close()
    adv_pred = torch.tensor(done["adv_pred"])
    result = {
        **header,
        "attack": entry.config,
        "kind": entry.kind,
        "eps": entry.eps,
        "source": entry.source,
        "params": entry.params,
        "n": n,
        "seconds": done["seconds"],
        "batch_size": batch_size,
        "engine": dict(engine or {}),
        "adv_accuracy": percent(adv_pred == y.cpu()),
        "max_linf": max(done["linf"]) if done["linf"] else 0.0,
        "records": {
            **header["records"],
            "adv_pred": done["adv_pred"],
            "linf": done["linf"],
            "l2": done["l2"],
            **{k: v for k, v in done.get("extras", {}).items() if len(v) == n},
        },
    }
    atomic_write_json(out, result)
    partial.unlink(missing_ok=True)
    return result


def _substitute(cfg: DictConfig, run: RunDir, run_cfg: DictConfig, device) -> tuple[RunDir, torch.nn.Module]:
    """The black-box substitute's run (trained through the run store when missing) and its model."""
    if cfg.eval.get("substitute_run"):
        sub_run = RunDir.at(cfg.eval.substitute_run)
    else:
        sc = substitute_cfg(run_cfg, cfg.eval.substitute)
        sub_run = RunDir(run.path.parent, run_key(sc))
        if not sub_run.finished:
            from pclc.train import train  # (imports this module)

            log.info("training (with from_zoo: restoring) the black-box substitute %s", sub_run.key)
            train(
                OmegaConf.merge(
                    sc,
                    {
                        "store": str(sub_run.path.parent),
                        "logger": cfg.logger,
                        **{k: cfg.get(k) for k in ("from_zoo", "zoo_dir")},
                    },
                )
            )
    sub_cfg, model = load_run(sub_run, device)
    if (
        int(sub_cfg.dataset.num_classes) != int(run_cfg.dataset.num_classes)
        or sub_cfg.dataset.name != run_cfg.dataset.name
    ):
        raise ValueError(
            f"substitute {sub_run.key} was trained on {sub_cfg.dataset.name} with "
            f"{sub_cfg.dataset.num_classes} classes; the target uses {run_cfg.dataset.name} with "
            f"{run_cfg.dataset.num_classes}"
        )
    return sub_run, model


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate one finished run under ``cfg.suite``; returns clean and per-cell accuracies."""
    device = resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = False  # the engine drops finished rows: every new batch shape would be autotuned
    run = RunDir.at(cfg.run_dir) if cfg.get("run_dir") else RunDir(cfg.store, run_key(cfg))
    if cfg.get("from_zoo") and not cfg.get("run_dir"):  # the weights from results/zoo: nothing trains
        restore(run.key, cfg.store, cfg.get("zoo_dir"), records=uses_records(cfg))
    if not run.path.exists():
        raise ValueError(
            f"no run {run.key} in {run.path.parent}; train it first (python -m pclc.train dataset="
            f"{cfg.dataset.name} model={cfg.model.name} loss={cfg.loss.name}) or pass from_zoo=true"
        )
    precision = cfg.eval.get("precision") or "fp32"
    subset = optional_whole("eval.subset", cfg.eval.get("subset"))  # 1.5 is refused, never rounded
    for k in ("batch_size", "group_batches"):
        v = cfg.eval.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"eval.{k} must be an integer >= 1, got {v!r}")
    engine = check_engine(cfg.get("attack") or {})
    run_cfg, target = load_run(run, device)
    fingerprint = run_fingerprint(run, target)
    remove_stale_temp(run.eval)
    target = with_precision(target, precision)
    run_cfg.dataset.root = cfg.dataset.root  # the data may live elsewhere on this machine
    entries = expand_suite(cfg.suite, run_cfg.dataset, cfg.eval.get("param_overrides"))

    source_model, sub_run, sub_weights = target, None, None
    if any(e.source == "transfer" for e in entries):
        sub_run, sub_model = _substitute(cfg, run, run_cfg, device)
        sub_weights = run_fingerprint(sub_run, sub_model)["weights"]
        source_model = with_precision(sub_model, precision)

    x, y = eval_tensors(run_cfg.dataset, subset, device)
    if precision == "fp64":  # float64 images: the input gradient of a float64 loss must not round to float32
        x = x.double()
    if subset is not None and len(y) < subset:  # a -sub<N> file must hold N examples
        raise ValueError(f"eval.subset={subset} is more than {run_cfg.dataset.name}'s {len(y)} test examples")
    bs = int(cfg.eval.batch_size)
    logits = predict(target, x, bs)
    top5 = logits.topk(min(5, logits.shape[1]), 1).indices
    clean_acc = percent(logits.argmax(1) == y)
    records = {
        "label": y.cpu().tolist(),
        "clean_pred": logits.argmax(1).cpu().tolist(),
        "clean_top5": top5.cpu().tolist(),
    }
    prov = provenance(device)
    results = []
    for e in entries:
        transfer = e.source == "transfer"
        header = {
            **fingerprint,
            "substitute": sub_run.key if transfer else None,
            "precision": precision,
            "substitute_weights": sub_weights if transfer else None,
            "subset": subset,
            "clean_accuracy": clean_acc,
            "device": prov["device"],
            "provenance": prov,
            "records": records,
        }
        out = result_path(run, e, subset, precision, bs)
        t0 = time.perf_counter()
        with held(lock_path(run.path.parent, f"{run.key}.eval.{out.stem}"), f"evaluation {out.name}"):
            r = run_entry(
                e,
                target,
                source_model if transfer else target,
                x,
                y,
                bs,
                int(cfg.eval.group_batches),
                out,
                header,
                (lambda b, stem=out.stem: craft_cache(sub_run, stem, b, sub_weights)) if transfer else None,
                engine,
            )
        log.info(
            "%s %s eps=%s: %.2f%% (clean %.2f%%, %.1fs)",
            run.key,
            e.config,
            e.eps,
            r["adv_accuracy"],
            clean_acc,
            time.perf_counter() - t0,
        )
        results.append({k: v for k, v in r.items() if k != "records"} | {"file": str(out)})
    warnings = sanity_warnings(results, float(cfg.eval.get("warn_margin", 1.0)))
    for w in warnings:
        log.warning(w)
    summary = {
        "run": run.key,
        "clean_accuracy": clean_acc,
        "n": len(y),
        "subset": subset,
        "results": results,
        "warnings": warnings,
    }
    track(cfg, run, run_cfg, fingerprint, results, clean_acc, len(y), precision)
    return summary


def track(
    cfg: DictConfig, run: RunDir, run_cfg: DictConfig, fingerprint: dict, results: list[dict], clean_acc, n, precision
):
    """The evaluation in W&B: one run per model and suite (a stable id: a re-evaluation resumes it), tagged like
    the model's training run; accuracies under ``adv/<attack>/eps<eps>``, a results table and a plot of
    accuracy against eps per attack, the result files as an artifact."""
    import pandas as pd

    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    settings = [
        run.key,
        suite,
        cfg.eval.get("subset"),
        precision,
        OmegaConf.to_container(cfg.eval, resolve=True).get("param_overrides"),
    ]
    name, tags = run_identity(run_cfg, cfg)
    suite_name = (cfg.get("choices") or {}).get("suite") or "suite"
    tracker = build_tracker(
        cfg.logger,
        name=f"eval-{name}-{suite_name}",
        group=f"{run_cfg.dataset.name}-{run_cfg.model.name}",
        config={
            "run": run.key,
            "dataset": run_cfg.dataset.name,
            "model": run_cfg.model.name,
            "loss": run_cfg.loss.name,
            "adversarial": run_cfg.trainer.get("adversarial"),
            "seed": run_cfg.seed,
            "n": n,
            "precision": precision,
            "suite": suite,
        },
        job_type="eval",
        run_id=f"eval-{digest(settings, 16)}",
        tags=[*tags, f"suite:{suite_name}"],
    )
    tracker.log_table(
        "results",
        pd.DataFrame(
            [
                {  # one row per (attack, eps, source): plot accuracy against eps
                    "attack": r["attack"],
                    "kind": r["kind"],
                    "source": r["source"],
                    "eps": r["eps"],
                    "budget": json.dumps(r["params"], sort_keys=True),
                    "n": r["n"],
                    "adv_accuracy": r["adv_accuracy"],
                    "clean_accuracy": r["clean_accuracy"],
                    "run": run.key,
                }
                for r in results
            ]
        ),
    )
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r["eps"] is not None:
            label = r["attack"] if r["source"] == "white" else f"{r['source']}-{r['attack']}"
            curves.setdefault(label, []).append((float(r["eps"]), float(r["adv_accuracy"])))
    if curves:
        tracker.log_curves(
            "accuracy_vs_eps", {k: sorted(v) for k, v in curves.items()}, f"{name}: accuracy (%) against eps", "eps"
        )
    tracker.summary(
        {
            "clean_accuracy": clean_acc,
            **{metric_key(r["attack"], r["eps"], r["source"]): r["adv_accuracy"] for r in results},
        }
    )
    tracker.log_artifact(f"eval-{run.key}", "evaluation", [r["file"] for r in results], {"run": run.key, **fingerprint})
    tracker.finish(0)


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    from pclc.jobs import run_job

    return run_job(evaluate, cfg)


if __name__ == "__main__":  # run the importable module's main, so that launchers pickle its task by reference
    from pclc.evaluate import main as _main

    _main()
