"""``ct.fan``: 2D fan-beam CT projector with a flat detector (sparse Joseph matrix, exact adjoint, FBP).

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("ct.fan", shape=64, n_views=16, source_to_center=200.0,
    ...                           source_to_detector=400.0)
    >>> tuple(A(torch.ones(1, 64, 64)).shape)
    (1, 16, 93)
"""

from __future__ import annotations

from typing import ClassVar

from medrecon.errors import InputError
from medrecon.operators.params import Param
from medrecon_ct.geometry import FanGeometry, _finite, default_n_det, resolve_angles, resolve_shape
from medrecon_ct.parallel import ParallelBeam2D, _n_det
from medrecon_ct.projector import CTProjector2D

__all__ = ["FanBeam2D"]


class FanBeam2D(CTProjector2D):
    """2D fan-beam projector, flat detector, ``(B, ny, nx) -> (B, n_views, n_det)``.

    Parameters as :class:`~medrecon_ct.parallel.ParallelBeam2D`, except:

    n_views
        Default 360 views over a full turn ``linspace(0, 360, n, endpoint=False)``.
    source_to_center
        Source to rotation axis distance ``R`` in mm (default ``2 * max(ny, nx) * pixel_size``);
        must exceed the radius of the image's circumscribed circle.
    source_to_detector
        Source to detector distance ``D`` in mm (default ``2 R``); the detector
        must lie outside the image's circumscribed circle (``D > R + radius``).
    det_spacing
        Default: ``pixel_size * D / R`` (bins of one pixel at the isocentre);
        ``n_det`` defaults to enough bins to cover the image's circumscribed circle.

    :meth:`classical` is the fan-beam FBP formula for a flat detector (cosine
    pre-weighting, ramp filter on the virtual detector, ``1/U^2`` weighted
    backprojection); it expects a full 360-degree scan.
    """

    name: ClassVar[str] = "ct.fan"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        ParallelBeam2D.PARAMS[0],
        Param("n_views", None, doc="views over a full turn (default 360)"),
        *ParallelBeam2D.PARAMS[2:8],
        Param("source_to_center", None, doc="R, source to rotation axis, mm (default 2 max(ny, nx) pixel_size)"),
        Param("source_to_detector", None, doc="D, source to detector, mm (default 2 R)"),
        ParallelBeam2D.PARAMS[8],
    )

    def _build(self, p) -> None:
        shp = resolve_shape(p["shape"])
        ps = _finite("pixel_size", p["pixel_size"], positive=True)
        R = _finite("source_to_center", p["source_to_center"], positive=True, allow_none=True)
        R = R if R is not None else 2.0 * max(shp) * ps
        D = _finite("source_to_detector", p["source_to_detector"], positive=True, allow_none=True)
        D = D if D is not None else 2.0 * R
        radius = 0.5 * ps * (shp[0] ** 2 + shp[1] ** 2) ** 0.5
        if R <= radius:
            raise InputError(
                f"source_to_center ({R:g} mm) must exceed the radius of the image's circumscribed "
                f"circle ({radius:g} mm)"
            )
        if D <= R + radius:
            raise InputError(
                f"source_to_detector ({D:g} mm) must exceed source_to_center + image radius "
                f"({R + radius:g} mm) so the detector lies outside the image"
            )
        ds = _finite("det_spacing", p["det_spacing"], positive=True, allow_none=True) or ps * D / R
        off = _finite("det_offset", p["det_offset"])
        ang = resolve_angles(p["n_views"], p["angles"], p["arc"], full=360.0)
        nd = _n_det(p["n_det"], default_n_det(shp, ps, ds, fan_radius=(R, D)))
        self._setup(FanGeometry(shp, ang, nd, ds, ps, off, source_to_center=R, source_to_detector=D), p["filter"])

    @classmethod
    def example(cls) -> "FanBeam2D":
        """32 x 32 pixels of 1 mm, 24 views over a full turn, default source and detector distances."""
        return cls(shape=[32, 32], n_views=24)
