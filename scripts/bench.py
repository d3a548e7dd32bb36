"""Benchmark our pipeline against a reference-style one, side by side, on whatever device is present.

    python scripts/bench.py                 # make bench: writes results/bench-<device>.{md,json}
    python scripts/bench.py --tiny          # seconds; used by the test suite

For LeNet-5 and the cnn3 substitute on Fashion-MNIST (real data when present) and VGG-13 / ResNet-56 on
CIFAR-shaped data (synthetic, same shape and dtype, unless CIFAR-10 is on disk), it measures:
  1. a training epoch: ours (uint8 data on the device, batches by index, bf16 + channels_last on CUDA)
     vs the official code's style (torchvision dataset, DataLoader, per-sample ToTensor, fp32, batch 256,
     ``loss.item()`` every batch);
  2. PGD-40 (the paper's settings): ours (our engine, frozen weights, large batches) vs advertorch in a
     loop at the official notebook's batch size 32;
  3. a PC+LC training step vs a CE training step;
  4. FLOPs of a forward and a training step (forward x 3), the device's measured matmul peak, and the
     floor time of each measured task; how far above the floor each time is.
Where a full epoch or 10,000 attacked images would take too long (CPU), a stated number of batches or
images is timed and scaled linearly to the full size; the output says which.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pclc.attacks import build_attack
from pclc.config import compose, group_config
from pclc.costs import device_slug, forward_flops
from pclc.data import DeviceData, Split, load_splits
from pclc.files import atomic_write_json, atomic_write_text
from pclc.losses import get_loss
from pclc.models import create_model
from pclc.store import provenance
from pclc.train import Accel, train_epoch

REPEAT = 2  # best of two timings (1 in --tiny mode)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1, warmup: bool = False) -> float:
    """Best of ``repeat`` wall times of ``fn()`` (seconds), synchronised on CUDA; optionally one untimed run first."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_flops(device: torch.device, tiny: bool) -> tuple[float, str]:
    """Measured matmul throughput: bf16 8192^2 on CUDA, fp32 on CPU."""
    n = 512 if tiny else (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    reps = 3 if tiny else 10
    t = timed(lambda: [a @ b for _ in range(reps)], device, repeat=3)
    return 2 * n**3 * reps / t, f"{n}x{n} {str(dtype).replace('torch.', '')} matmul"


def dataset(name: str, root: str | None, tiny: bool) -> tuple[Split, Split, str]:
    """Real data when present, else synthetic data of the same shape (and say which)."""
    over = [f"dataset={name}", "dataset.download=false"] + ([f"dataset.root={root}"] if root else [])
    cfg = compose("train", over).dataset
    try:
        train, test = load_splits(cfg)
        return train, test, f"real {name}"
    except Exception:
        c, s, k = int(cfg.channels), int(cfg.size), int(cfg.num_classes)
        n_train, n_test = (2048, 512) if tiny else ((60000, 10000) if c == 1 else (50000, 10000))
        g = torch.Generator().manual_seed(0)

        def mk(n):
            return Split(
                torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8),
                torch.randint(0, k, (n,), generator=g),
            )

        return mk(n_train), mk(n_test), f"synthetic {c}x{s}x{s} uint8 (shape of {name})"


class PerSample(torch.utils.data.Dataset):
    """What torchvision's MNIST/CIFAR datasets do per item: a PIL image, then ToTensor."""

    def __init__(self, split: Split):
        from torchvision import transforms

        self.x = split.x.permute(0, 2, 3, 1).numpy()
        self.y = split.y.numpy()
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.to_tensor(img), int(self.y[i])


