"""Where the time of the paper's attacks and of training goes, by operator (torch.profiler).

    python scripts/profile_attacks.py [--run runs/<key>] [--n 1000]   # -> results/profile-<device>.md

On one batch of real Fashion-MNIST test images (``--n``, the evaluation's batch size), LeNet-5 (the
run's weights when ``--run`` is given, else a fresh initialisation: the split is much the same, the
frozen-row savings are not), it profiles PGD-40 and C&W (one binary-search step of 20 iterations, no early abort)
through advertorch and through our engine, and 20 training steps of batch 256, and groups operator
self-time into convolution forward / backward, max pooling, linear layers, activations and the rest.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pclc.attacks import build_attack
from pclc.config import compose, group_config
from pclc.costs import device_slug
from pclc.data import eval_tensors
from pclc.files import atomic_write_text
from pclc.models import create_model
from pclc.store import RunDir, load_run, provenance, provenance_lines

GROUPS = {
    "conv forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution"),
    "conv backward": ("aten::convolution_backward",),
    "max pool": ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"),
    "linear": ("aten::addmm", "aten::mm"),
    "relu": ("aten::relu_", "aten::clamp_min_", "aten::threshold_backward"),
}


def breakdown(fn) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values()) or 1.0
    shares = {g: 100.0 * sum(ops.get(k, 0.0) for k in keys) / total for g, keys in GROUPS.items()}
    shares["everything else"] = 100.0 - sum(shares.values())
    top = sorted(((k, 100.0 * v / total) for k, v in ops.items()), key=lambda kv: -kv[1])[:5]
    return wall, shares, top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    device = torch.device("cpu")
    if args.run:
        cfg, model = load_run(RunDir.at(args.run), device)
        ds, what = cfg.dataset, f"trained LeNet-5 `{Path(args.run).name}`"
    else:
        ds = compose("train", ["dataset=fmnist"]).dataset
        torch.manual_seed(0)
        model, what = (
            create_model("lenet5", 10, 1, 28).eval().requires_grad_(False),
            "LeNet-5, fresh initialisation",
        )
    x, y = eval_tensors(ds, None, device)
    x, y = x[: args.n], y[: args.n]
    tasks = {}
    for backend in ("advertorch", "pclc"):
        pgd = build_attack(group_config("attack", "pgd"), engine={"backend": backend})
        cw = build_attack(
            {
                **group_config("attack", "cw"),
                "binary_search_steps": 1,
                "max_iterations": 20,
                "abort_early": False,
            },
            engine={"backend": backend},
        )
        tasks[f"PGD-40, eps 0.1 ({backend})"] = lambda a=pgd: a(model, x, y, 0.1, 0)
        tasks[f"C&W, 20 iterations, no abort ({backend})"] = lambda a=cw: a(model, x, y, None, 0)
    train_model = create_model("lenet5", 10, 1, 28).train()
    opt = torch.optim.Adam(train_model.parameters(), lr=0.01)
    xt, yt = x[:256], y[:256]

    def steps():
        for _ in range(20):
            loss = torch.nn.functional.cross_entropy(train_model(xt), yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    tasks["training: 20 steps of batch 256"] = steps
    lines = [
        f"# Profile of attacks and training ({device_slug(device)}, {torch.get_num_threads()} threads)",
        "",
        *(f"- {ln}" for ln in provenance_lines(provenance(device))),
        f"- {what}; {len(y)} real Fashion-MNIST test images per attack call; one run of each, after a warm-up",
        "- share of operator self-time (torch.profiler); wall time measured with the profiler on",
        "",
        "| task | wall s | " + " | ".join(GROUPS) + " | everything else | top operators |",
        "|---|---|" + "---|" * (len(GROUPS) + 2),
    ]
    for name, fn in tasks.items():
        wall, shares, top = breakdown(fn)
        lines.append(
            f"| {name} | {wall:.2f} | "
            + " | ".join(f"{shares[g]:.0f}%" for g in [*GROUPS, "everything else"])
            + " | "
            + ", ".join(f"{k.replace('aten::', '')} {v:.0f}%" for k, v in top[:3])
            + " |"
        )
        print(lines[-1], flush=True)
    out = Path(args.out) / f"profile-{device_slug(device)}.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
