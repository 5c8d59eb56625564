"""Choosing a regularisation weight from the measurement itself: cross-validation on held-out data.

A sampler whose weight is left at ``"auto"`` (``sense``'s ``lam``, ``tv``'s and
``l1wavelet``'s ``lam_rel``) picks it per slice when the operator can hold out part of its
measurement (:meth:`medrecon.operators.base.Operator.holdout_folds`; the MRI operators hold
out phase-encode lines, the 2D CT projectors whole views).  With folds ``f = 1..K``, each holding out the measurements
``H_f`` (disjoint), and candidate weights ``w``::

    x_f(w)  = reconstruction from y restricted to the complement of H_f
    CV(w)   = sum_f || (A x_f(w) - y) restricted to H_f ||^2

``CV(w)`` estimates the prediction error on data the reconstruction did not use: the
noise in ``H_f`` adds the same constant to every ``w``, so its minimiser balances fitting
the noise (too small a weight) against bias (too large).  The search is coarse to fine
on a log scale: the decade grid of the sampler (e.g. ``1e-4 .. 1e-1``), then the two
half-decade neighbours of the best value, then the vertex of the parabola through the
best point and its neighbours (clamped to them); the samplers then halve it
(:data:`CV_SCALE`, measured on development data).  Each fold's problem has fewer
measurements than the real one, which biases the choice slightly towards stronger
regularisation.  Cost: ``K`` times the number of grid points
reconstructions, plus the final one.

Where the operator cannot hold out data (too few lines or views to split; cone beam), the sampler's
``fallback`` value is used; :func:`pop_last_tuning` tells the engine what was chosen, and
it records it in the output's metadata (``reconstruction.auto_tuned``).

>>> import torch, medrecon
>>> from medrecon.samplers import get_sampler
>>> from medrecon.samplers.autotune import tune_per_slice
>>> A = medrecon.get_operator("mri.sense", shape=[32, 32],
...     coil_maps={"synthetic": "birdcage", "n_coils": 4},
...     mask={"kind": "random", "acceleration": 3, "center_fraction": 0.1, "seed": 0})
>>> x = torch.zeros(1, 32, 32, dtype=torch.complex64); x[:, 8:24, 8:24] = 1
>>> y = A(x) + 0.05 * torch.randn(1, 4, 32, 32, dtype=torch.complex64) * A.mask
>>> run = lambda w, yy, op: get_sampler("sense", lam=w).sample(yy, op)
>>> values, table = tune_per_slice(run, (1e-3, 1e-2, 1e-1, 1.0), y, A, n_folds=3)
>>> len(values), 1e-3 <= values[0] <= 1.0
(1, True)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import torch

from medrecon.errors import InputError

__all__ = ["tune_per_slice", "pop_last_tuning", "N_FOLDS"]

#: folds used by the samplers (each holds out a quarter of the lines outside the calibration region)
N_FOLDS = 4
#: what the samplers multiply the CV minimiser by (``Sampler.tune_scale``).  Measured on the
#: development series (realistic raw 8-coil k-space of mr-t1-mprage slices 40 and 80 at 4x and 8x,
#: benchmarks/quality_mr_raw.py): the weight that maximises the PSNR of the magnitude against the
#: fully sampled RSS is 1.0-3.2x (sense), 1.8-3.2x (tv) and 1.8-5.5x (l1wavelet) smaller than the
#: CV minimiser -- CV scores complex k-space errors, which include phase errors the magnitude does
#: not show, on folds that have fewer lines than the real problem.  Halving the choice recovers
#: most of the gap (up to 1.7 dB at 4x) and costs at most 0.1 dB where CV was right.
CV_SCALE = 0.5
_LAST = threading.local()


def _record(info: dict | None) -> None:
    _LAST.record = info


def pop_last_tuning() -> dict | None:
    """What the last sampler call on this thread chose (``{"param", "values", ...}``) or None; clears it."""
    rec = getattr(_LAST, "record", None)
    _LAST.record = None
    return rec


def _cv_errors(run, value: float, y: torch.Tensor, operator, folds) -> torch.Tensor:
    """Per-slice summed squared prediction error on the held-out data, ``(B,)`` float64."""
    err = torch.zeros(y.shape[0], dtype=torch.float64)
    for fit_op, held in folds:
        keep = (~held).to(y.real.dtype)
        x = run(value, y * keep, fit_op)
        with torch.no_grad():
            r = (operator(x) - y) * held.to(y.real.dtype)
        err += (r.abs() ** 2).reshape(y.shape[0], -1).sum(1).double().cpu()
    return err


def tune_per_slice(run: Callable[[float, torch.Tensor, object], torch.Tensor], grid: Sequence[float],
                   y: torch.Tensor, operator, *, n_folds: int = N_FOLDS, seed: int = 0, scale: float = 1.0):
    """Per-slice cross-validated choice of a positive weight (module docstring).

    ``run(w, y_fit, fit_op)`` reconstructs ``(B, *domain)`` from ``y_fit`` with weight ``w``;
    ``grid``: increasing positive candidates (a decade apart); ``scale``: the CV minimiser is
    multiplied by it (the samplers use :data:`CV_SCALE`).  Returns ``(values, table)``:
    the chosen weight per slice and ``{w: [per-slice CV error]}`` for every weight tried; or
    ``(None, None)`` when the operator cannot hold out data.
    """
    grid = sorted(float(g) for g in grid)
    if not grid or grid[0] <= 0:
        raise InputError("auto-tuning needs a grid of positive weights")
    folds = operator.holdout_folds(n_folds, seed)
    if not folds:
        return None, None
    table: dict[float, torch.Tensor] = {}

    def score(w: float) -> torch.Tensor:
        if w not in table:
            table[w] = _cv_errors(run, w, y, operator, folds)
        return table[w]

    for w in grid:
        score(w)
    B = y.shape[0]
    # refine around each slice's best decade: the half-decade neighbours.  A slice's choice uses
    # only its own candidates (the grid and its two neighbours), so it does not depend on which
    # other slices share the batch (beyond the rounding of the batch's sums: docs/engine.md,
    # "Seeding and determinism")
    own = []
    for b in range(B):
        best = min(grid, key=lambda w: float(table[w][b]))
        own.append(sorted({*grid, best / math.sqrt(10), best * math.sqrt(10)}))
    for w in sorted(set().union(*own)):
        score(w)
    values = []
    for b in range(B):
        tried = own[b]
        errs = [float(table[w][b]) for w in tried]
        i = min(range(len(tried)), key=errs.__getitem__)
        v = tried[i]
        if 0 < i < len(tried) - 1:  # parabola in log w through the best point and its neighbours
            x0, x1, x2 = (math.log(tried[j]) for j in (i - 1, i, i + 1))
            e0, e1, e2 = errs[i - 1], errs[i], errs[i + 1]
            den = (x0 - x1) * (x0 - x2) * (x1 - x2)
            a = (x2 * (e1 - e0) + x1 * (e0 - e2) + x0 * (e2 - e1)) / den if den else 0.0
            bcoef = (x2 * x2 * (e0 - e1) + x1 * x1 * (e2 - e0) + x0 * x0 * (e1 - e2)) / den if den else 0.0
            if a > 0:
                v = math.exp(min(max(-bcoef / (2 * a), x0), x2))
        values.append(float(v) * float(scale))
    return values, {w: [float(e) for e in table[w]] for w in sorted(table)}
