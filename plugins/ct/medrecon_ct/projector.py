"""The shared base of the 2D CT operators: a sparse Joseph system matrix per geometry.

Subclasses (:class:`~medrecon_ct.parallel.ParallelBeam2D`,
:class:`~medrecon_ct.fan.FanBeam2D`) only validate their parameters and build a
:mod:`~medrecon_ct.geometry` object; projection, exact adjoint, devices,
precision and FBP live here.

Device and precision: the matrices are not module buffers (they can be hundreds
of MB and are shared by every operator of one geometry through the cache in
:mod:`~medrecon_ct.system_matrix`).  A zero-sized buffer records the operator's
device, so ``op.to("cuda")`` and ``op.with_precision(True)`` behave as for any
module; the matrix for that device and the input's dtype (float32 or float64) is
fetched from the cache on first use.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon_ct.fbp import fbp
from medrecon_ct.geometry import _Geometry, check_filter
from medrecon_ct.system_matrix import SystemMatrix, get_system_matrix

__all__ = ["CTProjector2D"]


class CTProjector2D(Operator):
    """Base class: ``y = A x`` with ``A`` a sparse Joseph system matrix."""

    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False

    geometry: _Geometry

    def _setup(self, geom: _Geometry, filter: str) -> None:
        self.geometry = geom
        self.filter = check_filter(filter)
        self.domain_shape = tuple(geom.shape)
        self.range_shape = (geom.n_views, geom.n_det)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------ geometry
    @property
    def angles(self) -> torch.Tensor:
        """View angles in degrees (float64, CPU)."""
        return torch.as_tensor(self.geometry.angles)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def system_matrix(self, dtype: torch.dtype | None = None) -> SystemMatrix:
        """The cached :class:`SystemMatrix` on this operator's device (built on first use)."""
        return get_system_matrix(self.geometry, self.device, dtype or self._anchor.dtype)

    def build(self) -> "CTProjector2D":
        """Build (or fetch from the cache) the system matrix now; returns ``self``."""
        self.system_matrix()
        return self

    # ------------------------------------------------------------ contract
    def _prep(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if t.is_complex():
            raise InputError(f"{self.name} expects a real {what}, got dtype {t.dtype}")
        if t.device != self.device:
            raise InputError(
                f"{self.name} is on {self.device} but the {what} is on {t.device}; "
                f"move the operator with .to({str(t.device)!r})"
            )
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(self._anchor.dtype)
        return t

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prep(x, "image")
        return self.system_matrix(x.dtype).forward(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._prep(y, "measurement")
        return self.system_matrix(y.dtype).adjoint(y)

    def classical(self, y: torch.Tensor, filter: str | None = None) -> torch.Tensor:
        """Filtered backprojection of ``y`` ``(B, n_views, n_det)`` -> ``(B, ny, nx)``.

        ``filter`` overrides the operator's ``filter`` parameter (one of
        ``ram-lak, shepp-logan, cosine, hamming, hann``).  See :mod:`medrecon_ct.fbp`.
        """
        self._check(y, self.range_shape, "measurement")
        y = self._prep(y, "measurement")
        if not bool(torch.isfinite(y).all()):
            raise InputError(f"{self.name} measurement contains NaN or infinite values")
        return fbp(y, self.geometry, check_filter(filter) if filter is not None else self.filter)
