"""Is the posterior standard deviation an error bar?  Coverage, calibration curve, scale factors.

A run with ``samples`` N > 1 (:func:`medrecon.reconstruct`) returns the mean of N posterior draws
and their per-pixel standard deviation ``std`` (physical units), both computed by
:class:`DrawMoments` for every sampler family (2D, volume and MR samplers alike).  This module
says how far that ``std`` can be trusted against a reference ``ref``:

* **coverage at k std**: the fraction of pixels with ``|mean - ref| <= k std``.  For a Gaussian
  error with standard deviation ``std`` it is ``erf(k / sqrt 2)``: 68.3 / 95.4 / 99.7 % at
  k = 1 / 2 / 3 (:func:`nominal`);
* the **calibration curve**: observed against nominal coverage for k from 0 to 3;
* the **std-|error| correlation** (Pearson, and Spearman on ranks): does the map point at the
  pixels that are wrong;
* the **calibration factor** ``s`` (:func:`calibration_factor`): the scale that makes the
  2-std coverage of ``s * std`` nominal on calibration data, ``s = q_{0.954}(|mean - ref| / std) / 2``.

All statistics are taken per slice and overall on a window: only pixels whose reference lies in
``[lo, hi]`` (physical units; the window of :mod:`medrecon.evaluation`) count.

**What the std is.**  The spread of the draws is the posterior spread *under the prior*: if the
prior were the true distribution of images and the sampler exact, ``mean +- 2 std`` would cover
the truth in 95.4 % of pixels (up to the finite-N effect of :func:`expected_coverage`).  It is
not the error of the prior itself; a prior that does not fit the data (another body region,
another contrast) can be confidently wrong.

**Finite N.**  With N exact draws, ``(ref - mean) / std`` is Student-t distributed, so even an
exact sampler covers less than ``erf(k / sqrt 2)``: :func:`expected_coverage` gives the value
(8 independent draws: 89.6 % at 2 std; 4 antithetic pairs: 88.4 %).  Antithetic pairs
(``x_{2j+1}`` from the negated noise of ``x_{2j}``) give a mean with no noise of its own where
the sampler is linear in its noise, and ``std**2 = sum (x_i - mean)**2 / N`` then estimates the
posterior variance with N / 2 degrees of freedom (the pair members are not independent).

**Stored calibration.**  ``calibrate-uncertainty`` (:mod:`medrecon.calibration`) writes a
factor per sampler into the prior's config.json, section ``uncertainty_calibration`` (outside the
prior's fingerprint, like ``recommended``); :func:`select_calibration` picks the entry a run uses
and the engine multiplies the std component by its factor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError

__all__ = ["DrawMoments", "nominal", "expected_coverage", "draw_factor", "run_factor", "uncertainty_report",
           "calibration_factor", "select_calibration", "validate_calibration", "KS", "CURVE_K", "SECTION"]

#: the k of the coverage table (k std around the mean)
KS = (1.0, 2.0, 3.0)
#: the k of the calibration curve, 0 to 3 in steps of 0.1
CURVE_K = tuple(round(0.1 * i, 1) for i in range(31))
#: the config.json section holding the stored calibration
SECTION = "uncertainty_calibration"


class DrawMoments:
    """Running mean and spread of posterior draws (Welford, float64): one home for the ``std``
    component of every sampler family.

    ``add(x)`` one draw (an array of any shape); ``result()`` -> ``(mean, std)``, float32, with

        std = sqrt(M2 / (N - 1))   for independent draws (unbiased variance),
        std = sqrt(M2 / N)         for antithetic pairs,

    ``M2 = sum_i (x_i - mean)**2``.  Antithetic pairs spend no degree of freedom on the mean
    (it is exact where the sampler is linear in its noise), so ``M2 / N`` is the unbiased
    variance there; it estimates it with N / 2 degrees of freedom (:func:`expected_coverage`).

    >>> m = DrawMoments(antithetic=False)
    >>> for v in (1.0, 3.0):
    ...     m.add(np.array([v]))
    >>> [float(a[0]) for a in m.result()]
    [2.0, 1.4142135381698608]
    """

    def __init__(self, antithetic: bool = False):
        self.antithetic = bool(antithetic)
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, draw) -> None:
        x = np.asarray(draw, np.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.copy(), np.zeros_like(x)
            return
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (x - self.mean)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of the draws added, float32 (needs at least two draws)."""
        if self.n < 2:
            raise InputError(f"a standard deviation needs at least two draws, got {self.n}")
        std = np.sqrt(self.m2 / (self.n if self.antithetic else self.n - 1))
        return self.mean.astype(np.float32), std.astype(np.float32)


