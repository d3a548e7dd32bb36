"""Evaluation records that outlive one machine's run store.

A run store is local to one machine and one session, while an evaluation of the zoo's weights (the audit of six
models, reference AutoAttack over seeds, a study's arms) takes longer than a session. So the per-attack result files
of a zoo run (``runs/<key>/eval/*.json`` from pclc.evaluate, ``runs/<key>/audit/*.json`` from pclc.audit) are saved,
gzip-compressed, beside its weights in ``results/zoo/<key>/records/`` and restored with them
(:func:`pclc.zoo.restore`), so the same command resumes on any machine from what is committed.

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

log = logging.getLogger(__name__)

CARRIED = ("eval", "audit")  # the run folders whose *.json files are records (not their subfolders)


def records_dir(key: str, zoo: str | Path | None = None) -> Path:
    """``results/zoo/<key>/records``: the records of one zoo run."""
    from pclc.zoo import zoo_dir

    return zoo_dir(zoo) / key / "records"


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)  # mtime 0: the same record gives the same bytes


def save(store: str | Path, keys: list[str] | None = None, zoo: str | Path | None = None) -> list[Path]:
    """Copy the records of the store's zoo runs (``keys``, else every one) into the zoo; a record already there
    with the same content is left alone. Returns the files written. A key that is not a finished zoo run of the
    store is refused in one line before anything is written."""
    from pclc.zoo import ZooError, has

    runs = [RunDir(store, k) for k in keys] if keys else [r for r in runs_in(store) if has(r.key, zoo)]
    for run in runs:
        if not run.finished or not has(run.key, zoo):
            raise ZooError(f"run {run.key} is not a finished zoo run of {store}: only zoo weights have records")
    written = []
    for run in runs:
        for sub in CARRIED:
            for src in sorted((run.path / sub).glob("*.json")):
                dst = records_dir(run.key, zoo) / sub / f"{src.name}.gz"
                data = src.read_bytes()
                if dst.exists() and _readable(dst) == data:
                    continue
                atomic_write_bytes(dst, _gz(data))
                written.append(dst)
    log.info("%d record(s) written to the zoo from %d run(s)", len(written), len(runs))
    return written


def _readable(path: Path) -> bytes | None:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        log.warning("record %s cannot be read (%s); skipped", path, e)
        return None


def restore(run: RunDir, zoo: str | Path | None = None) -> int:
    """Fill ``run``'s eval/ and audit/ with its zoo records that it lacks (a file already in the store is kept:
    it is this machine's); returns how many were restored. A damaged record is skipped with one line."""
    n = 0
    for sub in CARRIED:
        for src in sorted((records_dir(run.key, zoo) / sub).glob("*.json.gz")):
            dst = run.path / sub / src.name[: -len(".gz")]
            if dst.exists():
                continue
            data = _readable(src)
            if data is not None:
                atomic_write_bytes(dst, data)
                n += 1
    if n:
        log.info("run %s: %d evaluation record(s) restored from the zoo", run.key, n)
    return n


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
