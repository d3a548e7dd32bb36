"""The Fashion-MNIST column of Table 1, timed: our attack engine against advertorch as it ships.

    python scripts/bench_column.py            # make bench: results/bench-column-<device>.{md,json}
    python scripts/bench_column.py --n 200    # fewer examples per attack (scaled to the test set)

Needs the column's trained runs in the store (``make table1 DATASETS=fmnist`` trains them). For every
attack and eps of the column and each model, both backends attack the same first ``--n`` test examples
(batches of eval.batch_size), one after the other, and their adversarial predictions are compared
(they must be identical). Times are scaled linearly to the whole test set; training is each run's
measured epoch seconds (metrics.json) for the epochs the column trains (CE 2T, PC+LC T more). The
planner's prediction for the column on an empty store is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from bench import peak_flops  # scripts/bench.py, beside this file

from pclc.attacks import build_attack
from pclc.attacks.suite import expand_suite
from pclc.config import compose
from pclc.costs import CostModel, device_slug, forward_flops, load_bench
from pclc.data import eval_tensors
from pclc.experiment import eval_cfg, experiment_cells, train_cfg
from pclc.files import atomic_write_json, atomic_write_text, read_json
from pclc.metrics import predict
from pclc.plan import bench_path, plan_items
from pclc.store import RunDir, device_name, load_run, provenance, provenance_lines, run_key

GOAL_S = 20 * 60  # the performance issue's target for the whole column on a 2-core CPU


def _training_seconds(run: RunDir, phase: int | None) -> float:
    epochs = read_json(run.metrics)
    return sum(e["seconds"] for e in epochs if phase is None or e["phase"] == phase)


def bench_run(run: RunDir, ec, n: int, device: torch.device, peak: float) -> tuple[list[dict], int]:
    """The column's cells of one run, both backends; and the size of the test set they are scaled to."""
    cfg, model = load_run(run, device)
    x, y = eval_tensors(cfg.dataset, None, device)
    total = len(y)
    scale = total / min(n, total)
    per_pass = 2 * forward_flops(model, x[:1]) * len(y) / peak  # forward + input gradient, whole test set
    x, y = x[:n], y[:n]
    bs = min(int(ec.eval.batch_size), n)
    rows = []
    for e in expand_suite(ec.suite, cfg.dataset, ec.eval.get("param_overrides")):
        out = {}
        for backend in ("advertorch", "pclc"):
            attack = build_attack(e.attack, engine={"backend": backend})
            t0 = time.perf_counter()
            adv = torch.cat([attack(model, x[i : i + bs], y[i : i + bs], e.eps, 1000 + i) for i in range(0, n, bs)])
            out[backend] = (time.perf_counter() - t0) * scale, predict(model, adv, bs).argmax(1), adv
        (ref_s, ref_pred, ref_adv), (our_s, our_pred, our_adv) = out["advertorch"], out["pclc"]
        rows.append(
            {
                "model": f"{cfg.model.name}/{cfg.loss.name}",
                "attack": e.config,
                "eps": e.eps,
                "advertorch_s": round(ref_s, 2),
                "pclc_s": round(our_s, 2),
                "speedup": round(ref_s / our_s, 2),
                "floor_s": round(build_attack(e.attack).passes * per_pass, 2),
                "same_predictions": bool(torch.equal(ref_pred, our_pred)),
                "same_examples": bool(torch.equal(ref_adv, our_adv)),
                "accuracy": round(100.0 * (our_pred == y).float().mean().item(), 2),
            }
        )
        print(rows[-1], flush=True)
    return rows, total


