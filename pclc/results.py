"""The results layer: the one home of evaluation file names and of reading them back from the run store.

Every evaluation is one JSON file ``runs/<key>/eval/<stem>.json`` (:func:`result_stem` names it); transfer
examples crafted on a substitute are cached under ``runs/<substitute>/adv/`` (:func:`craft_cache`).
:func:`read_store` reads a store (or some of its runs) into one flat table, one record per (run, attack, eps,
source, budget, subset) in the manner of RobustBench's model-info records; tables, studies, the planner's measured
costs and the audit filter it. No other module builds an evaluation path or globs a run's ``eval/``.

One invariant is checked wherever a result is read for a table, a study or a summary. A result is shown only if

- its ``weights`` hash is the hash of the run's current ``model.pt``, and that is the hash the run's summary
  recorded when it was trained (a swapped or retrained ``model.pt`` leaves old numbers behind);
- for a transfer attack, the same holds for the substitute it was crafted on;
- its ``adv_accuracy`` and ``clean_accuracy`` are what its own per-example records give (a hand-edited number).

Anything else is set aside for that read with one line naming the file and why; nothing is deleted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from pclc.attacks.reference import STANDARD
from pclc.attacks.suite import SuiteItem
from pclc.files import CorruptFileError, read_json
from pclc.metrics import percent
from pclc.store import RunDir, is_stale, model_state, runs_in, weights_digest

DEFAULT_BATCH = 1000  # eval.batch_size's default (configs/evaluate.yaml): results at it keep their plain names

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _digest(model_file: str, mtime_ns: int, size: int) -> str:
    return weights_digest(model_state(RunDir.at(Path(model_file).parent)))


def run_weights(run: RunDir) -> str | None:
    """The hash of the run's current weights, or None (with the reason logged) when they are not the weights
    its summary records, or the run is not finished."""
    if not run.finished:
        return None
    recorded = run.read_summary().get("weights")
    try:
        st = run.model.stat()
        now = _digest(str(run.model), st.st_mtime_ns, st.st_size)
    except (CorruptFileError, FileNotFoundError) as e:
        log.warning("run %s set aside: %s", run.key, " ".join(str(e).split()))
        return None
    if now != recorded:
        log.warning(
            "run %s set aside: its model.pt holds weights %s, not the %s its summary records (replaced by "
            "hand?); retrain it (force=true) or restore it from the zoo",
            run.key,
            now,
            recorded,
        )
        return None
    return now


def problems(r: dict[str, Any], run: RunDir, substitute: RunDir | None = None) -> list[str]:
    """Why result ``r`` of ``run`` cannot be shown (empty: it can)."""
    out = []
    w = run_weights(run)
    if w is None or r.get("weights") != w:
        out.append(f"computed with weights {r.get('weights')}, the run holds {w or 'no usable weights'}")
    if r.get("source") == "transfer":
        if substitute is None and r.get("substitute"):  # the substitute run the result names, in the same store
            substitute = RunDir(run.path.parent, str(r["substitute"]))
        sw = run_weights(substitute) if substitute is not None else None
        if sw is None or r.get("substitute_weights") != sw:
            out.append(
                f"crafted on substitute weights {r.get('substitute_weights')}, the substitute holds "
                f"{sw or 'no usable weights'}"
            )
    rec = r.get("records") or {}
    label = rec.get("label")
    if not label or len(label) != r.get("n"):
        out.append("it has no per-example records to check its accuracy against")
        return out
    for field, pred in (("adv_accuracy", "adv_pred"), ("clean_accuracy", "clean_pred")):
        p = rec.get(pred) or []
        got = percent([a == b for a, b in zip(p, label)]) if len(p) == len(label) else None
        if got is None or abs(got - float(r.get(field, float("nan")))) > 1e-9:
            out.append(f"its {field} {r.get(field)} is not what its records give ({got})")
    return out


def read_result(path: Path, run: RunDir, substitute: RunDir | None = None) -> dict[str, Any] | None:
    """Result file ``path`` of ``run`` if it passes the invariant, else None (set aside, one line logged)."""
    try:
        r = read_json(path)
    except CorruptFileError as e:
        log.warning("result set aside: %s", " ".join(str(e).split()))
        return None
    why = problems(r, run, substitute)
    if why:
        log.warning("result %s set aside: %s", path, "; ".join(why))
        return None
    return r


# ------------------------------------------------------------------------------------------
# Names: where each evaluation lives
# ------------------------------------------------------------------------------------------
def result_stem(item: SuiteItem, subset: int | None, precision: str = "fp32", batch_size: int = DEFAULT_BATCH) -> str:
    """The file stem of ``item``'s result: ``<source>-<config>[-eps<e>][-sub<N>][-<precision>][-bs<B>]-<hash>``,
    the hash over the registered attack and its parameters (so another budget is another file). A random start
    is seeded per batch, so a stochastic attack's result at another batch size than the default is another
    result (``-bs<N>``)."""
    eps = "" if item.eps is None else f"-eps{item.eps:g}"
    sub = ("" if subset is None else f"-sub{subset}") + ("" if precision == "fp32" else f"-{precision}")
    if item.params.get("rand_init") and int(batch_size) != DEFAULT_BATCH:
        sub += f"-bs{int(batch_size)}"
    digest = hashlib.sha256(json.dumps([item.kind, item.params], sort_keys=True).encode()).hexdigest()[:8]
    return f"{item.source}-{item.config}{eps}{sub}-{digest}"


def eval_settings(ec) -> tuple[int | None, str, int]:
    """(subset, precision, batch size) of an evaluation config: what, beside the item, names its results."""
    sub = ec.eval.get("subset")
    return None if sub is None else int(sub), ec.eval.get("precision") or "fp32", int(ec.eval.batch_size)


def result_path(
    run: RunDir, item: SuiteItem, subset: int | None, precision: str = "fp32", batch_size: int = DEFAULT_BATCH
) -> Path:
    """Where ``item``'s result on ``subset`` (None: the full test set) lives in ``run``."""
    return run.eval / f"{result_stem(item, subset, precision, batch_size)}.json"


