"""The model zoo: the weights behind every committed number, with a manifest a reader can check.

``results/zoo/manifest.json`` lists one entry per trained model (RobustBench's model-info records, flat):
its short name (``fmnist-lenet5-pclc-s0``), run key, dataset / model / method / seed / recipe, the sha256 of
its weights file, the ``weights`` hash that results record, its clean accuracy and the machine that trained
it. Beside it, per model, ``<key>/model.safetensors`` (or a URL with its sha256, for models too large for
git), ``<key>/config.yaml`` (the run's resolved training config: its identity hashes to the key) and
``<key>/summary.json`` (the run's training summary and provenance) and ``<key>/metrics.json`` (its per-epoch
curves); ``<key>/records/`` holds what was evaluated on those weights so far (pclc.records: an evaluation longer
than one machine's session resumes from it on the next).

    from pclc.zoo import load
    cfg, model = load("fmnist-lenet5-pclc-s0")          # by name or run key; eval mode, hash-checked

Weights are the unit of reproduction: the same seed trains other weights on another CPU type, while the same
weights give the same numbers. ``from_zoo=true`` (``make table1 FROM=zoo``) fills the run store from here and
trains nothing; ``python -m pclc.reproduce ... stage=export`` adds an experiment's trained runs.
One run no experiment names (a learning curve's): ``python -m pclc.zoo --run KEY --name NAME --method M --arm A
<overrides of python -m pclc.train that retrain it>`` (refused unless they give its key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from pclc.errors import UserError
from pclc.files import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from pclc.locks import held
from pclc.record_codec import ARRAYS, RecordError, unpack
from pclc.store import RunDir, build_model, run_key, store_path, weights_digest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1


class ZooError(UserError, ValueError):
    """A zoo entry that is missing, damaged or does not match its manifest (one line, exit 2)."""


def zoo_dir(path: str | Path | None = None) -> Path:
    """The zoo folder: ``path``, else ``$PCLC_ZOO``, else ``results/zoo`` beside the package in a checkout
    (the working directory's ``results/zoo`` for an installed wheel)."""
    if path:
        return Path(path)
    if os.environ.get("PCLC_ZOO"):
        return Path(os.environ["PCLC_ZOO"])
    here = Path(__file__).resolve().parent.parent / "results" / "zoo"
    return here if here.parent.is_dir() else Path("results") / "zoo"


def read_manifest(zoo: str | Path | None = None) -> list[dict[str, Any]]:
    """The manifest's entries (none when the zoo has no manifest yet)."""
    path = zoo_dir(zoo) / MANIFEST
    if not path.exists():
        return []
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), list):
        raise ZooError(f"{path} is not a pclc zoo manifest (format {FORMAT} with a 'models' list)")
    return data["models"]


def find(name: str, zoo: str | Path | None = None) -> dict[str, Any]:
    """The entry whose name, alias or run key is ``name``."""
    models = read_manifest(zoo)
    for e in models:
        if name in (e["name"], e["key"], *e.get("aliases", [])):
            return e
    names = ", ".join(e["name"] for e in models[:6]) + (", ..." if len(models) > 6 else "")
    raise ZooError(
        f"the zoo ({zoo_dir(zoo)}) has no model {name!r}" + (f"; it has {names}" if models else " (no manifest)")
    )


def has(key: str, zoo: str | Path | None = None) -> bool:
    return any(e["key"] == key for e in read_manifest(zoo))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checked_file(path: Path, sha256: str, what: str) -> Path:
    if not path.exists():
        raise ZooError(
            f"{path} is missing: the zoo's manifest lists it as {what}. Restore it (git checkout "
            f"results/zoo) or export the run again (stage=export)"
        )
    got = sha256_of(path)
    if got != sha256:
        raise ZooError(
            f"{path}: sha256 {got[:16]}... differs from the manifest's {sha256[:16]}... (the file was "
            f"changed or damaged); restore it (git checkout results/zoo), nothing was loaded"
        )
    return path


