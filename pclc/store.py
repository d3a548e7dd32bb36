"""The run store: a trained model is keyed by a hash of the config that determines its weights.

``runs/<key>/`` holds ``config.yaml`` (resolved), ``checkpoint.pt`` (last epoch, atomic),
``warmup.pt`` (the end of phase 1, reused by PC+LC), ``metrics.json`` (per epoch), ``model.pt``
(final weights) and ``summary.json`` (written last: its presence means the run is finished).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

# Dataset fields that say where the data is and how large its files are, not what it is: never part of a
# run's identity.
log = logging.getLogger(__name__)

_DATASET_LOCATION = ("root", "download", "examples", "classes")


def _without_hydra_keys(d: Any) -> Any:
    """``d`` without Hydra's ``_target_``/``_partial_``/``_convert_`` keys: where a loss's code lives is not
    what it computes (its ``name`` and parameters are), and keys stay those of runs trained before losses
    became Hydra targets."""
    if isinstance(d, dict):
        return {k: _without_hydra_keys(v) for k, v in d.items() if not str(k).startswith("_")}
    return d


def accel_numerics(accel: Any, device_type: str) -> dict[str, bool]:
    """Whether training runs in bf16 autocast and channels_last: ``auto`` means on for CUDA, off on CPU. Both
    change the trained weights (CE's float32 saturation is this project's central finding), so they are part
    of a run's identity when on."""
    accel = accel or {}
    pick = lambda v: device_type == "cuda" if v in (None, "auto") else bool(v)  # noqa: E731
    return {"bf16": pick(accel.get("bf16")), "channels_last": pick(accel.get("channels_last"))}


