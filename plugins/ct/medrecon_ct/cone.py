"""``ct.cone``: 3D circular cone-beam CT with a flat panel (matrix-free torch projector, exact adjoint, FDK).

Coordinates (lengths in mm, angles in degrees)
----------------------------------------------
A volume ``x`` of shape ``(nz, ny, nx)`` with voxels of size ``(dz, dy, dx)`` is centred on
the isocentre.  Voxel ``(k, i, j)`` has its centre at::

    X_j = (j - (nx - 1) / 2) dx          # to the right
    Y_i = ((ny - 1) / 2 - i) dy          # up (row 0 of a slice is the top, as in ct.parallel / ct.fan)
    Z_k = (k - (nz - 1) / 2) dz          # the rotation axis: axis 0 of the volume

so every slice ``x[k]`` sits in the plane ``Z = Z_k`` with the 2D conventions of
:mod:`medrecon_ct.geometry`.  The source turns around ``Z`` on a circle of radius
``R = source_to_center`` in the plane ``Z = 0``.  At view angle ``theta`` (counter-clockwise
from X) the central ray runs along ``d = (-sin theta, cos theta, 0)`` and the source sits at
``S = -R d``; the flat detector is the plane at distance ``D = source_to_detector`` from the
source, spanned by ``e_u = (cos theta, sin theta, 0)`` (columns) and ``e_v = (0, 0, 1)`` (rows,
along Z).  Detector pixel ``(r, c)`` is at::

    P_rc = S + D d + u_c e_u + v_r e_v
    u_c = (c - (n_cols - 1) / 2) col_spacing + offset_col
    v_r = (r - (n_rows - 1) / 2) row_spacing + offset_row

so row ``r`` grows with ``Z`` as slice ``k`` does, and the central row of a scan with
``R, D -> infinity`` is the fan-beam (then parallel-beam) sinogram of the central slice.

Projector
---------
``y[v, r, c] = integral over the ray S -> P_rc of x~(S + t w) dt`` (mm), ``w`` the unit
direction and ``x~`` the trilinear interpolant of the voxel values (zero beyond the outer
voxel centres, reaching zero half a voxel outside the volume).  The integral is the midpoint
rule with a fixed step ``h = min(dz, dy, dx) / 2``::

    y = h * sum_k x~(S + (t_in + (k + 1/2) h) w),   t_in = where the ray enters x~'s support box

The interpolation is ``torch.nn.functional.grid_sample`` (trilinear, zero padding); the volume
batch rides along the channel axis, so all volumes share one set of sample points.  Nothing is
stored: rays are built per chunk of (view, detector row) lines, sized so that one chunk holds at
most ``max_points`` samples.  The adjoint applies the exact transpose of the same
interpolation (``grid_sample``'s backward with respect to its input: each sample's
value ``h * y`` is scattered back to its 8 neighbours with the trilinear weights), chunk by
chunk, so ``<A x, y> = <x, A^T y>`` holds to rounding.

Units: as ``ct.parallel``, rays are integrated in mm, so a volume in attenuation per mm gives
dimensionless line integrals (a uniform ball of value ``mu`` and radius ``r`` gives
``2 mu sqrt(r^2 - d^2)`` on a ray at distance ``d`` from its centre).

FDK
---
:meth:`ConeBeam3D.classical` is the Feldkamp-Davis-Kress algorithm for a circular orbit
(Feldkamp, Davis & Kress 1984; Kak & Slaney section 3.6)::

    y~(u, v)  = D / sqrt(D^2 + u^2 + v^2) * y(u, v)                  cosine pre-weighting
    q         = ramp filter of y~ along each detector row, on the virtual detector
                through the isocentre (spacing col_spacing R / D; ramp and windows of
                :mod:`medrecon_ct.fbp`)
    f(X)      = 1/2 sum_views w_v (R / U)^2 q(u(X), v(X))             weighted backprojection
    U         = R + X . d,   u(X) = D (X . e_u) / U,   v(X) = D Z / U

with ``w_v`` the angular quadrature weights of :func:`medrecon_ct.fbp.angle_weights` over 360
degrees (radians) and bilinear interpolation on the detector.  It is the fan-beam formula of
``ct.fan`` applied to each tilted fan; it is exact in the central plane ``Z = 0`` and
approximate away from it (cone-beam artefacts grow with the cone angle).  It expects a full
360-degree scan: for short, sparse-view or limited-angle scans it returns what FDK returns
(streaks, missing-wedge artefacts, no Parker weights), as FBP does for ``ct.fan``.

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("ct.cone", shape=16, n_views=8)
    >>> y = A(torch.ones(1, 16, 16, 16))        # (B, nz, ny, nx) -> (B, n_views, n_rows, n_cols)
    >>> tuple(y.shape)
    (1, 8, 25, 25)
    >>> tuple(A.classical(y).shape)
    (1, 16, 16, 16)
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param, as_given
from medrecon_ct.fbp import _filter, angle_weights, ramp_response
from medrecon_ct.geometry import _finite, check_filter, resolve_angles
from medrecon_ct.projector import CTProjector2D

__all__ = ["ConeBeam3D"]

_F = torch.nn.functional


# ----------------------------------------------------------------- parameters
def _resolve_shape3(shape) -> tuple[int, int, int]:
    """``shape`` as ``(nz, ny, nx)``; an int ``n`` means ``(n, n, n)``."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),) * 3
    try:
        s = tuple(int(v) for v in shape)
        ok = len(s) == 3 and all(not isinstance(a, bool) and float(a) == b for a, b in zip(shape, s, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(s) < 1:
        raise InputError(f"shape must be a volume size n or [nz, ny, nx] of positive integers, got {shape!r}")
    return s


def _triple_or_pair(name: str, v, n: int, positive: bool, what: str) -> tuple[float, ...]:
    """A number (repeated ``n`` times) or a list of ``n`` numbers, each checked by ``_finite``."""
    if isinstance(v, (list, tuple, np.ndarray)):
        if len(v) != n:
            raise InputError(f"{name} must be a number or a list of {n} numbers ({what}), got {v!r}")
        return tuple(_finite(name, e, positive=positive) for e in v)
    return (_finite(name, v, positive=positive),) * n


def _det_shape(det_shape, default: tuple[int, int]) -> tuple[int, int]:
    """``det_shape`` as ``(n_rows, n_cols)`` (an int ``n`` means ``(n, n)``), or ``default``."""
    if det_shape is None:
        return default
    raw = [det_shape, det_shape] if not isinstance(det_shape, (list, tuple, np.ndarray)) else list(det_shape)
    try:
        ok = len(raw) == 2 and all(not isinstance(e, bool) and float(e).is_integer() and int(e) >= 1 for e in raw)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"det_shape must be a positive integer or [n_rows, n_cols] of positive integers, "
                         f"got {det_shape!r}")
    return int(raw[0]), int(raw[1])


def _det_offset(det_offset) -> tuple[float, float]:
    """``det_offset`` as ``(row, col)`` mm; a number is a column (``u``) offset, as ``ct.fan``'s."""
    if isinstance(det_offset, (list, tuple, np.ndarray)):
        return _triple_or_pair("det_offset", det_offset, 2, False, "[row, col] in mm")
    return 0.0, _finite("det_offset", det_offset)


# ------------------------------------------------------------------ operator
def _grid_sample_transpose(g: torch.Tensor, like: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The exact transpose of trilinear ``grid_sample(x, grid)`` (zeros padding,
    ``align_corners=False``) applied to ``g``: aten's input-gradient kernel (no forward pass),
    or, where a torch build's private signature differs, the same through autograd."""
    try:
        gx, _ = torch.ops.aten.grid_sampler_3d_backward(g, like, grid, 0, 0, False, [True, False])
        return gx
    except (RuntimeError, TypeError, AttributeError):  # pragma: no cover - other torch versions
        x = like.detach().requires_grad_(True)
        with torch.enable_grad():
            out = _F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            (gx,) = torch.autograd.grad(out, x, g)
        return gx


class ConeBeam3D(Operator):
    """3D cone-beam projector, circular orbit, flat panel: ``(B, nz, ny, nx) -> (B, n_views, n_rows, n_cols)``.

    Geometry, projector and FDK: see :mod:`medrecon_ct.cone`.  Parameters (lengths in mm,
    angles in degrees):

    shape
        Volume size ``n`` or ``[nz, ny, nx]``; axis 0 (``z``) is the rotation axis.
    voxel_size
        Voxel size in mm, a number or ``[dz, dy, dx]`` (default 1).
    n_views, arc, angles
        As ``ct.fan``: ``n_views`` alone gives ``linspace(0, 360, n_views, endpoint=False)``
        (default 360; sparse view, e.g. ``n_views=24``); with ``arc=[a, b]``
        ``linspace(a, b, n_views, endpoint=False)`` (limited angle); or an explicit ``angles`` list.
    source_to_center
        ``R``, source to rotation axis (default ``2 max(nz dz, ny dy, nx dx)``); must exceed
        the radius of the volume's circumscribed sphere.
    source_to_detector
        ``D``, source to detector plane (default ``2 R``); must exceed ``R`` + that radius.
    det_shape
        ``[n_rows, n_cols]`` (or one int for both).  Default: enough pixels to see the whole
        circumscribed cylinder of the volume (radius ``r = hypot(ny dy, nx dx) / 2``, half
        height ``h = nz dz / 2``) from every view: ``n_cols = ceil(2 D tan(asin(r / R)) / col)``
        and ``n_rows = ceil(2 D h / (R - r) / row)``.
    det_spacing
        ``[row, col]`` pixel pitch in mm (or one number for both).  Default: one voxel
        magnified to the detector, ``[dz D / R, min(dy, dx) D / R]``.
    det_offset
        Position (mm) of the detector centre relative to the projection of the isocentre:
        ``[row, col]``, or one number for a column offset (an off-centre rotation axis, as
        ``ct.fan``'s ``det_offset``).
    filter
        FDK window: ``ram-lak`` (default), ``shepp-logan``, ``cosine``, ``hamming``, ``hann``.
    max_points
        Samples per chunk (memory bound; default 2**22); does not change the result.
    """

    name: ClassVar[str] = "ct.cone"
    per_slice: ClassVar[bool] = False
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False

    # device / dtype handling shared with the 2D projectors
    device = CTProjector2D.device
    _prep = CTProjector2D._prep

    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param("shape", check=as_given(_resolve_shape3), grid="shape", doc="volume size n or [nz, ny, nx], voxels"),
        Param("voxel_size", 1.0, grid="spacing", doc="voxel size, mm: a number or [dz, dy, dx]"),
        Param("n_views", None, doc="views over a full turn (default 360)"),
        Param("angles", None, doc="explicit view angles, degrees"),
        Param("arc", None, doc="[first, last) angle of the views, degrees (limited angle)"),
        Param("source_to_center", None, doc="R, source to rotation axis, mm"),
        Param("source_to_detector", None, doc="D, source to detector plane, mm (default 2 R)"),
        Param("det_shape", None, doc="[n_rows, n_cols] detector pixels (default: see the whole volume)"),
        Param("det_spacing", None, doc="[row, col] detector pitch, mm (default: one voxel magnified)"),
        Param("det_offset", 0.0, doc="detector centre offset, mm: [row, col] or a column offset"),
        Param("filter", "ram-lak", check=as_given(check_filter), doc="FDK window"),
        Param("max_points", None, doc="samples per chunk (memory bound; default 2**22)"),
    )

    @classmethod
    def example(cls) -> "ConeBeam3D":
        """An 8 x 16 x 16 volume of 1 mm voxels, 8 views over a full turn."""
        return cls(shape=[8, 16, 16], n_views=8)

    def _build(self, p) -> None:
        shape, voxel_size, det_shape, det_spacing = p["shape"], p["voxel_size"], p["det_shape"], p["det_spacing"]
        source_to_center, source_to_detector = p["source_to_center"], p["source_to_detector"]
        max_points = p["max_points"]
        self.vol_shape = _resolve_shape3(shape)
        nz, ny, nx = self.vol_shape
        self.voxel_size = _triple_or_pair("voxel_size", voxel_size, 3, True, "[dz, dy, dx] in mm")
        dz, dy, dx = self.voxel_size
        self.sphere_radius = 0.5 * math.sqrt((nz * dz) ** 2 + (ny * dy) ** 2 + (nx * dx) ** 2)
        R = _finite("source_to_center", source_to_center, positive=True, allow_none=True)
        R = R if R is not None else 2.0 * max(nz * dz, ny * dy, nx * dx)
        if R <= self.sphere_radius:
            raise InputError(f"source_to_center ({R:g} mm) must exceed the radius of the volume's circumscribed "
                             f"sphere ({self.sphere_radius:g} mm), or the source would lie inside the volume")
        D = _finite("source_to_detector", source_to_detector, positive=True, allow_none=True)
        D = D if D is not None else 2.0 * R
        if D <= R + self.sphere_radius:
            raise InputError(f"source_to_detector ({D:g} mm) must exceed source_to_center + the volume's radius "
                             f"({R + self.sphere_radius:g} mm) so the detector lies outside the volume")
        self.R, self.D = R, D
        if det_spacing is None:
            self.det_spacing = (dz * D / R, min(dy, dx) * D / R)
        else:
            self.det_spacing = _triple_or_pair("det_spacing", det_spacing, 2, True, "[row, col] in mm")
        self.det_offset = _det_offset(p["det_offset"])
        self.det_shape = _det_shape(det_shape, self._default_det_shape())
        self.filter = check_filter(p["filter"])
        if max_points is not None and (isinstance(max_points, bool) or not float(max_points).is_integer()
                                       or int(max_points) < 1):
            raise InputError(f"max_points must be a positive integer, got {max_points!r}")
        self.max_points = int(max_points) if max_points is not None else 1 << 22
        self.angles_deg = resolve_angles(p["n_views"], p["angles"], p["arc"], full=360.0)
        self.step = 0.5 * min(self.voxel_size)  # mm, the ray sampling step h
        self.domain_shape = (nz, ny, nx)
        self.range_shape = (int(self.angles_deg.size), *self.det_shape)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def _default_det_shape(self) -> tuple[int, int]:
        nz, ny, nx = self.vol_shape
        dz, dy, dx = self.voxel_size
        r = 0.5 * math.hypot(ny * dy, nx * dx)
        half_u = self.D * math.tan(math.asin(r / self.R))
        half_v = self.D * 0.5 * nz * dz / (self.R - r)
        rows = int(math.ceil(2.0 * half_v / self.det_spacing[0] - 1e-9))
        cols = int(math.ceil(2.0 * half_u / self.det_spacing[1] - 1e-9))
        return max(rows, 1), max(cols, 1)

    # ------------------------------------------------------------ geometry
    @property
    def angles(self) -> torch.Tensor:
        """View angles in degrees (float64, CPU)."""
        return torch.as_tensor(self.angles_deg)

    def detector_coords(self, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, u)``: detector row and column centres in mm, ``(n_rows,)`` and ``(n_cols,)``."""
        (n_rows, n_cols), (sr, sc), (orow, ocol) = self.det_shape, self.det_spacing, self.det_offset
        v = (torch.arange(n_rows, dtype=dtype, device=device) - (n_rows - 1) / 2.0) * sr + orow
        u = (torch.arange(n_cols, dtype=dtype, device=device) - (n_cols - 1) / 2.0) * sc + ocol
        return v, u

    def _half_extent(self) -> tuple[float, float, float]:
        """Half-widths (mm, X, Y, Z) of the support box of the trilinear interpolant."""
        nz, ny, nx = self.vol_shape
        dz, dy, dx = self.voxel_size
        return 0.5 * (nx + 1) * dx, 0.5 * (ny + 1) * dy, 0.5 * (nz + 1) * dz

    def _rays(self, lines: torch.Tensor, dtype, device):
        """Rays of detector lines ``lines`` (flat ``view * n_rows + row`` indices).

        Returns ``(S, w, t_in, t_out)``: sources ``(L, 1, 3)`` and unit directions ``(L, C, 3)``
        in mm, (X, Y, Z); entry and exit distances ``(L, C)`` of the support box (``t_in >= 0``).
        """
        n_rows = self.det_shape[0]
        th = torch.as_tensor(np.deg2rad(self.angles_deg), dtype=dtype, device=device)[lines // n_rows]
        vrow, u = self.detector_coords(dtype, device)
        v = vrow[lines % n_rows]
        s, c = torch.sin(th)[:, None], torch.cos(th)[:, None]
        R, D = self.R, self.D
        src = torch.stack([R * s, -R * c, torch.zeros_like(s)], -1)  # S = -R d, (L, 1, 3)
        dvec = torch.stack([-D * s + u * c, D * c + u * s, v[:, None].expand(-1, u.numel())], -1)
        w = dvec / torch.linalg.vector_norm(dvec, dim=-1, keepdim=True)
        half = torch.tensor(self._half_extent(), dtype=dtype, device=device)
        wsafe = torch.where(w.abs() < 1e-12, torch.full_like(w, 1e-12), w)
        t1, t2 = (-half - src) / wsafe, (half - src) / wsafe
        t_in = torch.minimum(t1, t2).amax(-1).clamp(min=0.0)
        t_out = torch.maximum(t1, t2).amin(-1)
        return src, w, t_in, t_out

    def _to_grid(self, pts: torch.Tensor) -> torch.Tensor:
        """Points (mm, X Y Z) -> ``grid_sample`` coordinates (align_corners=False): voxel
        centre ``j`` of an axis of ``n`` voxels is at ``(2 j + 1) / n - 1``."""
        nz, ny, nx = self.vol_shape
        dz, dy, dx = self.voxel_size
        scale = torch.tensor([2.0 / (nx * dx), -2.0 / (ny * dy), 2.0 / (nz * dz)], dtype=pts.dtype,
                             device=pts.device)
        return pts * scale

    def _line_chunks(self):
        """Chunks ``range(l0, l1)`` of detector lines holding at most ``max_points`` samples."""
        n_lines = self.range_shape[0] * self.det_shape[0]
        hx, hy, hz = self._half_extent()
        m_max = int(math.ceil(2.0 * math.sqrt(hx * hx + hy * hy + hz * hz) / self.step)) + 1
        per = max(1, self.max_points // (self.det_shape[1] * m_max))
        for l0 in range(0, n_lines, per):
            yield l0, min(n_lines, l0 + per)

    def _samples(self, l0: int, l1: int, dtype, device):
        """The sample grid ``(1, L, C, M, 3)`` of lines ``l0:l1`` and the hit mask ``(L, C)``, or
        ``(None, None)`` when no ray of the chunk meets the volume."""
        lines = torch.arange(l0, l1, device=device)
        src, w, t_in, t_out = self._rays(lines, dtype, device)
        hit = t_out > t_in
        if not bool(hit.any()):
            return None, None
        t_in = torch.where(hit, t_in, torch.zeros_like(t_in))
        m = int(math.ceil(float((t_out - t_in)[hit].max()) / self.step))
        t = t_in[..., None] + (torch.arange(m, dtype=dtype, device=device) + 0.5) * self.step  # (L, C, M)
        pts = src[:, :, None, :] + t[..., None] * w[:, :, None, :]
        return self._to_grid(pts)[None], hit.to(dtype)

    # ------------------------------------------------------------ contract
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = A x``: midpoint-rule line integrals of the trilinear interpolant (module docstring)."""
        x = self._prep(x, "image")
        B = x.shape[0]
        n_v, n_rows, n_cols = self.range_shape
        y = x.new_zeros(B, n_v * n_rows, n_cols)
        vol = x[None]  # (1, B, nz, ny, nx): the batch rides along the channels
        for l0, l1 in self._line_chunks():
            grid, hit = self._samples(l0, l1, x.dtype, x.device)
            if grid is None:
                continue
            vals = _F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            y[:, l0:l1] = vals[0].sum(-1) * (self.step * hit)
        return y.reshape(B, n_v, n_rows, n_cols)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``x = A^T y``: each sample's ``h * y`` scattered back with the trilinear weights
        (``grid_sample``'s exact input gradient), chunk by chunk."""
        y = self._prep(y, "measurement")
        B = y.shape[0]
        n_v, n_rows, n_cols = self.range_shape
        yl = y.reshape(B, n_v * n_rows, n_cols)
        zeros = y.new_zeros(1, B, *self.vol_shape)
        out = y.new_zeros(1, B, *self.vol_shape)
        for l0, l1 in self._line_chunks():
            grid, hit = self._samples(l0, l1, y.dtype, y.device)
            if grid is None:
                continue
            g = (yl[:, l0:l1] * (self.step * hit))[None, ..., None].expand(-1, -1, -1, -1, grid.shape[3])
            out += _grid_sample_transpose(g.contiguous(), zeros, grid)
        return out[0]

    # ---------------------------------------------------------------- FDK
    def classical(self, y: torch.Tensor, filter: str | None = None) -> torch.Tensor:
        """FDK reconstruction of ``y`` ``(B, n_views, n_rows, n_cols)`` -> ``(B, nz, ny, nx)``.

        ``filter`` overrides the operator's ``filter`` (``ram-lak, shepp-logan, cosine, hamming,
        hann``).  Formula and limits in :mod:`medrecon_ct.cone`: exact in the central plane for
        a full turn, approximate off it; no short-scan (Parker) weights.
        """
        self._check(y, self.range_shape, "measurement")
        y = self._prep(y, "measurement")
        if not bool(torch.isfinite(y).all()):
            raise InputError(f"{self.name} measurement contains NaN or infinite values")
        q = self._fdk_filter(y, check_filter(filter) if filter is not None else self.filter)
        return self._fdk_backproject(q)

    def _fdk_filter(self, y: torch.Tensor, filter: str) -> torch.Tensor:
        """Cosine pre-weighting, row-wise ramp on the virtual detector, angular weights (incl. 1/2)."""
        R, D = self.R, self.D
        v, u = self.detector_coords(y.dtype, y.device)
        p = y * (D / torch.sqrt(D * D + u[None, :] ** 2 + v[:, None] ** 2))
        n_pad, H = ramp_response(self.det_shape[1], filter)
        q = _filter(p, H, n_pad, self.det_spacing[1] * R / D)
        w = torch.as_tensor(0.5 * angle_weights(self.angles_deg, 360.0), dtype=y.dtype, device=y.device)
        return q * w[None, :, None, None]

    def _fdk_backproject(self, q: torch.Tensor) -> torch.Tensor:
        """Voxel-driven ``sum_v (R / U)^2 q_v(u(X), v(X))`` with bilinear detector interpolation."""
        B, n_v = q.shape[:2]
        nz, ny, nx = self.vol_shape
        dz, dy, dx = self.voxel_size
        dt, dev = q.dtype, q.device
        R, D = self.R, self.D
        (n_rows, n_cols), (sr, sc), (orow, ocol) = self.det_shape, self.det_spacing, self.det_offset
        X = (torch.arange(nx, dtype=dt, device=dev) - (nx - 1) / 2.0) * dx
        Y = ((ny - 1) / 2.0 - torch.arange(ny, dtype=dt, device=dev)) * dy
        Z = (torch.arange(nz, dtype=dt, device=dev) - (nz - 1) / 2.0) * dz
        Yg, Xg = (g.reshape(-1) for g in torch.meshgrid(Y, X, indexing="ij"))
        th = torch.as_tensor(np.deg2rad(self.angles_deg), dtype=dt, device=dev)
        qv = q.transpose(0, 1)  # (V, B, n_rows, n_cols): one detector image per view
        out = q.new_zeros(B, nz, ny * nx)
        budget = max(1, self.max_points // (B + 4))
        zc = max(1, min(nz, budget // (ny * nx)))
        for z0 in range(0, nz, zc):
            Zs = Z[z0:z0 + zc]
            vc = max(1, budget // (Zs.numel() * ny * nx))
            for v0 in range(0, n_v, vc):
                s, c = torch.sin(th[v0:v0 + vc])[:, None], torch.cos(th[v0:v0 + vc])[:, None]
                U = R - Xg[None] * s + Yg[None] * c  # (V', P): distance from the source along d
                mag = D / U
                gu = 2.0 * ((Xg[None] * c + Yg[None] * s) * mag - ocol) / (n_cols * sc)
                gv = 2.0 * (Zs[None, :, None] * mag[:, None, :] - orow) / (n_rows * sr)  # (V', z, P)
                grid = torch.stack([gu[:, None, :].expand_as(gv), gv], -1).reshape(gv.shape[0], 1, -1, 2)
                vals = _F.grid_sample(qv[v0:v0 + vc], grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False)  # (V', B, 1, z * P)
                wdist = ((R / U) ** 2)[:, None, :].expand_as(gv).reshape(gv.shape[0], 1, -1)
                out[:, z0:z0 + zc] += (vals[:, :, 0] * wdist).sum(0).reshape(B, Zs.numel(), ny * nx)
        return out.reshape(B, nz, ny, nx)
