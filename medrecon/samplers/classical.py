"""``classical``: the operator's own classical reconstruction (FBP, zero-filled, ...), no prior.

>>> import torch
>>> from medrecon.operators.matrix import MatrixOperator
>>> from medrecon.samplers.classical import Classical
>>> A = MatrixOperator(torch.eye(4), shape=[2, 2])
>>> Classical().sample(torch.ones(1, 4), A).shape
torch.Size([1, 2, 2])
"""

from __future__ import annotations

import torch

from medrecon.samplers.base import Sampler

__all__ = ["Classical"]


class Classical(Sampler):
    """``x = operator.classical(y)``: the baseline every other sampler is compared with.

    No parameters, no randomness; ``steps``, ``generators`` and ``x_init`` are ignored.
    """

    name = "classical"
    needs_prior = False
    per_slice = True
    default_steps = 1
    params = {}

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        with torch.no_grad():
            x = operator.classical(y)
        if progress is not None:
            progress(1, 1)
        return x
