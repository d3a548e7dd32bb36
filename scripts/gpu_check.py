"""make gpu-check: one command that shows what the single-GPU path does on the machine at hand.

    make gpu-check                          # on a GPU: under 10 minutes on one H100/H200
    GPU_CHECK_DEVICE=cpu make gpu-check     # the same steps at a tiny size on the CPU (CI runs this)

Steps, each timed, everything written under ``results/gpu-check-<device>/`` with a summary.md:
1. the test suite on this device (``-m "not slow"`` on a GPU; the GPU-path tests on the CPU);
2. ``scripts/bench.py`` on this device: ``bench-<device>.{md,json}``, the schema the planner reads;
3. the Fashion-MNIST Table 1 column from the zoo's weights (no training; on the CPU: tiny, on fake data);
4. the planner's whole-paper prediction from the bench just measured (``experiment=all plan=true``).
A step that fails is recorded and the rest still run; the command exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, cmd: list[str], folder: Path, env: dict, timeout: int) -> dict:
    t0 = time.perf_counter()
    log = folder / f"{name}.log"
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        code, out = 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s"
    log.write_text(f"$ {' '.join(cmd)}\n{out}")
    tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
    step = {
        "step": name,
        "command": " ".join(cmd),
        "exit": code,
        "seconds": round(time.perf_counter() - t0, 1),
        "last_line": tail[0][:300],
        "log": log.name,
    }
    print(f"[gpu-check] {name}: exit {code} in {step['seconds']} s: {step['last_line']}", flush=True)
    return step


# Shares of a --budget, from the first gpu-check on an H200 (results/gpu-check-nvidia-h200/): tests 96 s, the bench
# ~200 s (it ran out of its share there), Table 1's column from the zoo 61 s, the plan 17 s. A step that ends early
# leaves its time to the rest.
SHARES = {"tests": 2.5, "bench": 5.0, "table1": 1.5, "plan": 0.5}


def step_timeout(i: int, names: list[str], cap: int, deadline: float | None, now: float | None = None) -> int:
    """Seconds step ``i`` may run: ``cap``, or under a deadline its share of the time left among the steps still
    to run (at least 10 s, so a late step still starts and says why it stopped)."""
    if deadline is None:
        return cap
    left = deadline - (time.monotonic() if now is None else now)
    rest = [SHARES.get(n, 1.0) for n in names[i:]]
    return max(10, min(cap, int(left * rest[0] / sum(rest))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=os.environ.get("GPU_CHECK_DEVICE", "cuda"), choices=["cuda", "cpu"])
    ap.add_argument("--out", default=None, help="folder (default results/gpu-check-<device>)")
    ap.add_argument("--timeout", type=int, default=540, help="seconds per step at most")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all steps together (a short GPU lease): each step gets its share of what is left",
    )
    a = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(ROOT))
    from pclc.costs import device_slug
    from pclc.store import machine, machine_line

    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: GPU_CHECK_DEVICE=cuda but torch sees no usable GPU; GPU_CHECK_DEVICE=cpu runs the tiny check",
            file=sys.stderr,
        )
        return 2
    device = torch.device(a.device)
    tiny = a.device == "cpu"
    slug = device_slug(device)
    folder = Path(a.out or ROOT / "results" / f"gpu-check-{slug}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("PCLC_IN_GPU_CHECK"):  # its own test suite step must never start another gpu-check
        print("error: gpu_check.py started from inside gpu-check's test step", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PCLC_RUNS": str(folder / "runs"),
        "PYTHONUNBUFFERED": "1",
        "PCLC_IN_GPU_CHECK": "1",
    }
    py = sys.executable
    common = ["logger=none", f"device={a.device}", f"store={folder / 'runs'}", f"out_dir={folder / 'tables'}"]
    table = ["experiment=table1", "datasets=[fmnist]", *common]
    # the zoo's weights, every attack computed here: its records (computed on a CPU) would make the step a copy
    table += ["profile=tiny", "dataset_map={fmnist: fake}"] if tiny else ["from_zoo=true", "zoo_records=false"]
    steps = [
        (
            "tests",
            [
                py,
                "-m",
                "pytest",
                "-q",  # no -x: one GPU minute should report every failure, not the first
                "-p",
                "no:cacheprovider",
                *(["tests/test_gpu_path.py"] if tiny else []),
                "-m",
                "not slow",
            ],
        ),  # not slow: not itself
        (
            "bench",
            [
                py,
                "scripts/bench.py",
                *(["--tiny", "--models", "fmnist:lenet5", "--root", str(folder / "no-data")] if tiny else []),
                "--out",
                str(folder / f"bench-{slug}"),
            ],
        ),
        ("table1", [py, "-m", "pclc.reproduce", *table]),
        (
            "plan",
            [
                py,
                "-m",
                "pclc.reproduce",
                "experiment=all",
                "plan=true",
                *common,
                f"bench={folder / f'bench-{slug}.json'}",
                f"plan_out={folder / 'plan.md'}",
                *(["datasets=[fmnist]"] if tiny else []),
            ],
        ),
    ]
    done = []
    deadline = None if a.budget is None else time.monotonic() + a.budget
    for i, (name, cmd) in enumerate(steps):
        done.append(_run(name, cmd, folder, env, step_timeout(i, [n for n, _ in steps], a.timeout, deadline)))
    summary = {
        "device": machine_line(machine(device)),
        "mode": "tiny (CPU)" if tiny else "full",
        "budget_s": a.budget,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "steps": done,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# gpu-check on {summary['device']} ({summary['mode']})",
        "",
        f"- date: {summary['date']}",
        f"- folder: {folder}",
        f"- budget: {a.budget} s for all steps" if a.budget else "- budget: none (each step at most --timeout)",
        "",
        "| step | exit | seconds | last line |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['exit']} | {s['seconds']} | {s['last_line'].replace('|', '/')} |" for s in done]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s["exit"] == 0 for s in done) else 1


if __name__ == "__main__":
    raise SystemExit(main())