def markdown(res: dict) -> str:
    col = res["column"]
    lines = [
        f"# The Fashion-MNIST Table 1 column, timed ({res['device']})",
        "",
        *(f"- {ln}" for ln in provenance_lines(res["provenance"])),
        f"- {res['n']} test examples per attack and model, scaled to {res['test_examples']}; one run, "
        f"seed 0 models; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- training: measured epoch seconds of the runs ({col['training_note']})",
        f"- floor: passes x (forward + input gradient FLOPs) / measured peak {res['peak_flops'] / 1e12:.3f} "
        f"TFLOP/s ({res['peak_how']}); attacks' floor {sum(r['floor_s'] for r in res['rows']) / 60:.1f} min",
        "",
        "| | advertorch (reference) | pclc engine | speed-up |",
        "|---|---|---|---|",
        f"| attacks | {col['attacks_advertorch_s'] / 60:.1f} min | {col['attacks_pclc_s'] / 60:.1f} min | "
        f"{col['attacks_advertorch_s'] / col['attacks_pclc_s']:.2f}x |",
        f"| training (CE 2T + PC+LC T epochs) | {col['training_s'] / 60:.1f} min | "
        f"{col['training_s'] / 60:.1f} min | 1x |",
        f"| **column** | **{col['advertorch_s'] / 60:.1f} min** | **{col['pclc_s'] / 60:.1f} min** | "
        f"{col['advertorch_s'] / col['pclc_s']:.2f}x |",
        "",
        f"Goal: {GOAL_S // 60} min. Identical adversarial predictions in every cell: "
        f"{'yes' if res['all_same'] else 'NO'}. The planner predicted "
        + (
            f"{res['planner_s'] / 60:.1f} min for the column on an empty store (ratio to this measurement "
            f"{res['planner_s'] / col['pclc_s']:.2f})."
            if res.get("planner_s")
            else "nothing (no benchmark)."
        ),
        "",
        "| model | attack | eps | advertorch s | pclc s | speed-up | floor s | pclc / floor | same predictions "
        "| accuracy % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['attack']} | {r['eps']} | {r['advertorch_s']} | {r['pclc_s']} | {r['speedup']}x | "
        f"{r['floor_s']} | {r['pclc_s'] / max(r['floor_s'], 1e-9):.0f}x | "
        f"{'yes' if r['same_predictions'] else 'NO'} | {r['accuracy']} |"
        for r in res["rows"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs")
    ap.add_argument("--dataset", default="fmnist")
    ap.add_argument("--n", type=int, default=1000, help="test examples per attack (default: one batch)")
    ap.add_argument("--out", default="results")
    ap.add_argument("--extra", nargs="*", default=[], help="reproduce overrides (tests: a small suite)")
    args = ap.parse_args()
    device = torch.device("cpu")  # the machine; a GPU column is the GPU issue's
    rcfg = compose(
        "reproduce",
        [
            "experiment=table1",
            f"datasets=[{args.dataset}]",
            f"store={args.store}",
            "logger=none",
            "device=cpu",
            f"out_dir={args.out}",
            *args.extra,
        ],
    )
    cells = experiment_cells(rcfg)
    runs = [RunDir(Path(args.store), run_key(train_cfg(c, rcfg))) for c in cells]
    missing = [r.key for r in runs if not r.finished]
    if missing:
        sys.exit(
            f"error: the column's runs are not trained in {args.store}: {missing}; train them first: "
            f"make table1 DATASETS={args.dataset}"
        )
    peak, peak_how = peak_flops(device, tiny=False)
    rows = []
    for cell, run in zip(cells, runs):
        got, test_examples = bench_run(run, eval_cfg(cell, rcfg, "table1", restrict=True), args.n, device, peak)
        rows += got
    ce, pclc = runs[0], runs[1]
    training = _training_seconds(ce, None) + _training_seconds(pclc, 2)
    ref = sum(r["advertorch_s"] for r in rows)
    ours = sum(r["pclc_s"] for r in rows)
    empty = compose(
        "reproduce",
        [
            "experiment=table1",
            f"datasets=[{args.dataset}]",
            "logger=none",
            "device=cpu",
            f"store={Path(args.out) / '.empty-store'}",
            f"out_dir={args.out}",
            *args.extra,
        ],
    )
    items = plan_items(empty, CostModel(Path(empty.store), load_bench(bench_path(empty))))[1]
    planner = None if any(v is None for v in items.values()) else sum(items.values())
    res = {
        "device": device_name(device),  # names the CPU model: FLOPs-scaled costs are that CPU's
        "provenance": provenance(device),
        "n": min(args.n, test_examples),
        "test_examples": test_examples,
        "rows": rows,
        "all_same": all(r["same_predictions"] and r["same_examples"] for r in rows),
        "planner_s": planner,
        "peak_flops": peak,
        "peak_how": peak_how,
        "column": {
            "training_s": round(training, 1),
            "attacks_advertorch_s": round(ref, 1),
            "attacks_pclc_s": round(ours, 1),
            "advertorch_s": round(training + ref, 1),
            "pclc_s": round(training + ours, 1),
            "training_note": f"{ce.key} all epochs, {pclc.key} phase 2",
        },
    }
    out = Path(args.out) / f"bench-column-{device_slug(device)}"
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
