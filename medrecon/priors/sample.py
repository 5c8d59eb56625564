"""Unconditional sampling from a prior (``medrecon sample-prior``) and a PNG grid writer."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import torch

from medrecon.errors import InputError
from medrecon.priors.feature_cache import cached_call, check_interval, make_cache
from medrecon.priors.schedule import ddim_sample, ddim_timesteps, dpmpp2m_sample

SAMPLERS = ("ddim", "dpmpp2m")


def check_sample_args(n: int = 1, sampler: str = "ddim", eta: float = 0.0, clip: float | None = None,
                      size: int | None = None, cache_interval: int = 0, steps: int | None = None) -> None:
    """An :class:`InputError` (one sentence) unless ``sampler`` is known, ``n >= 1``, ``size`` is
    None or >= 1, the DDIM ``eta`` is a finite number in [0, 1] (sigma_t = eta sqrt((1 -
    abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev); above 1 it exceeds the noise the step
    has), ``clip`` is None or a finite number > 0 and ``cache_interval`` is 0 .. ``steps``
    (:func:`medrecon.priors.feature_cache.check_interval`)."""
    check_interval(cache_interval, steps)
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; use ddim or dpmpp2m")
    if n < 1:
        raise InputError("n must be at least 1")
    if size is not None and size < 1:
        raise InputError(f"size must be at least 1, got {size}")
    if not _finite_in(eta, 0.0, 1.0):
        raise InputError(f"eta must be a finite number from 0 to 1, got {eta!r}")
    if clip is not None and not (_finite_in(clip, 0.0, math.inf) and float(clip) > 0):
        raise InputError(f"clip must be a finite number > 0, got {clip!r}")


def sampling_bytes(config: dict, n: int, size: int, batch: int = 64) -> int:
    """A rough upper estimate of the memory (bytes) :func:`sample_prior` needs: the initial noise
    and the results (``3 n S^2`` float32 values) plus the network's activations for one batch,
    about ``16 C0`` float32 maps of ``S x S`` per image (``C0``: the first level's channels).

    >>> sampling_bytes({"network": {"channels": [32, 64]}}, n=1, size=256) // 2**20
    128
    """
    c0 = int(((config or {}).get("network") or {}).get("channels", [64])[0])
    return 4 * size * size * (3 * n + min(n, batch) * 16 * c0)


def _finite_in(value, lo: float, hi: float) -> bool:
    """Whether ``value`` is a real number (not a bool), finite and in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and lo <= value <= hi


@torch.no_grad()
def sample_prior(prior, n: int = 16, steps: int = 50, sampler: str = "ddim", seed: int = 0,
                 size: int | None = None, eta: float = 0.0, batch: int = 64, clip: float | None = None,
                 spacing: str = "trailing", physical: bool = False, progress=None,
                 cache_interval: int = 0) -> torch.Tensor:
    """Draw ``n`` unconditional samples (n, 1, S, S) in the network range (or physical units).

    sampler: ``ddim`` (eta 0 deterministic) or ``dpmpp2m`` (DPM-Solver++ 2M).  The initial noise
    is drawn on the CPU from ``seed`` so results do not depend on the device.  ``cache_interval``
    N >= 2: feature caching (:mod:`medrecon.priors.feature_cache`), a full network pass every N
    steps, one cache per batch.  The arguments are checked by :func:`check_sample_args`.
    """
    check_sample_args(n, sampler, eta, clip, size, cache_interval, steps)
    size = int(size or prior.image_size)
    from medrecon.io.budget import require

    require(sampling_bytes(prior.config, n, size, batch), f"sampling {n} image(s) of {size}x{size}")
    dev = prior.device
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, 1, size, size), generator=g)
    ts = ddim_timesteps(steps, prior.num_timesteps, spacing)
    abar = prior.alphas_cumprod
    outs = []
    for i in range(0, n, batch):
        x = x_T[i:i + batch].to(dev)
        cache = make_cache(cache_interval)  # per batch: no feature crosses batches

        def eps(x_t, t, cache=cache):
            return cached_call(cache, prior.eps, x_t, t)

        if sampler == "ddim":
            x = ddim_sample(eps, x, abar, ts, eta=eta, generator=g if dev.type == "cpu" else None,
                            clip=clip, callback=progress)
        else:
            x = dpmpp2m_sample(eps, x, abar, ts, clip=clip, callback=progress)
        outs.append(x.float().cpu())
    x = torch.cat(outs)
    if physical:
        x = prior.from_net(x)
    return x


def save_grid(images, path, title: str | None = None, vmin: float = -1.0, vmax: float = 1.0) -> Path:
    """Save (n, 1, H, W) images (network range by default) as one PNG grid (atomically, replacing
    ``path``: callers check overwriting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images.detach().cpu().float().numpy() if torch.is_tensor(images) else images
    n = imgs.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows + (0.4 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(imgs[k, 0], cmap="gray", vmin=vmin, vmax=vmax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from medrecon.io.atomic import atomic_file

    path = Path(path)
    try:
        with atomic_file(path, overwrite=True, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
