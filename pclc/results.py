"""Reading numbers back from the run store: one invariant, checked wherever a result is read for a table, a
study or a summary. A result is shown only if

- its ``weights`` hash is the hash of the run's current ``model.pt``, and that is the hash the run's summary
  recorded when it was trained (a swapped or retrained ``model.pt`` leaves old numbers behind);
- for a transfer attack, the same holds for the substitute it was crafted on;
- its ``adv_accuracy`` and ``clean_accuracy`` are what its own per-example records give (a hand-edited number).

Anything else is set aside for that read with one line naming the file and why; nothing is deleted.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from pclc.io import CorruptFileError, read_json
from pclc.store import RunDir, model_state, weights_digest

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


def _percent(hits: int, n: int) -> float:
    return 100.0 * hits / n if n else 0.0  # as pclc.evaluate.percent


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
        got = _percent(sum(a == b for a, b in zip(p, label)), len(label)) if len(p) == len(label) else None
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
