"""Clean-data metrics computed on the device with one host sync per call."""

from __future__ import annotations

import copy

import torch

from pclc.data import DeviceData


def probability_gap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per example ``p_y - max_{k != y} p_k`` (the paper's probability gap, Introduction and Fig. 3)."""
    p = logits.float().softmax(1)
    p_y = p.gather(1, target[:, None]).squeeze(1)
    p_false = p.scatter(1, target[:, None], float("-inf")).amax(1)
    return p_y - p_false


MIN_ROWS = 16  # the smallest row block a model sees (row independence was seen to fail below 6 rows)
PROBE_ROWS = 256  # examples of a batch used to check row independence


def percent(correct) -> float:
    """Accuracy in % of per-example correctness (a bool tensor or sequence), exactly: count / n (0.01 per example of
    10,000); 0 for no examples."""
    hits = int(correct.sum()) if torch.is_tensor(correct) else sum(bool(c) for c in correct)
    return 100.0 * hits / len(correct) if len(correct) else 0.0


def default_chunk(device: torch.device) -> int | None:
    """Rows per model call: 100 on CPU (the fastest block measured in ``results/profile-cpu.md``), whole batches
    on accelerators."""
    return 100 if device.type == "cpu" else None


def row_blocks(n: int, chunk: int | None) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of ``chunk`` rows covering ``n``; none smaller than ``MIN_ROWS``."""
    if chunk is None or n <= chunk:
        return [(0, n)]
    cuts = list(range(0, n, chunk)) + [n]
    if n - cuts[-2] < MIN_ROWS:  # never a block smaller than MIN_ROWS: merge the tail into the block before
        cuts.pop(-2)
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def logits_in_blocks(model: torch.nn.Module, x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``model(x)`` computed on row blocks of ``chunk`` rows (no autograd)."""
    blocks = row_blocks(len(x), chunk)
    return model(x) if len(blocks) == 1 else torch.cat([model(x[a:b]) for a, b in blocks])


@torch.no_grad()
def forward_rows_independent(model: torch.nn.Module, x: torch.Tensor, chunk: int | None) -> bool:
    """Whether the logits of up to ``PROBE_ROWS`` examples of ``x`` are bit-for-bit the same in one call and in
    ``chunk``-row blocks (so blocks cannot change a number; false for too few rows to tell)."""
    n = min(len(x), PROBE_ROWS)
    if chunk is None or n < 2 * MIN_ROWS:
        return False
    return torch.equal(model(x[:n]), logits_in_blocks(model, x[:n], min(chunk, n // 2)))


def _chunk_for(model: torch.nn.Module, x: torch.Tensor, chunk) -> int | None:
    """The row blocks to use on this batch: ``chunk`` ("auto": :func:`default_chunk`) where the probe shows
    they change no bit, else whole batches."""
    c = default_chunk(x.device) if chunk == "auto" else chunk
    return c if c is not None and len(x) > c and forward_rows_independent(model, x, c) else None


@torch.no_grad()
def clean_metrics(
    model: torch.nn.Module, data: DeviceData, batch_size: int = 2048, chunk: int | str | None = "auto"
) -> dict[str, float]:
    """Accuracy (%) and mean probability gap of ``model`` (in eval mode) on ``data``; each batch's logits are
    computed in row blocks of ``chunk`` rows where that changes no bit (checked on the first batch)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=data.device)
    gap = torch.zeros((), device=data.device, dtype=torch.float64)
    for i, (x, y) in enumerate(data.batches(batch_size)):
        if i == 0:
            chunk = _chunk_for(model, x, chunk)
        logits = logits_in_blocks(model, x, chunk)
        correct += (logits.argmax(1) == y).sum()
        gap += probability_gap(logits, y).double().sum()
    model.train(was_training)
    n = len(data)
    return {"accuracy": 100.0 * float(correct) / n, "prob_gap": float(gap) / n}


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, chunk: int | str | None = "auto") -> torch.Tensor:
    """Logits of ``model`` on ``x`` in batches (on ``x``'s device), each in row blocks as :func:`clean_metrics`."""
    if len(x) == 0:
        return model(x)
    chunk = _chunk_for(model, x[:batch_size], chunk)
    return torch.cat([logits_in_blocks(model, x[i : i + batch_size], chunk) for i in range(0, len(x), batch_size)])


class Autocast(torch.nn.Module):
    """Run a model's forward in bf16 autocast and return float32 logits (``eval.precision=bf16``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


class Float64(torch.nn.Module):
    """A float64 copy of a model, returning float64 logits (``eval.precision=fp64``; pclc.evaluate then attacks
    float64 images, so the input gradient stays float64 too): a CE gradient underflows to exactly zero only
    beyond a logit margin of ~745 (float32: ~104). Whether a model's survival of the paper's attacks is float32
    saturation is then a measurement (issue 29)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double())


def with_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """fp32 (default, the paper's), tf32 (CUDA matmuls/convs in TF32), bf16 autocast for fast attacks, or fp64
    (float64 logits and gradients: the saturation check)."""
    if precision not in ("fp32", "tf32", "bf16", "fp64"):
        raise ValueError(f"eval.precision must be fp32, tf32, bf16 or fp64, got {precision!r}")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    return Autocast(model) if precision == "bf16" else Float64(model) if precision == "fp64" else model
