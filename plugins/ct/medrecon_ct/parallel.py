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
from medrecon_ct.geometry import ParallelGeometry, _finite, default_n_det, resolve_angles, resolve_shape
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

    def __init__(self, shape, n_views=None, angles=None, arc=None, n_det=None, det_spacing=None,
                 pixel_size=1.0, det_offset=0.0, filter="ram-lak"):
        super().__init__(shape=shape, n_views=n_views, angles=angles, arc=arc, n_det=n_det,
                         det_spacing=det_spacing, pixel_size=pixel_size, det_offset=det_offset,
                         filter=filter)
        shp = resolve_shape(shape)
        ps = _finite("pixel_size", pixel_size, positive=True)
        ds = _finite("det_spacing", det_spacing, positive=True, allow_none=True) or ps
        off = _finite("det_offset", det_offset)
        ang = resolve_angles(n_views, angles, arc, full=180.0)
        nd = _n_det(n_det, default_n_det(shp, ps, ds))
        self._setup(ParallelGeometry(shp, ang, nd, ds, ps, off), filter)