def reference_epoch(model, split: Split, device, batches: int, workers: int) -> float:
    """The official notebook's loop: DataLoader + per-sample ToTensor, fp32, batch 256, .item() each batch."""
    loader = torch.utils.data.DataLoader(
        PerSample(split), batch_size=256, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda"
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()

    def run():
        total = 0.0
        for i, (x, y) in enumerate(loader):
            if i == batches:
                break
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()

    return timed(run, device, repeat=REPEAT)


def our_epoch(model, split: Split, device, batches: int) -> float:
    data = DeviceData(Split(split.x[: batches * 256], split.y[: batches * 256]), device)
    accel = Accel.build({"bf16": "auto", "channels_last": "auto"}, model, device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = get_loss("ce", check_inputs=False)
    g = torch.Generator().manual_seed(0)
    return timed(lambda: train_epoch(model, data, loss, opt, 256, g, accel=accel), device, repeat=REPEAT, warmup=True)


def pgd_seconds(model, split: Split, device, n: int, batch: int, frozen: bool) -> float:
    x = split.x[:n].to(device).float() / 255
    y = split.y[:n].to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(not frozen)
    backend = "pclc" if frozen else "advertorch"  # ours: our engine; the reference: advertorch as it ships
    attack = build_attack(group_config("attack", "pgd"), engine={"backend": backend})
    eps = 0.1 if x.shape[1] == 1 else 0.04

    def run():
        for i in range(0, n, batch):
            attack(model, x[i : i + batch], y[i : i + batch], eps, i)

    t = timed(run, device, repeat=REPEAT)
    for p in model.parameters():
        p.requires_grad_(True)
    return t


def step_ratio(model, split: Split, device, steps: int, rounds: int = 5) -> dict[str, float]:
    """Seconds per training step with CE and with PC+LC on the same batch: best of ``rounds`` interleaved
    timings (CE, PC+LC, CE, ...), so drift and other load on the machine hit both alike."""
    x = split.x[:256].to(device).float() / 255
    y = split.y[:256].to(device)
    runs = {}
    for name in ("ce", "pclc"):
        loss_fn = get_loss(name, check_inputs=False)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def run(loss_fn=loss_fn, opt=opt):
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()

        run()  # warm-up
        runs[name] = run
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run, device) / steps)
    return {**best, "ratio": best["pclc"] / best["ce"]}


