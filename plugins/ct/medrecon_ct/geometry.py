"""2D CT geometries shared by the parallel- and fan-beam operators.

Coordinates (all lengths in mm)
-------------------------------
An image ``x`` of shape ``(ny, nx)`` with square pixels of side ``pixel_size``
is centred on the rotation axis.  Pixel ``(i, j)`` (row ``i``, column ``j``)
has its centre at::

    X_j = (j - (nx - 1) / 2) * pixel_size          # to the right
    Y_i = ((ny - 1) / 2 - i) * pixel_size          # up (row 0 is the top)

so the image looks as displayed by ``matplotlib.pyplot.imshow``.

A view angle ``theta`` (degrees) is counted counter-clockwise from the X axis.
At ``theta`` the detector axis is ``e_u = (cos theta, sin theta)`` and rays
travel along ``d = (-sin theta, cos theta)``.  Detector bin ``k`` of ``n_det``
sits at ``u_k = (k - (n_det - 1) / 2) * det_spacing + det_offset``.

* Parallel beam: the ray of bin ``k`` is ``{u_k e_u + t d}``; at ``theta = 0``
  the projection is the column sum of the image (as ``skimage.transform.radon``).
* Fan beam, flat detector: the source is at ``-R d`` (``R`` = source to
  isocentre), the detector line at distance ``D`` (source to detector) from the
  source, ``{-R d + D d + u e_u}``; the ray of bin ``k`` joins the source to
  the centre of bin ``k``.

Angle lists
-----------
:func:`resolve_angles` turns ``n_views`` / ``arc`` / ``angles`` into an explicit
list: ``n_views`` alone gives ``linspace(0, full, n_views, endpoint=False)``
(``full`` is 180 for parallel beam, 360 for fan beam); ``arc=[a, b]`` with
``n_views`` gives ``linspace(a, b, n_views, endpoint=False)`` (limited angle);
``angles`` is used as given.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from medrecon.errors import InputError

__all__ = [
    "FILTERS",
    "FanGeometry",
    "ParallelGeometry",
    "check_filter",
    "resolve_angles",
    "resolve_shape",
]

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")


def _finite(name: str, v, positive: bool = False, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise InputError(f"{name} must be finite, got {v!r}")
    if positive and f <= 0:
        raise InputError(f"{name} must be positive, got {v!r}")
    return f


def resolve_shape(shape) -> tuple[int, int]:
    """``shape`` as ``(ny, nx)``; an int ``n`` means ``(n, n)``."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    try:
        s = tuple(int(v) for v in shape)
        ok = len(s) == 2 and all(float(a) == b for a, b in zip(shape, s, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(s) < 1:
        raise InputError(f"shape must be an image size n or [ny, nx] of positive integers, got {shape!r}")
    return s


def check_filter(name) -> str:
    """Validate an FBP filter name (case-insensitive), suggesting the closest one."""
    key = str(name).lower().replace("_", "-").replace(" ", "-")
    key = {"ramlak": "ram-lak", "ramp": "ram-lak", "shepplogan": "shepp-logan", "hanning": "hann"}.get(
        key.replace("-", ""), key
    )
    if key not in FILTERS:
        close = difflib.get_close_matches(key, FILTERS, n=1, cutoff=0.0)
        raise InputError(
            f"unknown FBP filter {name!r}; did you mean {close[0]!r}? (choices: {', '.join(FILTERS)})"
        )
    return key


#: the most views a geometry may have (clinical scanners record a few thousand per turn)
MAX_VIEWS = 100_000


def resolve_angles(n_views=None, angles=None, arc=None, full: float = 180.0) -> np.ndarray:
    """The view angles in degrees (float64 array), see the module docstring."""
    if angles is not None:
        if arc is not None:
            raise InputError("give either angles or arc, not both")
        try:
            a = np.asarray(angles, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InputError(f"angles must be a list of numbers in degrees, got {angles!r}") from None
        if a.size < 1:
            raise InputError("angles must hold at least one angle")
        if not np.all(np.isfinite(a)):
            raise InputError("angles must be finite numbers in degrees")
        if n_views is not None and int(n_views) != a.size:
            raise InputError(f"n_views={n_views} disagrees with the {a.size} angles given")
        return a
    if n_views is None:
        n_views = 180 if full == 180.0 else 360
    if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer, float)) or (
        isinstance(n_views, float) and not n_views.is_integer()
    ):
        raise InputError(f"n_views must be a positive integer, got {n_views!r}")
    n = int(n_views)
    if n < 1:
        raise InputError(f"n_views must be at least 1, got {n_views!r}")
    if n > MAX_VIEWS:
        raise InputError(f"n_views={n} is more than the {MAX_VIEWS} views any scanner records; ask for fewer")
    if arc is None:
        start, stop = 0.0, full
    else:
        try:
            start, stop = (float(v) for v in arc)
        except (TypeError, ValueError):
            raise InputError(f"arc must be [start, stop] in degrees, got {arc!r}") from None
        if not (math.isfinite(start) and math.isfinite(stop)) or stop == start:
            raise InputError(f"arc must be two different finite angles in degrees, got {arc!r}")
    return np.linspace(start, stop, n, endpoint=False)


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, int]
    angles: np.ndarray = field(repr=False)  # degrees
    n_det: int
    det_spacing: float
    pixel_size: float
    det_offset: float

    kind = "geometry"

    @property
    def n_views(self) -> int:
        return int(self.angles.size)

    @property
    def u(self) -> np.ndarray:
        """Detector bin centres in mm along ``e_u``."""
        k = np.arange(self.n_det, dtype=np.float64)
        return (k - (self.n_det - 1) / 2.0) * self.det_spacing + self.det_offset

    def _key_fields(self) -> dict:
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "angles": hashlib.sha1(np.ascontiguousarray(self.angles, np.float64).tobytes()).hexdigest(),
            "n_det": self.n_det,
            "det_spacing": repr(self.det_spacing),
            "pixel_size": repr(self.pixel_size),
            "det_offset": repr(self.det_offset),
        }

    def key(self) -> str:
        """A hash of everything the system matrix depends on (for caches)."""
        return self._key

    @functools.cached_property
    def _key(self) -> str:
        s = json.dumps(self._key_fields(), sort_keys=True)
        return hashlib.sha1(s.encode()).hexdigest()[:20]

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(points, directions)``, each ``(n_views * n_det, 2)`` float64 in mm,
        view-major: one point on each ray and its unit direction."""
        raise NotImplementedError

    @property
    def radius(self) -> float:
        """Radius (mm) of the circle circumscribing the image."""
        ny, nx = self.shape
        return 0.5 * self.pixel_size * math.hypot(ny, nx)


@dataclass(frozen=True)
class ParallelGeometry(_Geometry):
    """2D parallel-beam geometry (see module docstring)."""

    kind = "parallel"

    def rays(self):
        th = np.deg2rad(self.angles)[:, None]
        u = self.u[None, :]
        px = u * np.cos(th)
        py = u * np.sin(th)
        dx = np.broadcast_to(-np.sin(th), px.shape)
        dy = np.broadcast_to(np.cos(th), px.shape)
        pts = np.stack([px, py], -1).reshape(-1, 2)
        dirs = np.stack([dx, dy], -1).reshape(-1, 2)
        return pts, dirs


@dataclass(frozen=True)
class FanGeometry(_Geometry):
    """2D fan-beam geometry with a flat detector (see module docstring)."""

    source_to_center: float = 0.0
    source_to_detector: float = 0.0

    kind = "fan"

    def _key_fields(self) -> dict:
        d = super()._key_fields()
        d["source_to_center"] = repr(self.source_to_center)
        d["source_to_detector"] = repr(self.source_to_detector)
        return d

    def rays(self):
        th = np.deg2rad(self.angles)[:, None]
        R, D = self.source_to_center, self.source_to_detector
        d0x, d0y = -np.sin(th), np.cos(th)
        ux, uy = np.cos(th), np.sin(th)
        sx, sy = -R * d0x, -R * d0y
        u = self.u[None, :]
        bx = sx + D * d0x + u * ux
        by = sy + D * d0y + u * uy
        vx, vy = bx - sx, by - sy
        nrm = np.hypot(vx, vy)
        pts = np.stack([np.broadcast_to(sx, bx.shape), np.broadcast_to(sy, bx.shape)], -1).reshape(-1, 2)
        dirs = np.stack([vx / nrm, vy / nrm], -1).reshape(-1, 2)
        return pts, dirs


def default_n_det(shape, pixel_size, det_spacing, magnification: float = 1.0, fan_radius=None) -> int:
    """Detector bins covering the image's circumscribed circle.

    Parallel beam with pixel-sized bins gives ``ceil(sqrt(2) N)`` for a square
    ``N x N`` image (363 at N = 256).
    """
    ny, nx = shape
    if fan_radius is None:
        if det_spacing == pixel_size * magnification and ny == nx:
            return int(math.ceil(math.sqrt(2.0) * nx))
        half = 0.5 * pixel_size * math.hypot(ny, nx) * magnification
    else:
        R, D = fan_radius
        r = 0.5 * pixel_size * math.hypot(ny, nx)
        half = D * math.tan(math.asin(min(r / R, 1.0)))
    return int(math.ceil(2.0 * half / det_spacing - 1e-9))
