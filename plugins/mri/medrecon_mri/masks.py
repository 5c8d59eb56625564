"""k-space sampling masks: random 1D, equispaced, equispaced-fraction, Gaussian 1D, Poisson disc 2D.

Layout
------
k-space slices are ``(ny, nx)`` = ``(readout, phase encode)``: the readout runs down the
rows (axis -2) and the phase-encode lines are the **columns** (axis -1), as in fastMRI's
``kspace[..., readout, phase_encode]``.  A 1D mask selects phase-encode columns (a vector
of length ``nx``, every readout sample of a chosen column is measured); a 2D mask selects
single points (``(ny, nx)``, both axes phase-encoded as in 3D Cartesian imaging).  The
k-space centre is index ``n // 2`` on each axis (:mod:`medrecon_mri.fft`).

Mask specs
----------
Every generator is deterministic given its ``seed`` (numpy ``default_rng(seed)``), so a
spec such as ``{"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}``
stored in a measurement file rebuilds the very same mask.  The semantics follow fastMRI's
``subsample.py``; its random stream (``RandomState``) does not: the same seed gives another
mask than fastMRI's.  Kinds:

``random``
    fastMRI ``RandomMaskFunc`` semantics: ``n_low = round(n * center_fraction)`` central
    columns fully sampled, every other column sampled with probability
    ``(n / R - n_low) / (n - n_low)``, so that the expected total is ``n / R``.
``equispaced``
    fastMRI ``EquiSpacedMaskFunc``: the central columns plus every R-th column from an
    ``offset`` (given, or drawn from ``[0, R)`` with the seed); the achieved acceleration is
    below R because the centre adds columns.
``equispaced_fraction``
    fastMRI ``EquispacedMaskFractionFunc``: the spacing is adjusted to
    ``R (n_low - n) / (n_low R - n)`` (rounded positions) so that centre + equispaced lines
    total about ``n / R``.
``gaussian``
    Variable density 1D: the central columns, plus ``round(n / R) - n_low`` distinct
    columns drawn without replacement with probability proportional to
    ``exp(-k^2 / (2 (sigma n)^2))`` (``sigma`` default 0.3; ``k`` the distance to the centre).
    Hits R exactly.
``poisson``
    2D variable-density Poisson disc: dart throwing in a seeded random order, a point is
    accepted when no accepted point lies closer than ``r(p) = r0 (1 + vd rho(p))``
    (``rho`` the normalised distance to the centre, ``vd`` default 1), ``r0`` found by
    bisection so that the total, including a fully sampled ``calib`` rectangle (default
    ``round(center_fraction * n)`` on each axis, at most ``1/R`` of the points), is
    ``ny nx / R`` within ``tol`` (2%); where the count jumps past the target (uniform
    density, ``vd = 0``) the closest denser mask is thinned at random outside the calibration.

:func:`mask_info` reports the achieved acceleration ``ny nx / n_sampled``.

>>> m = make_mask([16, 64], {"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 1})
>>> m.shape, bool(m[:, 32].all())
((16, 64), True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = [
    "KINDS",
    "calibration_region",
    "equispaced_fraction_mask",
    "equispaced_mask",
    "gaussian_mask",
    "make_mask",
    "mask_info",
    "parse_calib",
    "poisson_disc_mask",
    "random_mask",
    "resolve_mask",
]

KINDS = ("random", "equispaced", "equispaced_fraction", "gaussian", "poisson")


def _n_low(n: int, center_fraction: float) -> int:
    return int(round(n * float(center_fraction)))


def _center(n: int, n_low: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    pad = (n - n_low + 1) // 2
    m[pad:pad + n_low] = True
    return m


def _number(value, what: str) -> float:
    """``value`` as a finite float, or one sentence (a string from the command line is not a number)."""
    if isinstance(value, (bool, str)) or value is None:
        raise InputError(f"mask {what} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"mask {what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"mask {what} must be finite, got {value!r}")
    return v


def _seed(seed) -> int:
    if isinstance(seed, (bool, str)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"mask seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check(acceleration, center_fraction, one_d: bool = True) -> tuple[float, float]:
    r, cf = _number(acceleration, "acceleration"), _number(center_fraction, "center_fraction")
    if not r >= 1:
        raise InputError(f"mask acceleration must be >= 1, got {acceleration!r}")
    if not (0 <= cf < 1):
        raise InputError(f"mask center_fraction must be in [0, 1), got {center_fraction!r}")
    if one_d and cf * r > 1 + 1e-9:  # 2D masks compare the calibration area instead (poisson_disc_mask)
        raise InputError(f"a centre fraction of {cf} already samples more than 1/{r:g} of k-space; "
                         "lower center_fraction or acceleration")
    return r, cf


def random_mask(n: int, acceleration: float, center_fraction: float = 0.08, seed: int = 0) -> np.ndarray:
    """1D random mask (fastMRI RandomMaskFunc semantics), boolean ``(n,)``."""
    r, cf = _check(acceleration, center_fraction)
    rng = np.random.default_rng(_seed(seed))
    n_low = _n_low(n, cf)
    prob = (n / r - n_low) / max(n - n_low, 1)
    m = rng.uniform(size=n) < prob
    return m | _center(n, n_low)


def equispaced_mask(n: int, acceleration: int, center_fraction: float = 0.08, seed: int = 0,
                    offset: int | None = None) -> np.ndarray:
    """1D equispaced mask: centre plus columns ``offset::R`` (fastMRI EquiSpacedMaskFunc)."""
    r, cf = _check(acceleration, center_fraction)
    if r != int(r):
        raise InputError(f"an equispaced mask needs an integer acceleration, got {acceleration!r}")
    r = int(r)
    if offset is None:
        offset = int(np.random.default_rng(_seed(seed)).integers(0, r))
    elif isinstance(offset, bool) or not float(_number(offset, "offset")).is_integer() or int(offset) < 0:
        raise InputError(f"an equispaced mask offset must be a non-negative integer, got {offset!r}")
    m = np.zeros(n, dtype=bool)
    m[int(offset) % r::r] = True
    return m | _center(n, _n_low(n, cf))


def equispaced_fraction_mask(n: int, acceleration: float, center_fraction: float = 0.08,
                             seed: int = 0) -> np.ndarray:
    """1D equispaced mask with the spacing adjusted to hit R (fastMRI EquispacedMaskFractionFunc)."""
    r, cf = _check(acceleration, center_fraction)
    n_low = _n_low(n, cf)
    if n_low * r >= n:  # the centre alone reaches the target
        return _center(n, n_low)
    adjusted = r * (n_low - n) / (n_low * r - n)
    offset = int(np.random.default_rng(_seed(seed)).integers(0, max(int(round(adjusted)), 1)))
    m = np.zeros(n, dtype=bool)
    idx = np.around(np.arange(offset, n - 1, adjusted)).astype(int)
    m[idx[idx < n]] = True
    return m | _center(n, n_low)


def gaussian_mask(n: int, acceleration: float, center_fraction: float = 0.08, seed: int = 0,
                  sigma: float = 0.3) -> np.ndarray:
    """1D variable-density mask: centre plus columns drawn from a Gaussian density (exact count)."""
    r, cf = _check(acceleration, center_fraction)
    if not _number(sigma, "sigma") > 0:
        raise InputError(f"gaussian mask sigma must be > 0, got {sigma!r}")
    rng = np.random.default_rng(_seed(seed))
    m = _center(n, _n_low(n, cf))
    extra = int(round(n / r)) - int(m.sum())
    cand = np.flatnonzero(~m)
    if extra > 0 and cand.size:
        k = cand - n // 2
        p = np.exp(-0.5 * (k / (float(sigma) * n)) ** 2)
        pick = rng.choice(cand, size=min(extra, cand.size), replace=False, p=p / p.sum())
        m[pick] = True
    return m


def parse_calib(shape, calib, what: str = "calib") -> tuple[int, int]:
    """A calibration size ``n`` or ``[rows, columns]`` as two integers within ``shape``, or one sentence."""
    if isinstance(calib, (int, np.integer)) and not isinstance(calib, bool):
        c = [calib, calib]
    else:
        c = list(calib) if isinstance(calib, (list, tuple, np.ndarray)) else []
    if len(c) != 2 or any(isinstance(v, (bool, str)) or not isinstance(v, (int, np.integer)) or not 0 <= v <= n
                          for v, n in zip(c, shape, strict=True)):
        raise InputError(f"{what} must be a size or [rows, columns] within {list(shape)}, got {calib!r}")
    return int(c[0]), int(c[1])


def _calib_size(shape, calib, center_fraction) -> tuple[int, int]:
    ny, nx = shape
    if calib is None:
        return _n_low(ny, center_fraction), _n_low(nx, center_fraction)
    return parse_calib(shape, calib, "poisson mask calib")


def _dart_throw(shape, r0: float, vd: float, order: np.ndarray) -> np.ndarray:
    ny, nx = shape
    cy, cx = ny // 2, nx // 2
    yy, xx = np.divmod(order, nx)
    rho = np.sqrt(((yy - cy) / max(ny / 2, 1)) ** 2 + ((xx - cx) / max(nx / 2, 1)) ** 2)
    radius = r0 * (1 + vd * rho)
    acc = np.zeros(shape, dtype=bool)
    for y, x, r in zip(yy.tolist(), xx.tolist(), radius.tolist(), strict=False):
        if r <= 1.0:
            acc[y, x] = True
            continue
        w = int(math.ceil(r)) - 1
        y0, y1, x0, x1 = max(y - w, 0), min(y + w + 1, ny), max(x - w, 0), min(x + w + 1, nx)
        win = acc[y0:y1, x0:x1]
        if win.any():
            qy, qx = np.nonzero(win)
            if np.any((qy + y0 - y) ** 2 + (qx + x0 - x) ** 2 < r * r):
                continue
        acc[y, x] = True
    return acc


def poisson_disc_mask(shape, acceleration: float, center_fraction: float = 0.08, seed: int = 0,
                      calib=None, vd: float = 1.0, tol: float = 0.02) -> np.ndarray:
    """2D variable-density Poisson-disc mask ``(ny, nx)`` with a fully sampled calibration rectangle.

    The disc radius grows with the distance from the centre by ``1 + vd * rho`` (``vd >= 0``);
    a bisection on the base radius hits ``ny nx / R`` sampled points within ``tol``.  Where the
    count jumps past the target (a uniform density, ``vd = 0``, on a small grid), the closest
    mask above it is thinned by random points outside the calibration region (distances only
    grow).  A calibration rectangle holding more than ``1/R`` of k-space is refused in one
    sentence.
    """
    r, cf = _check(acceleration, center_fraction, one_d=False)
    ny, nx = (int(s) for s in shape)
    ch, cw = _calib_size((ny, nx), calib, cf)
    vd, tol = _number(vd, "vd"), _number(tol, "tol")
    if vd < 0:
        raise InputError(f"poisson mask vd must be >= 0 (density falling off from the centre), got {vd!r}")
    if not 0 < tol < 1:
        raise InputError(f"poisson mask tol must be in (0, 1), got {tol!r}")
    if r == 1:
        return np.ones((ny, nx), dtype=bool)
    target = ny * nx / r
    if ch * cw > target * (1 + tol):
        raise InputError(f"a {ch} x {cw} calibration region already samples more than 1/{r:g} of the {ny} x {nx} "
                         "k-space; lower calib, center_fraction or the acceleration")
    cal = np.zeros((ny, nx), dtype=bool)
    cal[np.ix_(_center(ny, ch), _center(nx, cw))] = True
    order = np.random.default_rng(_seed(seed)).permutation(ny * nx)
    lo, hi = 0.5, 2.0 * math.sqrt(r) + 1.0  # a disc of radius r0 holds about r0^2 grid points
    best = above = None  # the closest mask, and the closest with at least the target count
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        m = _dart_throw((ny, nx), mid, vd, order) | cal
        cnt = int(m.sum())
        if best is None or abs(cnt - target) < abs(int(best.sum()) - target):
            best = m
        if cnt >= target and (above is None or cnt < int(above.sum())):
            above = m
        if abs(cnt - target) <= tol * target:
            return m
        if cnt > target:
            lo = mid
        else:
            hi = mid
    # the count jumps with the radius (uniform density, vd = 0, above all): thin the closest mask
    # above the target by random points outside the calibration region; distances only grow
    if above is None:
        raise InputError(f"a Poisson-disc mask of the {ny} x {nx} grid cannot reach acceleration {r:g} "
                         f"(closest {ny * nx / int(best.sum()):.2f})")
    free = np.flatnonzero(above & ~cal)
    n_drop = int(above.sum()) - int(round(target))
    m = above.copy()
    m.flat[np.random.default_rng([_seed(seed), 1]).choice(free, size=min(n_drop, free.size), replace=False)] = False
    return m


def make_mask(shape, spec: dict[str, Any]) -> np.ndarray:
    """Boolean ``(ny, nx)`` mask from a spec dict (see the module docstring); 1D kinds select columns."""
    if not isinstance(spec, dict):
        raise InputError(f"a mask spec must be a dict with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise InputError(f"unknown mask kind {kind!r}; use one of {', '.join(KINDS)}")
    ny, nx = (int(s) for s in shape)
    if ny < 1 or nx < 1:
        raise InputError(f"a mask needs a grid of at least 1 x 1, got {ny} x {nx}")
    known = {"kind", "acceleration", "center_fraction", "seed"}
    extra_keys = {"equispaced": {"offset"}, "gaussian": {"sigma"}, "poisson": {"calib", "vd", "tol"}}
    bad = set(spec) - known - extra_keys.get(kind, set())
    if bad:
        raise InputError(f"mask kind {kind!r} has no option {sorted(bad)[0]!r}")
    if "acceleration" not in spec:
        raise InputError(f"mask kind {kind!r} needs an acceleration")
    args = dict(acceleration=spec["acceleration"], center_fraction=spec.get("center_fraction", 0.08),
                seed=_seed(spec.get("seed", 0)))
    if kind == "poisson":
        return poisson_disc_mask((ny, nx), calib=spec.get("calib"), vd=spec.get("vd", 1.0),
                                 tol=spec.get("tol", 0.02), **args)
    if kind == "random":
        cols = random_mask(nx, **args)
    elif kind == "equispaced":
        cols = equispaced_mask(nx, offset=spec.get("offset"), **args)
    elif kind == "equispaced_fraction":
        cols = equispaced_fraction_mask(nx, **args)
    else:
        cols = gaussian_mask(nx, sigma=spec.get("sigma", 0.3), **args)
    return np.broadcast_to(cols[None, :], (ny, nx)).copy()


def resolve_mask(shape, mask) -> np.ndarray:
    """The boolean ``(ny, nx)`` mask described by an operator's ``mask`` parameter.

    ``None``: fully sampled; a flat list of ``nx`` 0/1 values: phase-encode columns;
    a nested ``ny x nx`` list: points; a dict: a generator spec (:func:`make_mask`).
    """
    ny, nx = (int(s) for s in shape)
    if mask is None:
        return np.ones((ny, nx), dtype=bool)
    if isinstance(mask, dict):
        return make_mask((ny, nx), mask)
    try:
        a = np.asarray(mask, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("mask must be None, a list of 0/1 values, or a generator spec dict") from None
    if a.ndim == 1 and a.shape[0] == nx:
        a = np.broadcast_to(a[None, :], (ny, nx))
    elif a.shape != (ny, nx):
        raise InputError(f"an explicit mask must have {nx} entries (phase-encode columns) or be {ny}x{nx}, "
                         f"got shape {a.shape}")
    if not np.all((a == 0) | (a == 1)):
        raise InputError("an explicit mask must hold only 0 and 1")
    return a.astype(bool).copy()


def calibration_region(mask: np.ndarray) -> tuple[slice, slice]:
    """The fully sampled centred rectangle of a ``(ny, nx)`` mask as ``(row slice, column slice)``.

    For a column (1D) mask: all rows and the run of fully sampled columns around ``nx // 2``;
    otherwise the largest fully sampled centred rectangle grown from the centre point.
    Empty slices when the centre is not sampled.
    """
    m = np.asarray(mask, dtype=bool)
    ny, nx = m.shape
    cy, cx = ny // 2, nx // 2
    if not m[cy, cx]:
        return slice(cy, cy), slice(cx, cx)
    full = m.all(axis=0)
    if full[cx]:
        lo, hi = cx, cx + 1
        while lo > 0 and full[lo - 1]:
            lo -= 1
        while hi < nx and full[hi]:
            hi += 1
        return slice(0, ny), slice(lo, hi)
    best = (0, cy, cy + 1, cx, cx + 1)
    for hgt in range(1, ny + 1):  # the centred rectangle of largest area
        y0 = cy - hgt // 2
        y1 = y0 + hgt
        if y0 < 0 or y1 > ny:
            break
        rows_ok = m[y0:y1].all(axis=0)
        if not rows_ok[cx]:
            break
        x0, x1 = cx, cx + 1
        while x0 > 0 and rows_ok[x0 - 1]:
            x0 -= 1
        while x1 < nx and rows_ok[x1]:
            x1 += 1
        if hgt * (x1 - x0) > best[0]:
            best = (hgt * (x1 - x0), y0, y1, x0, x1)
    _, y0, y1, x0, x1 = best
    return slice(y0, y1), slice(x0, x1)


def mask_info(mask: np.ndarray) -> dict[str, Any]:
    """Achieved acceleration and counts of a ``(ny, nx)`` mask.

    Returns ``{"acceleration": ny nx / n_sampled, "sampled_fraction", "n_sampled", "n_total",
    "calibration": [rows, columns]}`` (the fully sampled centred rectangle).
    """
    m = np.asarray(mask, dtype=bool)
    n = int(m.sum())
    rs, cs = calibration_region(m)
    return {"acceleration": (m.size / n) if n else float("inf"), "sampled_fraction": n / m.size,
            "n_sampled": n, "n_total": int(m.size), "calibration": [rs.stop - rs.start, cs.stop - cs.start]}
