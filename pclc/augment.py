"""Training augmentation as batch operations on the device (no per-sample Python).

Random parameters are drawn from a CPU ``torch.Generator`` (B numbers per batch), so a seed gives the
same augmentation on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device, non_blocking=True)


def crop_flip(x: torch.Tensor, generator=None, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Zero-pad by ``pad`` and take a random crop of the original size; optional horizontal flip."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = (_rand(b, generator, x.device) * (2 * pad + 1)).long().clamp_max(2 * pad)
    ox = (_rand(b, generator, x.device) * (2 * pad + 1)).long().clamp_max(2 * pad)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    flat = padded.flatten(2)  # (B, C, (H+2p)(W+2p))
    out = flat.gather(2, (rows * (w + 2 * pad) + cols).flatten(2)).view(b, c, h, w)
    if flip:
        m = (_rand(b, generator, x.device) < 0.5)[:, None, None, None]
        out = torch.where(m, out.flip(3), out)
    return out


def random_apply_flip_rotate_resized_crop(
    x: torch.Tensor,
    generator=None,
    p: float = 0.8,
    degrees: float = 10.0,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> torch.Tensor:
    """Ours, approximating the official ``TinyImageNet.py``'s ``RandomApply([flip, rotation(10),
    RandomResizedCrop(64)], p=0.8)``: one affine warp per image (bilinear, zero fill) instead of torchvision's
    three resamplings, and a crop that does not fit is clamped where torchvision draws again; applied to a
    random share ``p`` of the batch."""
    b = x.shape[0]
    d = x.device
    u = torch.rand(b, 7, generator=generator).to(d, non_blocking=True)
    apply = u[:, 0] < p
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    theta = (u[:, 2] * 2 - 1) * math.radians(degrees)
    area = scale[0] + u[:, 3] * (scale[1] - scale[0])
    logr = math.log(ratio[0]) + u[:, 4] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(logr)
    sw = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (u[:, 5] * 2 - 1) * (1 - sw)  # crop centre, uniform where the crop fits
    cy = (u[:, 6] * 2 - 1) * (1 - sh)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # output grid -> flip -> crop (scale + shift) -> rotate about the centre
    a = torch.stack(
        [
            torch.stack([cos * sw * flip, -sin * sh, cos * cx - sin * cy], 1),
            torch.stack([sin * sw * flip, cos * sh, sin * cx + cos * cy], 1),
        ],
        1,
    )
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=d).expand(b, 2, 3)
    a = torch.where(apply[:, None, None], a, eye)
    grid = F.affine_grid(a, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


AUGMENTS: dict[str, Callable] = {
    "crop_flip": crop_flip,
    "tiny": random_apply_flip_rotate_resized_crop,
}


def build_augment(cfg) -> Callable | None:
    """``cfg`` is None/'none' or a mapping ``{name: ..., **params}``; returns ``f(x, generator) -> x``."""
    if cfg is None or cfg == "none" or (hasattr(cfg, "get") and cfg.get("name") in (None, "none")):
        return None
    params = {
        k: (tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v)
        for k, v in dict(cfg).items()
        if k != "name"
    }
    name = cfg["name"]
    if name not in AUGMENTS:
        raise ValueError(f"unknown augmentation {name!r}; known: {sorted(AUGMENTS)} or none")
    fn = AUGMENTS[name]
    return lambda x, generator=None: fn(x, generator, **params)
