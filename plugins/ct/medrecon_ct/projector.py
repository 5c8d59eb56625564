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

import copy
import dataclasses
from typing import ClassVar

import numpy as np
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

    # ------------------------------------------------------------ cross-validation
    def holdout_folds(self, n_folds: int, seed: int = 0):
        """Cross-validation folds over whole views (:meth:`medrecon.operators.base.Operator.holdout_folds`).

        The views, in order of angle, are dealt into ``n_folds`` disjoint groups: each run of
        ``n_folds`` consecutive views goes to the folds in an order drawn with ``seed``, so every
        fold holds out views spread over the whole arc (a fold that lost a contiguous block of
        angles would be a limited-angle problem, much harder than the real one).  Fold ``f``'s
        ``fit_op`` measures the other views (zero where held out); its ``classical`` is the FBP
        of those views alone.  None when there are fewer than ``2 n_folds`` views.

        >>> import medrecon
        >>> folds = medrecon.get_operator("ct.parallel", shape=32, n_views=8).holdout_folds(4)
        >>> [int(held.sum()) // held.shape[-1] for _, held in folds]   # views held out per fold
        [2, 2, 2, 2]
        """
        n_folds, n = int(n_folds), self.geometry.n_views
        if n_folds < 2 or n < 2 * n_folds:
            return None
        rng = np.random.default_rng(int(seed))
        order = np.argsort(np.mod(self.geometry.angles, 360.0), kind="stable")
        label = np.concatenate([rng.permutation(n_folds) for _ in range(-(-n // n_folds))])[:n]
        out = []
        for f in range(n_folds):
            held_views = np.sort(order[label == f])
            kept = np.setdiff1d(np.arange(n), held_views)
            held = torch.zeros(self.range_shape, dtype=torch.bool, device=self.device)
            held[torch.as_tensor(held_views, device=self.device)] = True
            out.append((_KeptViews(self, kept), held))
        return out


class _KeptViews(Operator):
    """``parent`` measuring only the views ``kept`` (the others read zero): a cross-validation fold."""

    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = False
    range_is_complex: ClassVar[bool] = False

    def __init__(self, parent: CTProjector2D, kept: np.ndarray):
        super().__init__(kept_views=[int(v) for v in kept])
        self.name = f"{parent.name}[views]"
        sub = copy.copy(parent)
        sub.__dict__["_buffers"] = dict(parent._buffers)
        sub.geometry = dataclasses.replace(parent.geometry, angles=np.asarray(parent.geometry.angles)[kept])
        sub.range_shape = (int(len(kept)), parent.geometry.n_det)
        self._sub = sub
        self._parent_classical = parent.classical
        self.domain_shape = parent.domain_shape
        self.range_shape = parent.range_shape
        self.register_buffer("_kept", torch.as_tensor(kept, dtype=torch.long, device=parent.device),
                             persistent=False)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self._sub._forward(x)
        out = v.new_zeros((*v.shape[:-2], *self.range_shape))
        out[..., self._kept, :] = v
        return out

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._sub._adjoint(y[..., self._kept, :])

    def classical(self, y: torch.Tensor) -> torch.Tensor:
        """FBP of the kept views, each weighted ``pi / n_kept`` (the views are spread over the arc;
        the parent's quadrature would read the held-out gaps as a limited angle)."""
        keep = torch.zeros(self.range_shape[0], dtype=y.dtype, device=y.device)
        keep[self._kept] = 1
        return self._parent_classical(y * keep[:, None]) * (self.range_shape[0] / len(self._kept))
