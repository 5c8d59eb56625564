"""What a sampler needs from a diffusion prior (the contract between priors and samplers).

A prior is a denoiser of 2D slices under a variance-preserving (VP) schedule:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e,   e ~ N(0, I),   t = 0 .. T-1

with ``abar_t = prod_{s<=t} (1 - beta_s)``.  The network predicts ``e`` from
``(x_t, t)``; Tweedie's formula gives the posterior mean of the clean image:

    x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t, t)) / sqrt(abar_t).

Images live in two intensity spaces: *physical* (HU for CT, arbitrary units for
MR) in which operators act, and the network's range (about [-1, 1]).
``to_net`` / ``from_net`` map between them; they are affine per element,
``x_phys = scale * x_net + offset``, so that data consistency can be done in
physical units and the result mapped back.

Any object with these members works with every sampler (the trained
:class:`~medrecon.priors.DiffusionPrior`, and the closed-form Gaussian prior
used to test samplers without a network).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PriorProtocol(Protocol):
    #: cumulative products abar_t, float64, shape (T,), decreasing from ~1 to ~0
    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        """T, the length of the training schedule (1000 by default)."""
        ...

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for ``x_t`` shaped (B, 1, H, W) at integer steps ``t`` shaped (B,).

        Any H, W: a convolutional prior pads to its downsampling multiple and crops back.
        """
        ...

    def to_net(self, x_phys: torch.Tensor) -> torch.Tensor:
        """Physical units -> network range (elementwise affine)."""
        ...

    def from_net(self, x_net: torch.Tensor) -> torch.Tensor:
        """Network range -> physical units (elementwise affine)."""
        ...
