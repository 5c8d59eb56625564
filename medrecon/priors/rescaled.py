"""A prior applied at its own pixel size to images on a finer grid (issue 19, "pixel size handled").

A prior trained on slices of pixel size ``p`` (mm) sees anatomy ``p / q`` times too large on a
grid of pixel size ``q < p``.  :class:`RescaledPrior` runs the network on the image resampled to
the prior's scale instead.  With ``f`` the (area) downsampling factor and ``abar_t`` the noise
schedule, for a noisy fine image ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e``:

    x_c    = area_downsample(x_t)        # noise std shrinks by f (f x f pixels averaged)
    abar'  = the schedule value closest to 1 / (1 + (1 - abar_t) / (abar_t f^2))
    x_c'   = sqrt(abar' / abar_t) x_c    # the same signal-to-noise ratio at timestep t'
    x0_c   = (x_c' - sqrt(1 - abar') eps_net(x_c', t')) / sqrt(abar')      (Tweedie, coarse)
    x0     = bilinear_upsample(x0_c)
    eps(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)

so every sampler that asks for ``eps`` gets the Tweedie estimate the prior makes at its own
scale; detail finer than the prior's pixels comes from the data-consistency step (DDS's CG,
DPS's gradient), not from the prior.  ``t'`` is the nearest integer timestep, so the noise
level is matched to the schedule's resolution (a few percent).

>>> import torch
>>> from medrecon.testing import tiny_network_prior
>>> base = tiny_network_prior(16)
>>> fine = RescaledPrior(base, 2.0)
>>> x = torch.randn(2, 1, 32, 32); t = torch.tensor([500, 20])
>>> tuple(fine.eps(x, t).shape), fine.num_timesteps == base.num_timesteps
((2, 1, 32, 32), True)
"""

from __future__ import annotations

import math

import torch

from medrecon.errors import InputError

__all__ = ["RescaledPrior", "MIN_FACTOR", "scale_for"]

#: The engine runs a prior at its own scale when the data's pixels are at least this much finer
MIN_FACTOR = 1.25


class RescaledPrior:
    """``prior`` (trained at pixel size ``p``) on images whose pixels are ``factor = p / q`` times finer.

    Everything but :meth:`eps` (and :meth:`for_volume`, which keeps the wrapper) is read from the
    wrapped prior: intensity maps, schedule, config.  ``factor`` must be > 1 (a finer grid).
    Settings are made on ``base`` (the engine's per-worker copy wraps a copy of it).
    """

    def __init__(self, prior, factor: float):
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 1.0:
            raise InputError(f"a rescaled prior needs a factor above 1 (a grid finer than the prior's), got {factor}")
        self.base = prior
        self.factor = factor

    def __getattr__(self, name):  # only for names the wrapper does not have
        try:
            base = self.__dict__["base"]
        except KeyError:  # during copy / unpickling
            raise AttributeError(name) from None
        return getattr(base, name)

    def for_volume(self, volume) -> RescaledPrior:
        return RescaledPrior(self.base.for_volume(volume), self.factor)

    def own_grid(self, H: int, W: int) -> tuple[int, int]:
        """The size of an ``H x W`` fine image at the prior's pixel size."""
        return max(8, round(H / self.factor)), max(8, round(W / self.factor))

    def to_own_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(..., H, W)`` area-averaged onto the prior's grid (what the network sees of them)."""
        lead, (H, W) = x.shape[:-2], x.shape[-2:]
        xc = torch.nn.functional.interpolate(x.reshape(-1, 1, H, W), size=self.own_grid(H, W), mode="area")
        return xc.reshape(*lead, *xc.shape[-2:])

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction on the fine grid from the prior's prediction at its own scale."""
        B, C, H, W = x_t.shape
        h, w = self.own_grid(H, W)
        f2 = (H * W) / (h * w)  # variance reduction of the area average
        abar = self.base.alphas_cumprod.to(device=x_t.device, dtype=torch.float64)
        a = abar[t.to(x_t.device).long()]
        target = 1.0 / (1.0 + (1.0 - a) / (a * f2))
        t_c = (abar[None, :] - target[:, None]).abs().argmin(dim=1)
        a_c = abar[t_c]
        view = (-1, 1, 1, 1)
        xc = torch.nn.functional.interpolate(x_t, size=(h, w), mode="area")
        xc = xc * (a_c / a).sqrt().view(view).to(x_t.dtype)
        e_c = self.base.eps(xc, t_c)
        x0_c = (xc - (1 - a_c).sqrt().view(view).to(x_t.dtype) * e_c) / a_c.sqrt().view(view).to(x_t.dtype)
        x0 = torch.nn.functional.interpolate(x0_c, size=(H, W), mode="bilinear", align_corners=False)
        return (x_t - a.sqrt().view(view).to(x_t.dtype) * x0) / (1 - a).sqrt().view(view).to(x_t.dtype)


def scale_for(prior, pixel_mm: float | None, mode: str = "auto") -> dict | None:
    """``mode="auto"``: the rescaling to apply (``{"factor", "data_pixel_mm", "prior_pixel_mm"}``)
    when data of pixel size ``pixel_mm`` are at least :data:`MIN_FACTOR` times finer than the
    prior's ``pixel_size_mm``; None otherwise, and always for ``"native"``.

    >>> from medrecon.testing import tiny_network_prior
    >>> scale_for(tiny_network_prior(16, pixel_size_mm=2.0), 0.5)["factor"], scale_for(tiny_network_prior(16), 0.8)
    (4.0, None)
    """
    if mode not in ("auto", "native"):
        raise InputError(f"prior_scale must be 'auto' or 'native', got {mode!r}")
    cfg = getattr(prior, "config", None)
    train_px = cfg.get("pixel_size_mm") if isinstance(cfg, dict) else None
    if mode == "native" or not (pixel_mm and train_px) or float(train_px) / pixel_mm < MIN_FACTOR:
        return None
    return {"factor": round(float(train_px) / pixel_mm, 6), "data_pixel_mm": round(pixel_mm, 6),
            "prior_pixel_mm": float(train_px)}
