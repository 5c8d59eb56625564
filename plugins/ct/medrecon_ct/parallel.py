"""``ct.parallel``: 2D parallel-beam CT projector (sparse Joseph matrix, exact adjoint, FBP).

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("ct.parallel", shape=64, n_views=8)
    >>> y = A(torch.ones(2, 64, 64))          # line integrals, mm x (1/mm)
    >>> tuple(y.shape)                        # n_det = ceil(sqrt(2) * 64)
    (2, 8, 91)
    >>> x_fbp = A.classical(y)
"""

from __future__ import annotations

from typing import ClassVar

from medrecon.errors import InputError
from medrecon.operators.params import Param, as_given
from medrecon_ct.geometry import (
    ParallelGeometry,
    _finite,
    check_filter,
    default_n_det,
    resolve_angles,
    resolve_shape,
)
from medrecon_ct.projector import CTProjector2D

__all__ = ["ParallelBeam2D"]


def _n_det(n_det, default: int) -> int:
    if n_det is None:
        return default
    if isinstance(n_det, bool) or not float(n_det).is_integer() or int(n_det) < 1:
        raise InputError(f"n_det must be a positive integer, got {n_det!r}")
    return int(n_det)


class ParallelBeam2D(CTProjector2D):
    """2D parallel-beam projector ``(B, ny, nx) -> (B, n_views, n_det)``.

    Parameters (lengths in mm, angles in degrees; see :mod:`medrecon_ct.geometry`
    for the coordinate conventions):

    shape
        Image size ``n`` or ``[ny, nx]``.
    n_views, arc, angles
        ``n_views`` alone: ``linspace(0, 180, n_views, endpoint=False)`` (default
        180 views; sparse view, e.g. ``n_views=8``); with ``arc=[a, b]``:
        ``linspace(a, b, n_views, endpoint=False)`` (limited angle); or an
        explicit ``angles`` list.
    n_det, det_spacing
        Detector bins and their spacing (default: pixel-sized bins,
        ``ceil(sqrt(2) N)`` of them, covering the image's circumscribed circle).
    pixel_size
        Image pixel side in mm; projections are line integrals in mm, so an
        image in attenuation per mm gives dimensionless projections.
    det_offset
        Position (mm, along the detector axis) of the detector centre relative
        to the projection of the rotation axis; use it for an off-centre axis.
    filter
        FBP window for :meth:`classical`: ``ram-lak`` (default), ``shepp-logan``,
        ``cosine``, ``hamming``, ``hann``.

    ``A`` is the Joseph (linear interpolation) system matrix, ``A^T`` its
    exact transpose; autograd's backward of ``forward`` is ``adjoint``.
    """

    name: ClassVar[str] = "ct.parallel"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param("shape", check=as_given(resolve_shape), grid="shape", doc="image size n or [ny, nx], pixels"),
        Param("n_views", None, doc="views over 180 degrees (default 180)"),
        Param("angles", None, doc="explicit view angles, degrees"),
        Param("arc", None, doc="[first, last) angle of the views, degrees (limited angle)"),
        Param("n_det", None, doc="detector bins (default: cover the circumscribed circle)"),
        Param("det_spacing", None, doc="detector bin spacing, mm (default: the pixel size)"),
        Param("pixel_size", 1.0, check=as_given(lambda v: _finite("pixel_size", v, positive=True)),
              grid="pixel_size", doc="image pixel side, mm"),
        Param("det_offset", 0.0, check=as_given(lambda v: _finite("det_offset", v)),
              doc="detector centre offset from the rotation axis's projection, mm"),
        Param("filter", "ram-lak", check=as_given(check_filter), doc="FBP window"),
    )

    def _build(self, p) -> None:
        shp = resolve_shape(p["shape"])
        ps = _finite("pixel_size", p["pixel_size"], positive=True)
        ds = _finite("det_spacing", p["det_spacing"], positive=True, allow_none=True) or ps
        off = _finite("det_offset", p["det_offset"])
        ang = resolve_angles(p["n_views"], p["angles"], p["arc"], full=180.0)
        nd = _n_det(p["n_det"], default_n_det(shp, ps, ds))
        self._setup(ParallelGeometry(shp, ang, nd, ds, ps, off), p["filter"])

    @classmethod
    def example(cls) -> "ParallelBeam2D":
        """32 x 32 pixels of 1 mm, 16 views over 180 degrees."""
        return cls(shape=[32, 32], n_views=16)
