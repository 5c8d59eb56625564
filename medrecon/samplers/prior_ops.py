"""What the prior-based samplers do around a diffusion prior: network calls, units, dtypes.

A prior works in **network units** (``x_net``, roughly [-1, 1]); data consistency is done in
**physical units** (HU for CT), ``x_phys = prior.from_net(x_net)``, an affine map per element,
``x_phys = a x_net + b`` (``a`` possibly per slice, :func:`net_scale`).  The prior's ``eps``
takes ``(B, 1, H, W)``; samplers keep images as ``(B, H, W)`` and add the channel axis only
around the network call (:func:`prior_eps`).
"""

from __future__ import annotations

import torch

from medrecon.errors import InputError

__all__ = ["as_image", "net_scale", "prior_eps", "sample_dtype", "to_net_real", "tweedie_clip"]


def prior_eps(prior, x: torch.Tensor, t: torch.Tensor, cache=None) -> torch.Tensor:
    """``prior.eps`` on ``(B, H, W)`` images: adds and removes the channel axis.  ``cache``: the
    sampler call's :class:`~medrecon.priors.feature_cache.FeatureCache` (None: the full network)."""
    if cache is None:
        return prior.eps(x.unsqueeze(1), t)[:, 0]
    from medrecon.priors.feature_cache import cached_call

    return cached_call(cache, prior.eps, x.unsqueeze(1), t)[:, 0]


def net_scale(prior, like: torch.Tensor) -> torch.Tensor:
    """Per-slice slope ``a`` of ``from_net`` (physical units per network unit), shape (B,).

    ``from_net`` is affine per element (``x_phys = a x_net + b``), possibly with a per-slice
    ``a`` (MR priors bound to a volume's percentiles).
    """
    with torch.no_grad():
        one = prior.from_net(torch.ones_like(like))
        zero = prior.from_net(torch.zeros_like(like))
        d = (one - zero).reshape(like.shape[0], -1).mean(dim=1)
    if bool((d.abs() == 0).any()):
        raise InputError("the prior's from_net map is constant; it must be an invertible affine map")
    return d.abs()


def sample_dtype(y: torch.Tensor) -> torch.dtype:
    """Real working precision: float64 when ``y`` is double, else float32."""
    return torch.float64 if y.dtype in (torch.float64, torch.complex128) else torch.float32


def to_net_real(prior, x_phys: torch.Tensor) -> torch.Tensor:
    """``prior.to_net`` of an image, taking the real part of a complex image first."""
    if x_phys.is_complex():
        x_phys = x_phys.real
    return prior.to_net(x_phys)


def as_image(x_phys: torch.Tensor, operator, dtype: torch.dtype) -> torch.Tensor:
    """A real physical-units result in the operator's image dtype: a complex image domain gets
    the complex dtype with a zero imaginary part (our priors are real-valued)."""
    return x_phys.to(operator.domain_dtype(dtype)) if operator.domain_is_complex else x_phys


def tweedie_clip(prior, clip):
    """The Tweedie clamp (network units) that ``clip`` means for ``prior``: a number or None as
    given; ``"auto"``: the range the prior's intensity map gives its training images.  A CT
    window (-1000..2000 HU, covering the data) and the ultrasound mu-law put them in [-1, 1],
    so 1.0 (the official DPS clamp to the data range); an MR percentile map sends the volume's
    p0.5 / p99.5 to -1 / 1 and leaves the brightest tissue above 1 (2.6 % of the held-out T1
    slices' pixels, up to 3.2), so no clamp (clamping at 1 cost DPS 0.4-1 dB on the MR
    validation slices, docs/samplers.md).  Priors without an intensity map: 1.0."""
    if clip != "auto":
        return clip
    cfg = getattr(prior, "config", None)
    kind = ((cfg.get("intensity") or {}).get("kind") if isinstance(cfg, dict) else None)
    return None if kind == "percentile" else 1.0
