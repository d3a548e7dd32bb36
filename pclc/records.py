"""Evaluation records that outlive one machine's run store.

A run store is local to one machine and one session, while an evaluation of the zoo's weights (the audit of six
models, reference AutoAttack over seeds, a study's arms) takes longer than a session. So the per-attack result files
of a zoo run (``runs/<key>/eval/*.json`` from pclc.evaluate, ``runs/<key>/audit/*.json`` from pclc.audit) are saved,
gzip-compressed, beside its weights in ``results/zoo/<key>/records/`` and restored with them
(:func:`pclc.zoo.restore_records`), so the same command resumes on any machine from what is committed.

A restored record is trusted no more than one computed here: each carries the hash of the weights it was computed
on and its own provenance (the machine that computed it), and every reader checks the first (pclc.results,
pclc.audit.attacks.cached_correct) and reports the second. Only zoo runs have records (other weights exist on no
other machine); transfer examples (``audit/adv``, ``adv/``: tensors, and cheap to recraft) are not carried.

    python -m pclc.records save                   # every zoo run in $PCLC_RUNS (else runs)
    python -m pclc.records save --keys KEY ...    # some of them
"""

from __future__ import annotations

import argparse
import gzip
import logging
from pathlib import Path

from pclc.files import atomic_write_bytes
from pclc.store import RunDir, runs_in, store_path
from pclc.zoo import CARRIED, ZooError, read_manifest, read_record, records_dir

log = logging.getLogger(__name__)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same record gives the same bytes


def save(store: str | Path, keys: list[str] | None = None, zoo: str | Path | None = None) -> list[Path]:
    """Copy the records of the store's zoo runs (``keys``, else every one) into the zoo; a record already there
    with the same content is left alone. Returns the files written. A key that is not a finished zoo run of the
    store is refused in one line before anything is written."""
    weights = {e["key"]: e["weights"] for e in read_manifest(zoo)}  # one read of the manifest
    runs = [RunDir(store, k) for k in keys] if keys else [r for r in runs_in(store) if r.key in weights]
    for run in runs:
        if not run.finished or run.key not in weights:
            raise ZooError(f"run {run.key} is not a finished zoo run of {store}: only zoo weights have records")
        if run.read_summary().get("weights") != weights[run.key]:
            raise ZooError(f"run {run.key} of {store} holds other weights than the zoo's (trained here): no records")
    written = []
    for run in runs:
        for sub in CARRIED:
            for src in sorted((run.path / sub).glob("*.json")):
                dst = records_dir(run.key, zoo) / sub / f"{src.name}.gz"
                data = src.read_bytes()
                if dst.exists() and read_record(dst) == data:
                    continue
                atomic_write_bytes(dst, _gz(data))
                written.append(dst)
    log.info("%d record(s) written to the zoo from %d run(s)", len(written), len(runs))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pclc.records", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="copy the store's evaluation records of zoo runs into results/zoo/<key>/records")
    s.add_argument("--store", default=None, help="run store (default: $PCLC_RUNS, else runs)")
    s.add_argument("--keys", nargs="*", default=None, help="run keys (default: every zoo run in the store)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = save(store_path(a.store), a.keys)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(written)} record(s) written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