def bench_model(name: str, model_name: str, device, args, peak: float) -> dict:
    tiny = args.tiny
    train, test, source = dataset(name, args.root, tiny)
    k = 10
    c, s = train.x.shape[1], train.x.shape[2]
    make = lambda: create_model(model_name, k, c, s).to(device)  # noqa: E731
    full_batches = -(-len(train.y) // 256)
    cpu = device.type == "cpu"
    large = cpu and model_name not in ("lenet5", "cnn3")  # VGG-13 / ResNet-56 on a CPU: fewer batches, images
    batches = min(
        full_batches,
        2 if tiny else ((args.cpu_large_batches if large else args.cpu_batches) if cpu else full_batches),
    )
    ours = our_epoch(make(), train, device, batches) * full_batches / batches
    ref = reference_epoch(make(), train, device, batches, 0 if tiny else args.workers) * full_batches / batches
    n_full = 10000
    n_pgd = 16 if tiny else ((args.cpu_large_pgd_images if large else args.cpu_pgd_images) if cpu else n_full)
    ours_pgd = pgd_seconds(make(), test, device, n_pgd, n_pgd if cpu else 10000, frozen=True) * n_full / n_pgd
    # the reference loop (batch 32) is timed on fewer images and scaled: on a GPU it is launch-bound, so 10,000
    # images would spend minutes of a short GPU lease to measure the same rate
    n_ref = min(n_pgd, 256 if cpu else args.gpu_ref_pgd_images)
    ref_pgd = pgd_seconds(make(), test, device, n_ref, 32, frozen=False) * n_full / n_ref
    steps = step_ratio(make(), train, device, 2 if tiny else (3 if large else 20))
    fwd = forward_flops(make().eval(), train.x[:1].to(device).float())
    epoch_flops = 3 * fwd * len(train.y)
    pgd_flops = 40 * 2 * fwd * n_full  # forward + input-gradient backward (no weight gradients)
    return {
        "dataset": name,
        "model": model_name,
        "data": source,
        "train_images": len(train.y),
        "timed_batches": batches,
        "full_batches": full_batches,
        "pgd_images_timed": n_pgd,
        "pgd_reference_images_timed": n_ref,
        "epoch_ours_s": ours,
        "epoch_reference_s": ref,
        "epoch_speedup": ref / ours,
        "pgd40_ours_s": ours_pgd,
        "pgd40_reference_s": ref_pgd,
        "pgd_speedup": ref_pgd / ours_pgd,
        "pgd40_ours_images_per_s": n_full / ours_pgd,
        "pgd40_reference_images_per_s": n_full / ref_pgd,
        "step_ce_s": steps["ce"],
        "step_pclc_s": steps["pclc"],
        "pclc_over_ce": steps["ratio"],
        "forward_flops_per_image": fwd,
        "epoch_floor_s": epoch_flops / peak,
        "pgd40_floor_s": pgd_flops / peak,
        "epoch_over_floor": ours / (epoch_flops / peak),
        "pgd_over_floor": ours_pgd / (pgd_flops / peak),
    }


def markdown(res: dict) -> str:
    d = res["device"]
    lines = [
        f"# Benchmark on {d['name']}",
        "",
        f"- command: `{d['command']}`; commit `{d['commit']}`; {d['date']}",
        f"- torch {d['torch']}, python {d['python']}, {d['threads']} CPU threads; mode: {res['mode']}",
        f"- measured peak: {res['peak_tflops']:.3f} TFLOP/s ({res['peak_how']}); floors = FLOPs / peak",
        "- one process, one seed; times scaled linearly to a full epoch / 10,000 images where fewer were timed",
        "",
        "| task | ours | reference-style | speed-up | floor | ours / floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["models"]:
        tag = f"{r['model']} on {r['data']}"
        lines.append(
            f"| epoch: {tag} ({r['timed_batches']}/{r['full_batches']} batches timed) | "
            f"{r['epoch_ours_s']:.2f} s | {r['epoch_reference_s']:.2f} s | {r['epoch_speedup']:.1f}x | "
            f"{r['epoch_floor_s']:.3f} s | {r['epoch_over_floor']:.0f}x |"
        )
        lines.append(
            f"| PGD-40, 10k images: {tag} ({r['pgd_images_timed']} / {r['pgd_reference_images_timed']} "
            f"timed) | {r['pgd40_ours_s']:.1f} s ({r['pgd40_ours_images_per_s']:.0f} img/s) | "
            f"{r['pgd40_reference_s']:.1f} s ({r['pgd40_reference_images_per_s']:.0f} img/s) | "
            f"{r['pgd_speedup']:.1f}x | {r['pgd40_floor_s']:.3f} s | {r['pgd_over_floor']:.0f}x |"
        )
        lines.append(
            f"| step: PC+LC / CE, {tag} | {r['step_pclc_s'] * 1e3:.2f} ms | {r['step_ce_s'] * 1e3:.2f} ms (CE) "
            f"| ratio {r['pclc_over_ce']:.3f} | | |"
        )
    lines += [
        "",
        "Forward FLOPs per image: "
        + ", ".join(f"{r['model']} {r['forward_flops_per_image'] / 1e6:.2f} MFLOP" for r in res["models"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a few batches and images (tests)")
    ap.add_argument("--root", default=None, help="data root (default: dataset config's)")
    ap.add_argument("--out", default=None, help="output path without suffix (default results/bench-<device>)")
    ap.add_argument("--models", default="fmnist:lenet5,fmnist:cnn3,cifar10:vgg13,cifar10:resnet56")
    ap.add_argument("--cpu-batches", type=int, default=20, help="CPU: training batches timed per pipeline")
    ap.add_argument("--cpu-pgd-images", type=int, default=512, help="CPU: images attacked by our PGD")
    ap.add_argument("--cpu-large-batches", type=int, default=3, help="CPU, VGG-13/ResNet-56: batches timed")
    ap.add_argument("--cpu-large-pgd-images", type=int, default=64, help="CPU, VGG-13/ResNet-56: images attacked")
    ap.add_argument(
        "--gpu-ref-pgd-images", type=int, default=1024, help="GPU: images the reference loop attacks (scaled to 10k)"
    )
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    args = ap.parse_args()
    global REPEAT
    REPEAT = 1 if args.tiny else 2

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak, how = peak_flops(device, args.tiny)
    prov = provenance(device)
    res = {
        "mode": "tiny" if args.tiny else "standard",
        "peak_tflops": peak / 1e12,
        "peak_how": how,
        "device": {
            "name": prov["device"],
            "command": prov["command"],
            "commit": prov["commit"],
            "date": prov["date"],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "models": [],
    }
    for spec in args.models.split(","):
        name, model = spec.split(":")
        r = bench_model(name, model, device, args, peak)
        res["models"].append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    out = Path(args.out or f"results/bench-{device_slug(device)}")  # read by the reproduce planner
    atomic_write_json(out.with_suffix(".json"), res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