def _device_type(name: Any) -> str:
    name = str(name or "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name).type


def run_numerics(c: dict[str, Any]) -> dict[str, bool]:
    """bf16 / channels_last of a resolved training config, ``auto`` resolved for this machine's device; with
    ``from_zoo``, ``auto`` means the zoo's fp32 weights on any machine (a GPU would otherwise look for a bf16 run)."""
    return accel_numerics(c.get("accel"), "cpu" if c.get("from_zoo") else _device_type(c.get("device")))


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The parts of a training config that determine the trained weights (not logging or paths): fp32 runs keep
    the keys they always had; bf16 or channels_last training adds ``numerics`` (another key, another run)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    dataset = {k: v for k, v in c["dataset"].items() if k not in _DATASET_LOCATION}
    out = {
        "dataset": dataset,
        "model": c["model"],
        "loss": _without_hydra_keys(c["loss"]),
        "trainer": c["trainer"],
        "seed": c["seed"],
    }
    numerics = {k: v for k, v in run_numerics(c).items() if v}
    return {**out, "numerics": numerics} if numerics else out


def digest(obj: Any, n: int = 12) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def store_path(given: str | Path | None = None) -> str | Path:
    """A command line's run store: ``given``, else ``$PCLC_RUNS``, else ``runs`` (the configs' default)."""
    return given or os.environ.get("PCLC_RUNS", "runs")


def run_key(cfg: DictConfig) -> str:
    """``<dataset>-<model>-<loss>-s<seed>-<hash>``: readable, and unique per identity."""
    return f"{cfg.dataset.name}-{cfg.model.name}-{cfg.loss.name}-s{cfg.seed}-{digest(identity(cfg))}"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A hash of a model's weights (names, shapes, dtypes and bytes): what a result is tied to."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


STALE = ".stale-"  # in the name of a result set aside (other weights, or to be computed again): not a result


def is_stale(path: Path) -> bool:
    return STALE in Path(path).name


class RunDir:
    """Paths of one run in the store."""

    def __init__(self, store: str | Path, key: str):
        self.key = key
        self.path = Path(store) / key
        self.config = self.path / "config.yaml"
        self.checkpoint = self.path / "checkpoint.pt"
        self.warmup = self.path / "warmup.pt"
        self.metrics = self.path / "metrics.json"
        self.model = self.path / "model.pt"
        self.summary = self.path / "summary.json"
        self.eval = self.path / "eval"  # pclc.evaluate's per-attack results
        self.adv = self.path / "adv"  # transfer examples crafted on this run (it is a substitute)
        self.audit = self.path / "audit"  # pclc.audit's per-attack results (and audit/adv: transfer examples)

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """The run at a directory path."""
        path = Path(path)
        return cls(path.parent, path.name)

    @property
    def finished(self) -> bool:
        return self.summary.exists()

    def read_summary(self) -> dict[str, Any]:
        from pclc.files import CorruptFileError, read_json

        try:
            return read_json(self.summary)
        except CorruptFileError as e:
            raise CorruptFileError(
                f"{e}. Rerun the training command: the run resumes from its checkpoint and writes it again."
            ) from None

    def stored_identity(self) -> dict[str, Any]:
        """The identity recorded in ``config.yaml`` (what determined the weights)."""
        return OmegaConf.to_container(OmegaConf.load(self.config).identity)

    def stored_config(self) -> DictConfig:
        """The resolved training config the run was trained with (``config.yaml``'s ``resolved``), its bf16 and
        channels_last pinned to what its identity records (``auto`` would resolve to bf16 on a GPU machine and
        give a CPU-trained run another key there)."""
        stored = OmegaConf.load(self.config)
        cfg = OmegaConf.create(stored.resolved)
        numerics = (OmegaConf.to_container(stored.identity) or {}).get("numerics") or {}
        with open_dict(cfg):
            cfg.accel = {
                **(OmegaConf.to_container(cfg.accel) if cfg.get("accel") else {}),
                "bf16": bool(numerics.get("bf16")),
                "channels_last": bool(numerics.get("channels_last")),
            }
        return cfg


def runs_in(store: str | Path) -> list[RunDir]:
    """Every run of a store (a folder with a ``config.yaml``), by key."""
    root = Path(store)
    folders = sorted(p for p in root.iterdir() if (p / "config.yaml").exists()) if root.is_dir() else []
    return [RunDir(root, p.name) for p in folders]


class RunIntegrityError(ValueError):
    """A run directory does not hold what its key says (an edited config.yaml, weights that do not fit)."""


def checked_config(run: RunDir) -> DictConfig:
    """The run's stored training config, refused when its identity no longer hashes to the run's key (a
    hand-edited config.yaml: the weights were not trained with what it now says)."""
    cfg = run.stored_config()
    key = run_key(cfg)
    if key.rsplit("-", 1)[1] != run.key.rsplit("-", 1)[-1]:
        raise RunIntegrityError(
            f"{run.config} was edited: its config hashes to {key}, not to the run's key "
            f"{run.key}. Restore it, or train the edited config as a run of its own."
        )
    return cfg


def build_model(model_cfg) -> torch.nn.Module:
    """A registered model from a model config's fields (``name``, ``num_classes``, ``in_channels``,
    ``input_size``); its ``_target_`` must be the model registry's, and is never instantiated."""
    from pclc.models import create_model

    target = model_cfg.get("_target_")
    if target not in (None, "pclc.models.create_model"):
        raise RunIntegrityError(
            f"model config `_target_: {target}`: models are built by pclc.models.create_model (the model registry) only"
        )
    return create_model(
        str(model_cfg.name), int(model_cfg.num_classes), int(model_cfg.in_channels), int(model_cfg.input_size)
    )


def model_state(run: RunDir) -> dict[str, torch.Tensor]:
    """A finished run's final weights: ``model.pt``, or, when that is missing or unreadable, the final
    checkpoint (the same weights), from which ``model.pt`` is written again."""
    from pclc.files import CorruptFileError, atomic_torch_save, load_tensors

    try:
        return load_tensors(run.model)
    except (CorruptFileError, FileNotFoundError) as e:
        epochs = int(run.read_summary().get("epochs", -1))
        try:
            ckpt = load_tensors(run.checkpoint)
        except (CorruptFileError, FileNotFoundError):
            raise CorruptFileError(
                f"{run.model} cannot be read ({e}) and no final checkpoint holds its weights; retrain with force=true"
            ) from None
        if int(ckpt.get("epoch", -1)) != epochs:
            raise CorruptFileError(
                f"{run.model} cannot be read and the checkpoint is at epoch {ckpt.get('epoch')}"
                f", not {epochs}; retrain with force=true"
            ) from None
        log.warning("%s is missing or unreadable; restored from the final checkpoint", run.model)
        atomic_torch_save(ckpt["model"], run.model)
        return ckpt["model"]


def load_run(run: RunDir, device: torch.device) -> tuple[DictConfig, torch.nn.Module]:
    """The resolved config and the trained model (eval mode, frozen weights) of a finished run.

    The model is built through the model registry from the stored config's fields, never by instantiating
    a stored ``_target_``: a run directory is data, and a hand-edited config.yaml must not run code (nor
    silently change what is evaluated: :func:`checked_config`).
    """
    if not run.finished:
        raise ValueError(f"run {run.key} is not finished (no {run.summary}); train it first with pclc.train")
    cfg = checked_config(run)
    m, d = cfg.model, cfg.dataset
    if int(m.num_classes) != int(d.num_classes):
        raise ValueError(f"{run.config}: model.num_classes={m.num_classes} but dataset has {d.num_classes} classes")
    state, recorded = model_state(run), run.read_summary().get("weights")
    if recorded is not None and weights_digest(state) != recorded:  # a model.pt copied in from another run
        raise RunIntegrityError(
            f"{run.model} holds weights {weights_digest(state)}, not the {recorded} its summary "
            f"records: it was replaced. Retrain the run (force=true) or restore it from the zoo"
        )
    model = build_model(m)
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():  # no weight gradients (attacks would otherwise compute them every step)
        p.requires_grad_(False)
    return cfg, model.to(device)


def run_fingerprint(run: RunDir, model: torch.nn.Module) -> dict[str, str]:
    """What a result of ``run`` is tied to: the run's key and its weights' hash."""
    return {"run": run.key, "weights": weights_digest(model.state_dict())}


@functools.cache
def git_commit() -> str:
    """The commit of the code that runs, with ``-dirty`` when the work tree has changes.

    Read once, when pclc.store is imported: a commit made while a long run goes on does not relabel it.
    """
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        code = ["pclc", "configs", "scripts", "pyproject.toml", "constraints.txt"]  # not results/ (outputs)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *code],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def package_version() -> str:
    """pclc's installed version (a wheel outside a checkout has no commit: its version names the code)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pclc")
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else the platform's processor or architecture): the same seed
    trains other weights on another CPU type, so every result names it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    for line in lines:
        if line.lower().startswith("model name") and ":" in line:
            return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or platform.machine() or "unknown cpu"


@functools.cache
def _gpu_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    """The machine a computation ran on, as results and the zoo's manifest record it: the CPU model, torch's
    CPU kernel level (``get_cpu_capability``: AVX2 and AVX512 kernels sum in other orders), threads and torch
    version; on CUDA the GPU's name, driver and cuDNN version too."""
    out = {
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a plain str: checkpoints keep this record and load weights_only
    }
    if device.type == "cuda":
        out.update(
            gpu=torch.cuda.get_device_name(device),
            driver=_gpu_driver(),
            cudnn=str(torch.backends.cudnn.version()),
        )
    return out


# What makes the same seed train other weights, and the same weights give other float sums: the CPU's kernels,
# the GPU, torch. Threads are not here: a resume adopts the checkpoint's (pclc.train._run_threads).
MACHINE_TYPE = ("cpu_model", "cpu_capability", "gpu", "torch")


def same_machine_type(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`machine` records are one machine type."""
    return all(a.get(k) == b.get(k) for k in MACHINE_TYPE)


def machine_line(m: dict[str, Any]) -> str:
    """One line for a :func:`machine` record: ``AMD EPYC (AVX512), 2 threads, torch 2.14.1``."""
    if not m:
        return "unknown (not recorded)"
    head = f"{m['gpu']} (driver {m.get('driver', '?')}, cuDNN {m.get('cudnn', '?')}), host CPU " if m.get("gpu") else ""
    return (
        f"{head}{m.get('cpu_model', '?')} ({m.get('cpu_capability', '?')}), {m.get('threads', '?')} threads, "
        f"torch {m.get('torch', '?')}"
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def invocation() -> str:
    """The command line, as ``python -m pclc.<module> ...`` for our entrypoints."""
    import sys

    from pclc.tracking import is_secret

    prog = Path(sys.argv[0])
    head = f"python -m pclc.{prog.stem}" if prog.parent.name == "pclc" and prog.suffix == ".py" else prog.name
    args = [
        a.split("=", 1)[0] + "=***" if "=" in a and is_secret(a.split("=", 1)[0].split(".")[-1]) else a
        for a in sys.argv[1:]
    ]  # a credential given as an override is never written down
    return " ".join([head, *args])


def provenance(device: torch.device, command: str | None = None) -> dict[str, Any]:
    """What produced a result: command, commit, device, software versions and date."""
    return {
        "command": command or invocation(),
        "commit": git_commit(),
        "pclc": package_version(),
        "device": device_name(device),
        "machine": machine(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "pid": os.getpid(),
    }


git_commit()  # record the commit of the code as imported


def provenance_lines(prov: dict[str, Any], devices: list[str] | None = None) -> list[str]:
    """The provenance every results file opens with (markdown, CSV comments, captions, figure text)."""
    return [
        f"command: {prov['command']}",
        f"commit: {prov['commit']} (pclc {prov.get('pclc', '?')})",
        f"device: {', '.join(devices) if devices else prov['device']}",
        f"date: {prov['date']}",
    ]
