"""Evaluation records that outlive one machine's run store.

A run store is local to one machine and one session, while an evaluation of the zoo's weights (the audit of six
models, reference AutoAttack over seeds, a study's arms) takes longer than a session. So the per-attack result files
of a zoo run (``runs/<key>/eval/*.json`` from pclc.evaluate, ``runs/<key>/audit/*.json`` from pclc.audit) are saved
beside its weights in ``results/zoo/<key>/records/`` (in pclc.record_codec's compact form, which reads back byte for
byte) and restored with them (:func:`pclc.zoo.restore_records`), so the same command resumes on any machine from what
is committed.

A restored record is trusted no more than one computed here: each carries the hash of the weights it was computed
on and its own provenance (the machine that computed it), and every reader checks the first (pclc.results,
pclc.audit.attacks.cached_correct) and reports the second. Only zoo runs have records (other weights exist on no
other machine); transfer examples (``audit/adv``, ``adv/``: tensors, and cheap to recraft) are not carried.

    python -m pclc.records save                   # every zoo run in $PCLC_RUNS (else runs)
    python -m pclc.records save --keys KEY ...    # some of them
    python -m pclc.records recode                 # rewrite records saved as plain text in the compact form
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pclc.files import atomic_write_bytes
from pclc.record_codec import ARRAYS, is_packed, named_arrays, pack, same_array
from pclc.store import RunDir, is_stale, runs_in, store_path
from pclc.zoo import CARRIED, ZooError, read_manifest, read_record, records_dir, zoo_dir

log = logging.getLogger(__name__)


def _store(dst: Path, stored: bytes, arrays: dict[str, bytes]) -> None:
    """Write a packed record (pclc.record_codec.pack) to ``dst``, its shared arrays first (the record names them)."""
    for name, blob in arrays.items():
        path = dst.parents[1] / ARRAYS / f"{name}.bin"
        if not (path.exists() and same_array(path.read_bytes(), blob)):
            atomic_write_bytes(path, blob)
    atomic_write_bytes(dst, stored)


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
            for src in sorted(f for f in (run.path / sub).glob("*.json") if not is_stale(f)):  # set aside: none
                dst = records_dir(run.key, zoo) / sub / f"{src.name}.gz"
                data = src.read_bytes()
                if dst.exists() and read_record(dst) == data:
                    continue
                _store(dst, *pack(data))
                written.append(dst)
    log.info("%d record(s) written to the zoo from %d run(s)", len(written), len(runs))
    return written


def recode(zoo: str | Path | None = None) -> list[Path]:
    """Rewrite the zoo's records saved as plain gzipped text in the codec's form (pclc.record_codec: the same bytes
    on reading, ~3x smaller) and remove shared arrays no record of their run names. A record that cannot be read
    is left as it is, and so are its run's arrays. Returns the files written."""
    written = []
    for rec in sorted(p for p in zoo_dir(zoo).glob("*/records") if p.is_dir()):
        named: set[str] | None = set()
        for path in sorted(f for sub in CARRIED for f in (rec / sub).glob("*.json.gz")):
            if (data := read_record(path)) is None:
                named = None  # what it names is unknown: keep every array
                continue
            if is_packed(stored := path.read_bytes()):
                arrays = named_arrays(stored)
            elif is_packed((packed := pack(data))[0]):
                _store(path, *packed)
                written.append(path)
                arrays = set(packed[1])
            else:
                arrays = set()  # the codec gains nothing on it: left as it is
            if named is not None:
                named |= arrays
        for orphan in sorted((rec / ARRAYS).glob("*.bin")) if named is not None else []:
            if orphan.stem not in named:
                orphan.unlink()
    log.info("%d record(s) rewritten in the codec's form", len(written))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pclc.records", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="copy the store's evaluation records of zoo runs into results/zoo/<key>/records")
    s.add_argument("--store", default=None, help="run store (default: $PCLC_RUNS, else runs)")
    s.add_argument("--keys", nargs="*", default=None, help="run keys (default: every zoo run in the store)")
    sub.add_parser("recode", help="rewrite the zoo's plain records in the codec's form (the same content, smaller)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = recode() if a.cmd == "recode" else save(store_path(a.store), a.keys)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(written)} record(s) written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
