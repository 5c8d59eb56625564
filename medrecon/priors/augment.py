"""Data augmentation for prior training, on the device, on tensors ``(B, 1, H, W)``.

All randomness comes from the training generator ``gen`` (on the data's device), so a
seeded run draws the same augmentations.

* :func:`augment_batch` -- left-right flips, optionally :func:`rotate_zoom`, then a random
  shift (reflect padded) or a random ``patch x patch`` crop;
* :func:`rotate_zoom` -- small random rotations and zooms of half of the batch;
* :func:`immiscible_assign` -- Immiscible Diffusion's pairing of images with noise draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch", "immiscible_assign", "rotate_zoom"]


def immiscible_assign(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Reorder ``noise`` within the batch to minimise the total L2 distance to ``x0`` (Immiscible Diffusion).

    Solves the linear assignment on the (B, B) pairwise distance matrix with
    scipy.optimize.linear_sum_assignment and returns ``noise[perm]``.
    """
    from medrecon.errors import require

    opt = require("scipy.optimize", "core")
    with torch.no_grad():
        d = torch.cdist(x0.flatten(1).float(), noise.flatten(1).float())
    _, col = opt.linear_sum_assignment(d.cpu().numpy())
    perm = torch.as_tensor(col, device=noise.device, dtype=torch.long)
    return noise[perm]


def _crop_batch(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample crops: x (B, 1, H, W), offsets (B,) -> (B, 1, h, w)."""
    b = x.shape[0]
    rows = oy[:, None] + torch.arange(h, device=x.device)[None]
    cols = ox[:, None] + torch.arange(w, device=x.device)[None]
    bi = torch.arange(b, device=x.device)[:, None, None]
    return x[bi, 0, rows[:, :, None], cols[:, None, :]][:, None]


def rotate_zoom(x: torch.Tensor, gen: torch.Generator, rotate_deg: float, zoom: float) -> torch.Tensor:
    """Half of the batch (chosen at random) rotated by a uniform angle in [-rotate_deg, rotate_deg]
    about the image centre and scaled by a uniform factor in [1 - zoom, 1 + zoom]: bicubic
    resampling, reflected at the border.  The other half is left untouched, so the prior keeps
    seeing unresampled slices (resampling smooths a little).  x (B, 1, H, W) -> same shape."""
    b = x.shape[0]
    dev = x.device
    u = torch.rand(3, b, generator=gen, device=dev)
    ang = (2 * u[0] - 1) * math.radians(rotate_deg)
    s = 1 + (2 * u[1] - 1) * zoom  # magnification; the sampling grid is scaled by 1 / s
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return torch.where((u[2] < 0.5)[:, None, None, None], moved, x)


def augment_batch(x: torch.Tensor, gen: torch.Generator, patch: int | None, shift: int,
                  rotate_deg: float = 0.0, zoom: float = 0.0) -> torch.Tensor:
    """Left-right flip (p = 0.5), optionally :func:`rotate_zoom` (``rotate_deg`` or ``zoom`` > 0),
    then a random shift of up to ``shift`` px (reflect padded) or a random ``patch`` x ``patch``
    crop; all on x's device with ``gen``."""
    b, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(b, generator=gen, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if rotate_deg > 0 or zoom > 0:
        x = rotate_zoom(x, gen, rotate_deg, zoom)
    if patch is not None and patch < min(h, w):
        oy = torch.randint(0, h - patch + 1, (b,), generator=gen, device=dev)
        ox = torch.randint(0, w - patch + 1, (b,), generator=gen, device=dev)
        return _crop_batch(x, oy, ox, patch, patch)
    if shift > 0:
        xp = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen, device=dev)
        ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen, device=dev)
        return _crop_batch(xp, oy, ox, h, w)
    return x