def result_file(run: RunDir, ec, item: SuiteItem) -> Path:
    """Where ``item``'s result under evaluation config ``ec`` lives in ``run``."""
    return result_path(run, item, *eval_settings(ec))


def craft_cache(substitute: RunDir, stem: str, batch_size: int, weights: str) -> Path:
    """The folder of transfer examples for result ``stem`` crafted on ``substitute`` (one ``<lo>-<hi>.pt`` per
    batch group): they depend on the substitute's weights and on the batches, so both name it."""
    return substitute.adv / f"{stem}-bs{int(batch_size)}-w{weights[:8]}"


def crafted_groups(substitute: RunDir, stem: str) -> int:
    """How many batch groups of result ``stem`` are already crafted on ``substitute`` (any batch size)."""
    folders = substitute.adv.glob(f"{stem}-bs*") if substitute.adv.exists() else []
    return max((len(list(d.glob("*.pt"))) for d in folders), default=0)


# ------------------------------------------------------------------------------------------
# Reading: one flat record per result
# ------------------------------------------------------------------------------------------
RECORD_COLUMNS = [
    "run", "dataset", "model", "loss", "adversarial", "method", "seed", "attack", "kind", "source", "eps", "budget",
    "subset", "precision", "n", "clean_accuracy", "accuracy", "max_linf", "seconds", "device", "weights",
    "substitute", "square_only", "file",
]  # fmt: skip
SQUARE = 1 + STANDARD.index("square")  # the aa_stage of AutoAttack's Square


def square_only(r: dict[str, Any]) -> float | None:
    """% of the result's images that only AutoAttack's Square broke (its gradient attacks left them robust); None
    where the result holds no stage record (another attack, or AutoAttack evaluated before stages were recorded)."""
    stage = (r.get("records") or {}).get("aa_stage")
    return None if not stage else 100.0 * sum(s == SQUARE for s in stage) / len(stage)


def method_of(run_config) -> str:
    """The paper's name for a run's method (a training config, dict or DictConfig): its loss, with ``+at`` when
    adversarially trained (Table 5)."""
    return run_config["loss"]["name"] + ("+at" if (run_config.get("trainer") or {}).get("adversarial") else "")


def _record(r: dict[str, Any], f: Path, run_config: dict) -> dict[str, Any]:
    adv = (run_config.get("trainer") or {}).get("adversarial")
    return {
        "run": r.get("run", f.parent.parent.name),
        "dataset": (run_config.get("dataset") or {}).get("name"),
        "model": (run_config.get("model") or {}).get("name"),
        "loss": (run_config.get("loss") or {}).get("name"),
        "adversarial": None if not adv else adv.get("attack"),  # NaN, not None, in a frame beside a string
        "method": method_of(run_config) if run_config.get("loss") else None,
        "seed": run_config.get("seed"),
        "attack": r.get("attack"),
        "kind": r.get("kind"),
        "source": r.get("source", "white"),
        "eps": r.get("eps"),
        "budget": json.dumps(r.get("params") or {}, sort_keys=True),
        "subset": r.get("subset"),
        "precision": r.get("precision", "fp32"),
        "n": r.get("n"),
        "clean_accuracy": r.get("clean_accuracy"),
        "accuracy": r.get("adv_accuracy"),
        "max_linf": r.get("max_linf"),
        "seconds": r.get("seconds"),
        "device": r.get("device"),  # the machine that evaluated (the zoo's manifest names the one that trained)
        "weights": r.get("weights"),
        "substitute": r.get("substitute"),
        "square_only": square_only(r),  # AutoAttack's sign of masked gradients
        "file": str(f),
    }


def run_results(run: RunDir, files: Iterable[Path] | None = None, checked: bool = True) -> list[dict[str, Any]]:
    """Flat records of ``run``'s results: those in ``files`` (default: every result file the run holds). With
    ``checked`` only results that pass the invariant (:func:`read_result`); unchecked reads (the planner's
    measured costs) skip files that cannot be read."""
    if files is None:
        files = sorted(run.eval.glob("*.json")) if run.eval.exists() else []
    files = [f for f in files if f.exists() and not is_stale(f)]
    if not files or (checked and run_weights(run) is None):
        return []
    config = OmegaConf.to_container(run.stored_config()) if run.config.exists() else {}
    out = []
    for f in files:
        if checked:
            r = read_result(f, run)
        else:
            try:
                r = read_json(f)
            except CorruptFileError:
                r = None
        if r is not None:
            out.append(_record(r, f, config))
    return out


def item_results(run: RunDir, ec, items: Iterable[SuiteItem]) -> list[tuple[SuiteItem, dict[str, Any]]]:
    """(item, record) for each of ``items`` that ``run`` holds a checked result of under ``ec``."""
    items = list(items)
    by_file = {str(result_file(run, ec, i)): i for i in items}
    return [(by_file[r["file"]], r) for r in run_results(run, [Path(f) for f in by_file])]


def read_store(store: Path | str, keys: Iterable[str] | None = None, checked: bool = True) -> pd.DataFrame:
    """Every result of the store's runs (or of the runs ``keys``) as one flat table (:data:`RECORD_COLUMNS`)."""
    runs = [RunDir(store, k) for k in keys] if keys is not None else runs_in(store)
    return pd.DataFrame([r for run in runs for r in run_results(run, checked=checked)], columns=RECORD_COLUMNS)