def weights_file(entry: dict[str, Any], zoo: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """The entry's weights file, sha256-checked. A URL entry is fetched once with torch.hub's hash-checked
    download into ``cache`` (the run store's ``.zoo-cache/``; default the zoo folder's)."""
    if entry.get("url"):
        folder = Path(cache) if cache else zoo_dir(zoo) / ".cache"
        dest = folder / f"{entry['sha256'][:16]}-{Path(entry['file']).name}"
        if not dest.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            try:
                torch.hub.download_url_to_file(entry["url"], str(tmp), hash_prefix=entry["sha256"], progress=False)
            except RuntimeError as e:  # torch.hub's hash check
                tmp.unlink(missing_ok=True)
                raise ZooError(
                    f"{entry['url']} ({entry['name']}): {' '.join(str(e).split())}; the download is "
                    f"not the manifest's file and was discarded"
                ) from None
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise ZooError(f"cannot download {entry['url']} ({entry['name']}): {e}") from None
            os.replace(tmp, dest)
        return _checked_file(dest, entry["sha256"], f"{entry['name']}'s weights (downloaded)")
    return _checked_file(zoo_dir(zoo) / entry["file"], entry["sha256"], f"{entry['name']}'s weights")


def entry_config(entry: dict[str, Any], zoo: str | Path | None = None) -> DictConfig:
    """The entry's resolved training config, refused when it does not hash to the entry's run key."""
    path = _checked_file(zoo_dir(zoo) / entry["config"], entry["config_sha256"], f"{entry['name']}'s config")
    cfg = RunDir.at(path.parent).stored_config()  # <key>/config.yaml: the run's own config file, as in the store
    if run_key(cfg) != entry["key"]:
        raise ZooError(f"{path} hashes to run {run_key(cfg)}, not to the manifest's {entry['key']}")
    return cfg


def load_state(
    entry: dict[str, Any], zoo: str | Path | None = None, cache: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """The entry's weights (safetensors: no code runs on load), checked against the manifest's sha256 and
    ``weights`` hash."""
    from safetensors.torch import load_file

    path = weights_file(entry, zoo, cache)
    state = load_file(str(path))
    if weights_digest(state) != entry["weights"]:
        raise ZooError(f"{path}: weights hash {weights_digest(state)} differs from the manifest's {entry['weights']}")
    return state


def load(
    name: str,
    device: str | torch.device = "cpu",
    zoo: str | Path | None = None,
    cache: str | Path | None = None,
) -> tuple[DictConfig, torch.nn.Module]:
    """A zoo model by name or run key: (its training config, the model in eval mode with frozen weights)."""
    entry = find(name, zoo)
    cfg = entry_config(entry, zoo)
    model = build_model(cfg.model)
    model.load_state_dict(load_state(entry, zoo, cache))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return cfg, model.to(device)


def uses_records(cfg) -> bool:
    """Whether a config takes the zoo's evaluation records for attacks (``from_zoo`` and not ``zoo_records=false``:
    gpu-check's GPU step and verify take the weights alone)."""
    return bool(cfg.get("from_zoo")) and bool(cfg.get("zoo_records", True))


def restore(key: str, store: str | Path, zoo: str | Path | None = None, records: bool = True) -> RunDir:
    """Fill the run store with the zoo's run ``key`` (config, weights, summary): a finished run that trains
    nothing; with ``records``, also the zoo's records of what was evaluated on it elsewhere. A store run that
    already holds other weights is refused (one table never mixes two trainings)."""
    entry = find(key, zoo)
    run = RunDir(store, entry["key"])
    if run.finished:
        have = run.read_summary().get("weights")
        if have != entry["weights"]:
            raise ZooError(
                f"the store's run {run.path} holds other weights ({have}) than the zoo's {entry['name']} "
                f"({entry['weights']}), trained elsewhere; use another store= for zoo runs, or move it "
                f"aside"
            )
        if records:  # what another machine evaluated on these weights, and this store lacks
            restore_records(run, zoo)
        return run
    entry_config(entry, zoo)  # hash-checked, and hashing to the entry's key
    cfg_path = zoo_dir(zoo) / entry["config"]
    state = load_state(entry, zoo, Path(store) / ".zoo-cache")
    summary = read_json(
        _checked_file(zoo_dir(zoo) / entry["summary"], entry["summary_sha256"], f"{entry['name']}'s summary")
    )
    metrics = read_json(
        _checked_file(zoo_dir(zoo) / entry["metrics"], entry["metrics_sha256"], f"{entry['name']}'s metrics")
    )
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, cfg_path.read_text())
    atomic_write_json(run.metrics, metrics)
    atomic_torch_save(state, run.model)
    summary.update(path=str(run.path), from_zoo={"name": entry["name"], "sha256": entry["sha256"]})
    atomic_write_json(run.summary, summary)  # last: its presence means the run is finished
    if records:
        restore_records(run, zoo)
    log.info(
        "run %s restored from the zoo (%s; trained on %s)",
        run.key,
        entry["name"],
        entry.get("trained_on", {}).get("line", "?"),
    )
    return run


CARRIED = ("eval", "audit")  # the run folders whose *.json files are evaluation records (not their subfolders)


def records_dir(key: str, zoo: str | Path | None = None) -> Path:
    """``results/zoo/<key>/records``: what was evaluated on a zoo run's weights (pclc.records saves it)."""
    return zoo_dir(zoo) / key / "records"


def read_record(path: Path) -> bytes | None:
    """A record's content (``records/<sub>/<name>.json.gz``, stored by pclc.record_codec, its shared arrays in
    ``records/arrays``), or None (with one line) when it cannot be read."""
    try:
        return unpack(path.read_bytes(), lambda name: (path.parents[1] / ARRAYS / f"{name}.bin").read_bytes())
    except (OSError, RecordError) as e:
        log.warning("record %s cannot be read (%s); skipped", path, e)
        return None


def restore_records(run: RunDir, zoo: str | Path | None = None) -> int:
    """Fill ``run``'s eval/ and audit/ with the zoo's records of it that the store lacks (a file already in the
    store is kept: it is this machine's); returns how many were restored. Each record carries the weights hash its
    readers check and the machine that computed it, which reports name."""
    n = 0
    for sub in CARRIED:
        for src in sorted((records_dir(run.key, zoo) / sub).glob("*.json.gz")):
            dst = run.path / sub / src.name[: -len(".gz")]
            if not dst.exists() and (data := read_record(src)) is not None:
                atomic_write_bytes(dst, data)
                n += 1
    if n:
        log.info("run %s: %d evaluation record(s) restored from the zoo", run.key, n)
    return n


def zoo_name(dataset: str, model: str, method: str, seed: int, arm: str = "") -> str:
    """``fmnist-lenet5-pclc-s0``; a study arm that retrains (GCE's recipe) adds its name: ``...-s0-gce_recipe``."""
    return f"{dataset}-{model}-{method}-s{seed}" + (f"-{arm}" if arm else "")


def export(run: RunDir, name: str, meta: dict[str, Any], zoo: str | Path | None = None) -> dict[str, Any]:
    """Add a finished run to the zoo (weights as safetensors, its config and summary) and its manifest entry;
    an entry of the same run is kept (a second name becomes an alias)."""
    from safetensors.torch import save_file

    from pclc.store import checked_config, machine_line, model_state

    if not run.finished:
        raise ZooError(f"run {run.key} is not finished; train it before exporting it to the zoo")
    folder = zoo_dir(zoo)
    with held(folder / ".manifest.lock", "the zoo's manifest"):
        models = read_manifest(zoo)
        old = next((e for e in models if e["key"] == run.key), None)
        summary = run.read_summary()
        if old is not None:
            if old["weights"] != summary.get("weights"):
                raise ZooError(
                    f"the zoo's {old['name']} ({run.key}) holds other weights ({old['weights']}) than "
                    f"{run.path} ({summary.get('weights')}): trained on another machine; the zoo keeps "
                    f"the first, nothing was exported"
                )
            if name != old["name"] and name not in old.get("aliases", []):
                old["aliases"] = sorted({*old.get("aliases", []), name})
                _write_manifest(folder, models)
            return old
        cfg = checked_config(run)
        state = {k: v.detach().cpu().contiguous() for k, v in model_state(run).items()}
        if weights_digest(state) != summary.get("weights"):
            raise ZooError(f"{run.model} does not hold the weights its summary records; retrain {run.key}")
        sub = folder / run.key
        sub.mkdir(parents=True, exist_ok=True)
        tmp = sub / f".model.safetensors.{os.getpid()}.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, sub / "model.safetensors")
        shutil.copyfile(run.config, sub / "config.yaml")
        atomic_write_json(sub / "summary.json", summary)
        atomic_write_json(sub / "metrics.json", read_json(run.metrics))  # per-epoch curves (the training report)
        prov = summary.get("provenance") or {}
        trained_on = {
            **(prov.get("machine") or {}),
            "device": prov.get("device"),
            "commit": prov.get("commit"),
            "date": prov.get("date"),
        }
        trained_on["line"] = (
            machine_line(prov.get("machine") or {})
            if prov.get("machine")
            else f"{prov.get('device', '?')} (CPU model not recorded), torch {prov.get('torch', '?')}"
        )
        entry = {
            "name": name,
            "key": run.key,
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            **meta,
            "seed": int(cfg.seed),
            "file": f"{run.key}/model.safetensors",
            "sha256": sha256_of(sub / "model.safetensors"),
            "bytes": (sub / "model.safetensors").stat().st_size,
            "url": None,
            "config": f"{run.key}/config.yaml",
            "config_sha256": sha256_of(sub / "config.yaml"),
            "summary": f"{run.key}/summary.json",
            "summary_sha256": sha256_of(sub / "summary.json"),
            "metrics": f"{run.key}/metrics.json",
            "metrics_sha256": sha256_of(sub / "metrics.json"),
            "weights": summary["weights"],
            "clean_accuracy": float(summary["test_accuracy"]),
            "trained_on": trained_on,
        }
        models.append(entry)
        _write_manifest(folder, models)
        return entry


def _write_manifest(folder: Path, models: list[dict[str, Any]]) -> None:
    atomic_write_json(folder / MANIFEST, {"format": FORMAT, "models": sorted(models, key=lambda e: e["name"])})


def update(fn, zoo: str | Path | None = None) -> None:
    """Rewrite every manifest entry through ``fn`` (under the manifest's lock): ``pclc.verify --record``."""
    folder = zoo_dir(zoo)
    with held(folder / ".manifest.lock", "the zoo's manifest"):
        _write_manifest(folder, [fn(e) for e in read_manifest(zoo)])


def export_run(store: str | Path, key: str, name: str, method: str, arm: str, train: list[str], zoo=None) -> dict:
    """Export one finished run that no experiment's cell names (a learning-curve run, say) under ``name``, its
    recipe ``train`` being the overrides of ``python -m pclc.train`` that retrain it: refused in one line, before
    anything is written, unless composing them gives the run's key."""
    from pclc.config import compose

    run = RunDir(store, key)  # export refuses an unfinished run, before anything is written
    cfg = compose("train", list(train))
    if run_key(cfg) != key:
        raise ZooError(f"`python -m pclc.train {' '.join(train)}` trains {run_key(cfg)}, not {key}: nothing exported")
    meta = {
        "method": method,
        "loss": cfg.loss.name,
        "trainer": next((t.split("=", 1)[1] for t in train if t.startswith("trainer=")), "paper"),
        "recipe": {"arm": arm, "train": list(train)},
        "role": "model",
    }
    return export(run, name, meta, zoo)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pclc.zoo", description="Export one finished run to the zoo.")
    p.add_argument("--run", required=True, help="the run key")
    p.add_argument("--name", required=True, help="its zoo name, e.g. fmnist-lenet5-ce+pgdat-s0-paper_schedule")
    p.add_argument("--method", required=True, help="its method, e.g. ce+pgdat")
    p.add_argument("--arm", required=True, help="what trained it, e.g. learning_curve.pgd_at")
    p.add_argument("--store", default=None, help="run store (default: $PCLC_RUNS, else runs)")
    p.add_argument("train", nargs="+", help="the overrides of python -m pclc.train that retrain it")
    a = p.parse_args(argv)
    try:
        entry = export_run(store_path(a.store), a.run, a.name, a.method, a.arm, a.train)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{entry['name']}: {entry['key']} (clean {entry['clean_accuracy']:.2f}%, {entry['trained_on']['line']})")


if __name__ == "__main__":
    main()
