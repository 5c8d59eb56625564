"""Per-slice random streams: one CPU generator per slice, seeded from (seed, slice index).

Every random number of slice ``b`` is drawn from its own :class:`torch.Generator` on the CPU
and then moved to the device, so a slice's numbers depend neither on the batch it is sampled
in nor on the device: the engine seeds each slice with :func:`slice_generators` and the
samplers draw with :func:`randn_per_slice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["AntitheticGenerator", "randn_per_slice", "slice_generators"]



# --------------------------------------------------------------------------- randomness
class AntitheticGenerator(torch.Generator):
    """A generator whose normal draws :func:`randn_per_slice` negates: seeded like a plain one,
    it gives the antithetic twin ``-z`` of every noise tensor ``z`` of that stream
    (``reconstruct(..., samples=N, antithetic=True)``)."""

    sign = -1.0


def slice_generators(seed: int, indices: Sequence[int] | int, draw: int = 0,
                     antithetic: bool = False) -> list[torch.Generator]:
    """CPU generators seeded from ``(seed, slice index)``; ``indices`` an int means ``range(indices)``.

    The seed of slice ``i`` depends only on ``seed`` and ``i`` (through numpy's
    ``SeedSequence``), so a slice gets the same random numbers whatever batch it is in.
    ``draw`` > 0 selects the independent stream ``(seed, i, draw)`` of a further posterior
    sample of the same slice (``reconstruct(..., samples=N)``); draw 0 is the plain stream.
    ``antithetic`` returns :class:`AntitheticGenerator` s of the same streams: every normal
    draw negated.

    >>> g = slice_generators(0, [5])[0]; h = slice_generators(0, range(3, 6))[2]
    >>> bool(torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=h)))
    True
    """
    import numpy as np

    if isinstance(indices, int):
        indices = range(indices)
    out = []
    for i in indices:
        entropy = [int(seed) & (2**63 - 1), int(i)] + ([int(draw)] if draw else [])
        s = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        out.append((AntitheticGenerator if antithetic else torch.Generator)().manual_seed(s & (2**63 - 1)))
    return out


def randn_per_slice(generators: Sequence[torch.Generator], shape: Sequence[int], *,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """A ``(B, *shape)`` standard normal tensor, slice ``b`` drawn from ``generators[b]`` on the CPU.

    Drawn on the CPU (so a slice's numbers do not depend on the device) and then moved to
    ``device``.  Complex dtypes get independent real and imaginary parts of variance 1/2 each.
    An :class:`AntitheticGenerator` gives the negated numbers of its stream.
    """
    shape = tuple(int(s) for s in shape)
    real = dtype.to_real() if dtype.is_complex else dtype
    parts = []
    for g in generators:
        sign = getattr(g, "sign", 1.0)
        if dtype.is_complex:
            z = torch.randn((*shape, 2), generator=g, dtype=real) * (sign * math.sqrt(0.5))
            parts.append(torch.view_as_complex(z))
        else:
            z = torch.randn(shape, generator=g, dtype=real)
            parts.append(z if sign == 1.0 else sign * z)
    return torch.stack(parts).to(device=device)
