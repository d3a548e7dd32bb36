"""Seconds per attacked example against the evaluation batch size, for SPSA and PGD on LeNet-5.

    python scripts/bench_attack_batch.py          # writes results/bench-attack-batch-<device>.{md,json}
    python scripts/bench_attack_batch.py --tiny   # seconds; used by the test suite

SPSA forwards ``max_batch_size`` (64) copies of each example of a batch at once, so at the evaluation's
usual batch of 1000 one forward holds 64,000 images and spills every cache; this measures where the
per-example cost is lowest (configs/attack/spsa.yaml's ``batch_size`` comes from it). One SPSA
iteration and 10 PGD steps are timed on an untrained LeNet-5 (cost does not depend on the weights)
and scaled to the paper's budgets (SPSA 10 iterations, PGD 40 steps) over 10,000 test images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pclc.attacks import attack_config, build_attack
from pclc.config import group_config
from pclc.costs import device_slug
from pclc.files import atomic_write_json, atomic_write_text
from pclc.models import create_model
from pclc.store import provenance


def per_example(attack, model, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Seconds per example of ``attack`` on ``model`` over ``x`` in batches of ``batch`` (eps 0.3)."""
    attack(model, x[:batch], y[:batch], 0.3, 0)  # warm-up
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        attack(model, x[i : i + batch], y[i : i + batch], 0.3, i)
    return (time.perf_counter() - t) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few images (tests)")
    ap.add_argument("--out", default=None, help="output path without suffix")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 1, 28).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spsa_batches, pgd_batches = ([2, 8], [2, 8]) if args.tiny else ([1000, 100, 20, 10, 5, 1], [1000, 250, 100])
    n = 16 if args.tiny else 1000
    x, y = torch.rand(n, 1, 28, 28, device=device), torch.randint(0, 10, (n,), device=device)
    spsa = {k: v for k, v in group_config("attack", "spsa").items() if k != "_target_"}
    pgd = {k: v for k, v in group_config("attack", "pgd").items() if k != "_target_"}
    rows = []
    for attack, batches, params, scale in (
        ("spsa", spsa_batches, {**spsa, "nb_iter": 1}, float(spsa["nb_iter"])),
        ("pgd", pgd_batches, {**pgd, "nb_iter": 10}, float(pgd["nb_iter"]) / 10),
    ):
        for b in batches:
            k = min(n, max(b, 200 if not args.tiny else b))  # at least 200 examples (one batch if larger)
            s = per_example(build_attack(attack_config(attack, **params)), model, x[:k], y[:k], b) * scale
            rows.append(
                {
                    "attack": attack,
                    "batch": b,
                    "examples_timed": k,
                    "seconds_per_example": s,
                    "minutes_per_10k": s * 1e4 / 60,
                }
            )
            print(rows[-1], flush=True)
    prov = provenance(device)
    res = {
        "mode": "tiny" if args.tiny else "standard",
        "model": "lenet5 (28x28x1, untrained)",
        "budgets": {"spsa": spsa, "pgd": pgd},
        "rows": rows,
        "device": {k: prov[k] for k in ("device", "command", "commit", "date")},
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out or f"results/bench-attack-batch-{device_slug(device)}")
    lines = [
        f"# Attack cost vs evaluation batch size (LeNet-5, {prov['device']}, {torch.get_num_threads()} threads)",
        "",
        f"- command: `{prov['command']}`",
        f"- commit: `{prov['commit']}`",
        f"- date: {prov['date']}",
        f"- mode: {res['mode']}; one seed; SPSA {spsa['nb_iter']} iterations x {spsa['nb_sample']} samples, "
        f"PGD {pgd['nb_iter']} steps, scaled from 1 SPSA iteration / 10 PGD steps",
        "",
        "| attack | batch | examples timed | ms per example | minutes per 10k |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['attack']} | {r['batch']} | {r['examples_timed']} | {1e3 * r['seconds_per_example']:.1f} | "
        f"{r['minutes_per_10k']:.1f} |"
        for r in rows
    ]
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