def nominal(k: float) -> float:
    """``P(|Z| <= k)`` for a standard normal Z: ``erf(k / sqrt 2)`` (0.683, 0.954, 0.997 at 1, 2, 3)."""
    return math.erf(float(k) / math.sqrt(2.0))


def expected_coverage(k: float, n: int | None = None, antithetic: bool = False) -> float:
    """Coverage at ``k`` std that an *exact* posterior sampler gives with ``n`` draws.

    Independent draws: ``ref - mean ~ N(0, (1 + 1/n) s^2)`` and ``std^2 ~ s^2 chi2_{n-1} / (n-1)``,
    so ``P(|T_{n-1}| <= k / sqrt(1 + 1/n))``.  Antithetic pairs (linear sampler): the mean is exact
    and ``std^2 ~ s^2 chi2_{n/2} / (n/2)``, so ``P(|T_{n/2}| <= k)``.  ``n`` None: infinitely many
    draws, :func:`nominal`."""
    if n is None:
        return nominal(k)
    from scipy.stats import t as student_t

    n = int(n)
    if n < 2:
        raise InputError(f"coverage needs at least two draws, got {n}")
    if antithetic:
        return float(2 * student_t.cdf(float(k), n // 2) - 1)
    return float(2 * student_t.cdf(float(k) / math.sqrt(1 + 1 / n), n - 1) - 1)


def draw_factor(n: int, antithetic: bool = False, k: float = 2.0) -> float:
    """The scale an *exact* sampler's ``std`` from ``n`` draws needs for a nominal ``k``-std coverage:
    ``t_{dof}^{-1}((1 + p) / 2) / k`` with ``p = erf(k / sqrt 2)``, ``dof = n / 2`` for antithetic pairs,
    else ``n - 1`` with the extra ``sqrt(1 + 1/n)`` of the mean's own error (:func:`expected_coverage`).
    1.29 for 8 independent draws, 1.43 for 4 antithetic pairs; -> 1 as ``n`` grows.

    A stored calibration (:func:`run_factor`) divides its measured factor by this to keep what belongs
    to the prior and the sampler, and multiplies by it for the draws of the run it is applied to."""
    from scipy.stats import t as student_t

    n = int(n)
    if n < 2:
        raise InputError(f"calibration needs at least two draws, got {n}")
    q = (1 + nominal(k)) / 2
    if antithetic:
        return float(student_t.ppf(q, n // 2) / k)
    return float(student_t.ppf(q, n - 1) * math.sqrt(1 + 1 / n) / k)


def run_factor(entry: dict, samples: int, antithetic: bool) -> float:
    """The factor a stored calibration ``entry`` gives a run of ``samples`` draws: its
    ``prior_factor`` (the measured factor over :func:`draw_factor` of the draws it was measured
    with) times :func:`draw_factor` of this run's draws; the measured ``factor`` itself when the
    draws are the same."""
    same = int(entry.get("samples") or 0) == int(samples) and bool(entry.get("antithetic")) == bool(antithetic)
    if same or not entry.get("prior_factor"):
        return float(entry["factor"])
    return float(entry["prior_factor"]) * draw_factor(samples, antithetic, float(entry.get("k", 2.0)))


def _as3d(a, what: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{what} must be a (Z, Y, X) volume or one (Y, X) slice, got shape {a.shape}")
    return a


def _windows(windows, window, z: int) -> list:
    if windows is not None:
        ws = list(windows)
        if len(ws) != z:
            raise InputError(f"{len(ws)} windows were given for {z} slices")
        return ws
    return [window] * z


def _ratios(mean, std, ref, windows) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per slice, over the pixels of its window: ``(|mean - ref| / std, std, |mean - ref|)``.

    ``std`` 0 gives ratio 0 where the error is 0 too and +inf otherwise; non-finite pixels drop."""
    out = []
    for m, s, r, w in zip(mean, std, ref, windows, strict=True):
        keep = np.isfinite(m) & np.isfinite(s) & np.isfinite(r)
        if w is not None:
            lo, hi = (float(v) for v in w)
            keep &= (r >= lo) & (r <= hi)
        err, sd = np.abs(m[keep] - r[keep]), np.maximum(s[keep], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, err / np.where(sd > 0, sd, 1.0), np.where(err > 0, np.inf, 0.0))
        out.append((z, sd, err))
    return out


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3 or float(np.std(a)) == 0.0 or float(np.std(b)) == 0.0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _stats(z: np.ndarray, sd: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    from scipy.stats import rankdata

    n = int(z.size)
    if n == 0:
        return {"pixels": 0, "coverage": {f"{k:g}": None for k in KS}, "curve": None, "pearson": None,
                "spearman": None, "mean_std": None, "rmse": None, "calibration_error": None}
    curve = [float(np.mean(z <= k)) for k in CURVE_K]
    return {
        "pixels": n,
        "coverage": {f"{k:g}": float(np.mean(z <= k)) for k in KS},
        "curve": {"k": list(CURVE_K), "nominal": [nominal(k) for k in CURVE_K], "observed": curve},
        "calibration_error": float(np.mean([abs(o - nominal(k)) for k, o in zip(CURVE_K, curve, strict=True)])),
        "pearson": _corr(sd, err),
        "spearman": _corr(rankdata(sd), rankdata(err)) if n >= 3 else None,
        "mean_std": float(np.mean(sd)),
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "median_ratio": float(np.median(z)),
    }


def uncertainty_report(mean, std, ref, *, window=None, windows=None, samples: int | None = None,
                       antithetic: bool = False) -> dict[str, Any]:
    """Coverage, calibration curve and std-|error| correlation, per slice and overall.

    Parameters
    ----------
    mean, std, ref : arrays (Z, Y, X) or (Y, X), physical units
        The draws' mean and standard deviation, and the reference (ground truth).
    window : (lo, hi), optional
        Only pixels with ``lo <= ref <= hi`` count (all pixels when None).
    windows : list of (lo, hi), optional
        One window per slice instead (e.g. each MR slice's [min, max]).
    samples, antithetic : optional
        The draws behind ``std``: adds ``expected_exact``, the coverage an exact sampler would give
        with them (:func:`expected_coverage`).

    Returns
    -------
    dict: ``overall`` and ``per_slice`` (list) with ``pixels``, ``coverage`` {"1", "2", "3"}
    (fractions), ``curve`` (``k``, ``nominal``, ``observed``), ``calibration_error`` (mean
    |observed - nominal| over the curve), ``pearson`` and ``spearman`` (std vs |error|),
    ``mean_std``, ``rmse`` and ``median_ratio`` (median |error| / std; 0.674 for a calibrated
    Gaussian); ``nominal`` {"1", "2", "3"}; ``definition``.
    """
    mean, std, ref = _as3d(mean, "the mean"), _as3d(std, "the std"), _as3d(ref, "the reference")
    if not (mean.shape == std.shape == ref.shape):
        raise InputError(f"mean {mean.shape}, std {std.shape} and reference {ref.shape} must have one shape")
    parts = _ratios(mean, std, ref, _windows(windows, window, mean.shape[0]))
    overall = _stats(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
    out: dict[str, Any] = {
        "overall": overall,
        "per_slice": [_stats(*p) for p in parts],
        "nominal": {f"{k:g}": nominal(k) for k in KS},
        "definition": "coverage at k: fraction of pixels (reference inside the window) with |mean - ref| <= k std",
    }
    if samples is not None:
        out["expected_exact"] = {f"{k:g}": expected_coverage(k, samples, antithetic) for k in KS}
        out["samples"], out["antithetic"] = int(samples), bool(antithetic)
    return out


def calibration_factor(mean, std, ref, *, window=None, windows=None, k: float = 2.0) -> dict[str, Any]:
    """The scale ``s`` of ``std`` whose ``k``-std coverage is nominal on these data.

    ``s = q_p(|mean - ref| / std) / k`` with ``p = erf(k / sqrt 2)`` (the "higher" quantile over
    the window's pixels): after it, ``|mean - ref| <= k s std`` holds in a fraction ``p`` of the
    pixels.  Returns ``{"factor", "k", "target", "coverage_raw", "coverage_calibrated", "pixels"}``;
    one sentence if no pixel counts or the factor is not finite (std 0 where the error is not)."""
    mean, std, ref = _as3d(mean, "the mean"), _as3d(std, "the std"), _as3d(ref, "the reference")
    if not (mean.shape == std.shape == ref.shape):
        raise InputError(f"mean {mean.shape}, std {std.shape} and reference {ref.shape} must have one shape")
    z = np.concatenate([p[0] for p in _ratios(mean, std, ref, _windows(windows, window, mean.shape[0]))])
    if z.size == 0:
        raise InputError("no pixel of the reference lies inside the window: nothing to calibrate on")
    p = nominal(k)
    q = float(np.quantile(z, p, method="higher"))
    if not math.isfinite(q) or q <= 0:
        raise InputError(f"the draws' std is 0 where the error is not in more than {100 * (1 - p):.1f} % of the "
                         "pixels: no scale of it can cover the reference")
    s = q / float(k)
    return {"factor": s, "k": float(k), "target": p, "coverage_raw": float(np.mean(z <= k)),
            "coverage_calibrated": float(np.mean(z <= k * s)), "pixels": int(z.size)}


def validate_calibration(section: Any, where: str = "config") -> dict:
    """Check a config's ``uncertainty_calibration`` section: ``{sampler: [entry, ...]}``, each entry a
    dict with a finite ``factor`` > 0 and an ``operator`` name (str); one-sentence
    :class:`FileFormatError` otherwise."""
    def bad(msg: str):
        raise FileFormatError(f"{where}: '{SECTION}' {msg}")

    if not isinstance(section, dict):
        bad("must be a JSON object (sampler name -> list of calibrations)")
    for name, entries in section.items():
        if not isinstance(entries, list):
            bad(f"of sampler {name!r} must be a list of calibrations")
        for e in entries:
            f = e.get("factor") if isinstance(e, dict) else None
            if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f) or f <= 0:
                bad(f"of sampler {name!r} needs a finite 'factor' > 0 in each entry, got {f!r}")
            if not isinstance(e.get("operator"), str):
                bad(f"of sampler {name!r} needs an 'operator' name in each entry")
    return section


def select_calibration(config: Any, sampler: str, operator: str, steps: int | None = None) -> dict | None:
    """The stored calibration (config.json ``uncertainty_calibration``) for ``sampler`` with
    ``operator``: the entry measured at ``steps`` if there is one, else the one measured nearest
    to it; None when the prior holds none for this pair."""
    section = config.get(SECTION) if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return None
    entries = [e for e in section.get(sampler) or [] if isinstance(e, dict) and e.get("operator") == operator]
    if not entries:
        return None
    if steps is None:
        return dict(entries[0])

    def dist(e):
        s = e.get("steps")
        return abs(int(s) - int(steps)) if isinstance(s, int) and not isinstance(s, bool) else 10**9

    return dict(min(entries, key=dist))
