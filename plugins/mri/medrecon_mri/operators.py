"""``mri.cartesian`` (single coil) and ``mri.sense`` (multi-coil SENSE): Cartesian k-space sampling.

Single coil::

    A x = M F (P x)                 (B, ny, nx) -> (B, ny, nx)
    A^H y = conj(P) F^H (M y)

Multi-coil (SENSE)::

    A x = [M F (S_c x)]_c           (B, ny, nx) -> (B, C, ny, nx)
    A^H y = sum_c conj(S_c) F^H (M y_c)

``F`` is the centred orthonormal 2D FFT (:mod:`medrecon_mri.fft`), ``M`` the 0/1 sampling
mask on the full ``(ny, nx)`` grid (unsampled entries of ``y`` are zero; phase-encode lines
are the columns, :mod:`medrecon_mri.masks`), ``S_c`` the coil maps and ``P`` an optional
phase map ``exp(i phase)`` (single coil).

Per-slice maps: coil maps shaped ``(S, C, ny, nx)`` (phase ``(S, ny, nx)``) give slice ``s``
of a multi-slice measurement its own maps ``S_{s,c}`` (``P_s``): the operator is then
*slice-varying* (:mod:`medrecon.operators.base`), ``A = diag(A_0, ..., A_{S-1})`` with
``A_s x = [M F (S_{s,c} x)]_c``; it takes batches of exactly its ``n_slices`` slices, and
``for_slices(indices)`` selects the maps of those slices, in order (what the engine does
for every batch).  Maps shaped ``(C, ny, nx)`` (phase ``(ny, nx)``) serve every slice, as
before.

Real or complex images (``real_image``): with ``real_image=False`` (default) the image is
complex (``domain_is_complex`` True), the adjoint is the one above.  With ``real_image=True``
the image is real -- a magnitude image measured as if its phase were 0 (simulation from
magnitude DICOM), or a raw scan whose phase is carried by the coil maps (RSS-normalised
ACS maps, :mod:`medrecon_mri.coils`) or by ``phase`` -- and the adjoint is ``Re(A^H y)``
(the adjoint for the real inner product ``Re <., .>`` on the range).  docs/mri.md explains
the choice.

``classical(y)``: the zero-filled reconstruction.  Real image: the zero-filled magnitude
``|conj(P) F^H M y|`` (single coil) or root-sum-of-squares ``sqrt(sum_c |F^H M y_c|^2)``.
Complex image: the complex zero-filled image ``conj(P) F^H M y``, or the coil combination
``sum_c conj(S_c) F^H M y_c / sum_c |S_c|^2`` whose magnitude is the RSS when the maps are
RSS-normalised.  SENSE by conjugate gradients is :meth:`SenseMRI.sense` and the ``sense``
sampler (:mod:`medrecon_mri.recon`).

Example::

    >>> import torch, medrecon
    >>> A = medrecon.get_operator("mri.sense", shape=[32, 32],
    ...     coil_maps={"synthetic": "birdcage", "n_coils": 4},
    ...     mask={"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0})
    >>> y = A(torch.ones(2, 32, 32, dtype=torch.complex64))
    >>> tuple(y.shape)
    (2, 4, 32, 32)
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator
from medrecon.operators.params import Param
from medrecon_mri.arrays import as_param, load_array
from medrecon_mri.coils import synthetic_coil_maps
from medrecon_mri.fft import centred_sign, checkerboard, fft2c, ifft2c, shift_free
from medrecon_mri.masks import mask_info, resolve_mask

__all__ = ["CartesianMRI", "SenseMRI", "resolve_shape"]


def resolve_shape(shape) -> list[int]:
    """``n`` or ``[ny, nx]`` -> ``[ny, nx]`` (positive integers)."""
    if isinstance(shape, (int, np.integer)):
        s = [shape, shape]
    elif isinstance(shape, (list, tuple, np.ndarray)):
        s = list(shape)
    else:  # a string or None is not a shape (list("64") would be ["6", "4"])
        s = []
    if len(s) != 2 or any(isinstance(v, (bool, str)) or not isinstance(v, (int, float, np.integer, np.floating))
                          or not float(v).is_integer() or int(v) < 1 for v in s):
        raise InputError(f"shape must be a positive integer or [ny, nx], got {shape!r}")
    return [int(v) for v in s]


def _mask_param(mask: Any) -> Any:
    if hasattr(mask, "detach") or isinstance(mask, np.ndarray):
        m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
        if m.dtype != bool and not np.all((m == 0) | (m == 1)):
            raise InputError("an explicit mask must hold only 0 and 1")  # not truncated to 0/1 silently
        return m.astype(int).tolist()
    return mask


def _flag(name: str):
    """A ``Param.check`` accepting only true or false."""

    def check(v):
        if not isinstance(v, (bool, np.bool_)):
            raise InputError(f"{name} must be true or false, got {v!r}")
        return bool(v)

    return check


_EXAMPLE_MASK = {"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}


class _MRIBase(Operator):
    per_slice: ClassVar[bool] = True
    domain_is_complex: ClassVar[bool] = True
    range_is_complex: ClassVar[bool] = True

    def _setup(self, shape, mask, real_image) -> None:
        ny, nx = resolve_shape(shape)
        if not isinstance(real_image, (bool, np.bool_)):
            raise InputError(f"real_image must be true or false, got {real_image!r}")
        m = resolve_mask((ny, nx), mask)
        if not m.any():
            raise InputError("the sampling mask samples nothing")
        self.register_buffer("mask", torch.from_numpy(m.astype(np.float32)))
        # shift-free centred FFTs on even grids (medrecon_mri.fft): the image checkerboard C and
        # the signed mask M' = g C M, derived from the mask (not part of the spec)
        self._shift_free = shift_free(ny, nx)
        if self._shift_free:
            cb = checkerboard(ny, nx)
            self.register_buffer("checker", cb, persistent=False)
            self.register_buffer("signed_mask", self.mask * cb * centred_sign(ny, nx), persistent=False)
        self.domain_is_complex = not bool(real_image)  # instance attribute: real_image=True is a real domain
        self.domain_shape = (ny, nx)
        self.mask_info = mask_info(m)

    @property
    def acceleration(self) -> float:
        """Achieved acceleration ``ny nx / n_sampled`` of the mask."""
        return float(self.mask_info["acceleration"])

    @staticmethod
    def _cplx(x: torch.Tensor) -> torch.Tensor:
        return x if x.is_complex() else x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)

    def _masked(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask.to(y.real.dtype)

    def _image_to_kspace(self, v: torch.Tensor, checkered: bool = False) -> torch.Tensor:
        """``M fft2c(v)`` over the last two axes; ``checkered``: ``v`` is already ``C v``
        (even grids only, see :mod:`medrecon_mri.fft`)."""
        if not self._shift_free:
            return self._masked(fft2c(v))
        if not checkered:
            v = v * self.checker.to(v.real.dtype)
        # in place on the FFT's own output: one C-image temporary fewer (the element-wise passes,
        # not the FFTs, dominate on a multi-threaded CPU; benchmarks/operators.py)
        return torch.fft.fft2(v, norm="ortho").mul_(self.signed_mask.to(v.real.dtype))

    def _kspace_to_image(self, y: torch.Tensor, checkered: bool = False) -> torch.Tensor:
        """``ifft2c(M y)``; ``checkered``: return ``C ifft2c(M y)`` (the caller applies ``C``)."""
        y = self._cplx(y)
        if not self._shift_free:
            return ifft2c(self._masked(y))
        v = torch.fft.ifft2(y * self.signed_mask.to(y.real.dtype), norm="ortho")
        return v if checkered else v.mul_(self.checker.to(v.real.dtype))

    def _image_to_image(self, v: torch.Tensor, checkered: bool = False) -> torch.Tensor:
        """``ifft2c(M fft2c(v))``, the numbers of ``_kspace_to_image(_image_to_kspace(v))`` (masking once
        by ``M = M'^2`` equals masking twice by the +-1/0 ``M'``) with one k-space pass and copy fewer."""
        if not self._shift_free:
            return ifft2c(self._masked(fft2c(v)))
        if not checkered:
            v = v * self.checker.to(v.real.dtype)
        k = torch.fft.fft2(v, norm="ortho").mul_(self.mask.to(v.real.dtype))
        out = torch.fft.ifft2(k, norm="ortho")
        return out if checkered else out.mul_(self.checker.to(out.real.dtype))

    def _checker(self, x: torch.Tensor) -> torch.Tensor:
        """``C x`` on an even grid (the image checkerboard), ``x`` otherwise."""
        return x * self.checker.to(x.real.dtype) if self._shift_free else x

    def complex_twin(self):
        """With ``real_image=True`` and ``phase_estimated=True`` (the image phase is an estimate the
        maps carry, as for imported raw multi-coil data): this operator on complex images (same
        maps, mask, slices); None otherwise -- a simulated real image has its phase exactly, and
        the real constraint is information (:meth:`medrecon.operators.base.Operator.complex_twin`)."""
        if self.domain_is_complex or not self._params.get("phase_estimated"):
            return None
        new = copy.copy(self)
        new.__dict__["_params"] = dict(self._params, real_image=False)
        new.domain_is_complex = True
        return new

    def with_image_phase(self, phase):
        """With a :meth:`complex_twin`: the real-image operator whose maps carry ``phase``
        ``(B, ny, nx)`` (radians) on top of their own, slice-varying over the ``B`` slices
        (:meth:`medrecon.operators.base.Operator.with_image_phase`)."""
        if self.complex_twin() is None:
            return None
        fac = torch.exp(1j * torch.as_tensor(phase).to(self.coil_maps.device, torch.float64))
        maps = self._maps() * fac[:, None].to(self.coil_maps.dtype)
        if maps.shape[0] != fac.shape[0]:
            raise InputError(f"the phase has {fac.shape[0]} slices for an operator of {maps.shape[0]}")
        new = copy.copy(self)
        new.__dict__["_buffers"] = dict(self._buffers, coil_maps=maps.contiguous())
        new.__dict__["_params"] = dict(self._params, coil_maps={"array": "(maps x data phase)"})
        for key in ("_slice_root", "_slice_indices"):
            new.__dict__.pop(key, None)
        new._per_slice(int(maps.shape[0]))
        return new

    def holdout_folds(self, n_folds: int, seed: int = 0):
        """Cross-validation folds (:meth:`medrecon.operators.base.Operator.holdout_folds`).

        The sampled phase-encode lines (a 1D mask; single points for a 2D mask) outside the
        calibration region are dealt into ``n_folds`` disjoint groups, stratified by distance
        from the k-space centre (each run of ``n_folds`` lines in order of ``|k|`` goes to the
        folds in an order drawn with ``seed``); fold ``f`` holds out group ``f`` (every coil, every readout sample of those
        lines).  The calibration region is never held out: coil maps and the low
        frequencies stay measured, as they are when the method runs on all the data.
        None when fewer than ``2 n_folds`` lines (points) lie outside the calibration region.
        """
        from medrecon_mri.masks import calibration_region

        m = self.mask.detach().cpu().numpy() > 0
        rs, cs = calibration_region(m)
        calib = np.zeros_like(m)
        calib[rs, cs] = True
        column = bool(np.all(m == m[:1]))
        if column:
            cand = np.flatnonzero(m[0] & ~calib[0])
        else:
            cand = np.flatnonzero((m & ~calib).ravel())
        n_folds = int(n_folds)
        if n_folds < 2 or cand.size < 2 * n_folds:
            return None
        # stratified by distance from the k-space centre: consecutive groups of n_folds candidates (in
        # order of |k|) are dealt to the folds in a random order, so that every fold holds out a like mix
        # of low and high frequencies (a fold that lost several lines next to the calibration region
        # would be a much harder problem than the real one and would drag the choice to large weights)
        rng = np.random.default_rng(int(seed))
        ny, nx = m.shape
        if column:
            dist = np.abs(cand - nx // 2).astype(float)
        else:
            rr, cc = np.divmod(cand, nx)
            dist = np.hypot((rr - ny // 2) / ny, (cc - nx // 2) / nx)
        order = cand[np.lexsort((rng.random(cand.size), dist))]
        label = np.concatenate([rng.permutation(n_folds) for _ in range(-(-order.size // n_folds))])[:order.size]
        groups = [order[label == f] for f in range(n_folds)]
        out = []
        for g in groups:
            held = np.zeros_like(m)
            if column:
                held[:, g] = True
            else:
                held.ravel()[g] = True
            out.append((self._with_mask(m & ~held), torch.from_numpy(held).to(self.mask.device)))
        return out

    def _with_mask(self, m: np.ndarray) -> "_MRIBase":
        """A shallow copy measuring with the 0/1 mask ``m`` (same maps, phase, slices)."""
        new = copy.copy(self)
        new.__dict__["_buffers"] = dict(self._buffers)
        new.__dict__["_params"] = dict(self._params, mask=m.astype(int).tolist())
        dev = self.mask.device
        new._buffers["mask"] = torch.from_numpy(m.astype(np.float32)).to(dev)
        if self._shift_free:
            ny, nx = self.domain_shape
            new._buffers["signed_mask"] = new._buffers["mask"] * checkerboard(ny, nx).to(dev) * centred_sign(ny, nx)
        new.mask_info = mask_info(m)
        return new

    def _per_slice(self, n_slices: int | None) -> None:
        """Slice-varying when the maps have a slice axis (``n_slices`` not None)."""
        self.slice_varying = n_slices is not None
        self.n_slices = None if n_slices is None else int(n_slices)


class CartesianMRI(_MRIBase):
    """Single-coil Cartesian MRI ``A x = M F (P x)``: ``(B, ny, nx) -> (B, ny, nx)`` complex.

    Parameters: ``shape`` (``n`` or ``[ny, nx]``), ``mask`` (None: fully sampled; a list of
    ``nx`` 0/1 column flags; a ``ny x nx`` nested list; or a generator spec such as
    ``{"kind": "random", "acceleration": 4, "center_fraction": 0.08, "seed": 0}``),
    ``real_image`` (real domain, see the module docstring), ``phase`` (optional phase map in
    radians, ``(ny, nx)`` for every slice or ``(S, ny, nx)`` per slice (slice-varying, module
    docstring), in any array form of :mod:`medrecon_mri.arrays`).
    """

    name: ClassVar[str] = "mri.cartesian"
    slice_buffers: ClassVar[tuple[str, ...]] = ("phase_factor",)
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param("shape", check=resolve_shape, grid="shape", doc="image n or [ny, nx], pixels"),
        Param("mask", None, check=_mask_param, doc="sampling mask: None (full), 0/1 columns or grid, or a generator spec"),
        Param("real_image", False, doc="real image domain (module docstring)"),
        Param("phase", None, check=as_param, doc="phase map, radians: (ny, nx) or (S, ny, nx), an array form"),
    )

    @classmethod
    def example(cls) -> "CartesianMRI":
        """32 x 32, random 4x column undersampling with an 8 % calibration region."""
        return cls(shape=[32, 32], mask=_EXAMPLE_MASK)

    def _build(self, p) -> None:
        self._setup(p["shape"], p["mask"], p["real_image"])
        self.range_shape = tuple(self.domain_shape)
        self._per_slice(None)
        if p["phase"] is not None:
            ph = load_array(p["phase"], "phase", self.spec_arrays)
            ny, nx = self.domain_shape
            if ph.ndim not in (2, 3) or ph.shape[-2:] != (ny, nx) or 0 in ph.shape:
                raise InputError(f"phase must be shaped ({ny}, {nx}) or (slices, {ny}, {nx}), got {ph.shape}")
            if not np.all(np.isfinite(ph)):
                raise InputError("phase holds NaN or infinite values")
            fac = np.exp(1j * np.angle(ph)) if np.iscomplexobj(ph) else np.exp(1j * ph)
            self.register_buffer("phase_factor", torch.from_numpy(fac.astype(np.complex64)))
            self._per_slice(ph.shape[0] if ph.ndim == 3 else None)
        else:
            self.phase_factor = None

    def _forward(self, x):
        x = self._cplx(x)
        if self.phase_factor is not None:
            x = x * self.phase_factor
        return self._image_to_kspace(x)

    def _adjoint(self, y):
        x = self._kspace_to_image(y)
        if self.phase_factor is not None:
            x = x * self.phase_factor.conj()
        return x

    def _normal(self, x):
        """``A^H A x = conj(P) F^H M F (P x)`` (:meth:`_image_to_image`), the numbers of
        ``adjoint(forward(x))``."""
        x = self._cplx(x)
        if self.phase_factor is not None:
            x = x * self.phase_factor
        out = self._image_to_image(x)
        if self.phase_factor is not None:
            out = out * self.phase_factor.conj()
        return out if self.domain_is_complex else out.real

    def classical(self, y):
        """Zero-filled: complex ``conj(P) F^H M y``, or its magnitude for a real image."""
        self._check(y, self.range_shape, "measurement")
        x = self._adjoint(y)
        return x.abs() if not self.domain_is_complex else x


class SenseMRI(_MRIBase):
    """Multi-coil SENSE ``A x = [M F (S_c x)]_c``: ``(B, ny, nx) -> (B, C, ny, nx)`` complex.

    Parameters: ``shape``, ``mask``, ``real_image`` as :class:`CartesianMRI`; ``coil_maps``
    ``(C, ny, nx)`` complex for every slice, or ``(S, C, ny, nx)`` per slice (slice-varying,
    module docstring), in any array form of :mod:`medrecon_mri.arrays` -- a nested list,
    ``{"real", "imag"}``, a numpy array / tensor (stored as lists: small cases only),
    ``{"file": ...}``, ``{"array": name}`` (inside the measurement file) or
    ``{"synthetic": "birdcage", "n_coils": 8, "width": 1.0}``.  ``phase_estimated`` (with
    ``real_image``): the image phase the maps carry is an estimate (raw data), so methods that
    can afford a free phase solve for the complex image (:meth:`complex_twin`).
    """

    name: ClassVar[str] = "mri.sense"
    slice_buffers: ClassVar[tuple[str, ...]] = ("coil_maps",)
    PARAMS: ClassVar[tuple[Param, ...]] = (
        CartesianMRI.PARAMS[0],
        Param("coil_maps", check=as_param, doc="coil maps (C, ny, nx) or (S, C, ny, nx), an array form"),
        *CartesianMRI.PARAMS[1:3],
        Param("phase_estimated", False, check=_flag("phase_estimated"), omit_default=True,
              doc="with real_image: the maps' image phase is an estimate (raw data)"),
    )

    @classmethod
    def example(cls) -> "SenseMRI":
        """32 x 32, 4 synthetic birdcage coils, random 4x column undersampling."""
        return cls(shape=[32, 32], coil_maps={"synthetic": "birdcage", "n_coils": 4}, mask=_EXAMPLE_MASK)

    def _build(self, p) -> None:
        self._setup(p["shape"], p["mask"], p["real_image"])
        ny, nx = self.domain_shape
        coil_maps = p["coil_maps"]
        if isinstance(coil_maps, dict) and "synthetic" in coil_maps:
            opts = {k: v for k, v in coil_maps.items() if k != "synthetic"}
            if coil_maps["synthetic"] != "birdcage":
                raise InputError(f"unknown synthetic coil maps {coil_maps['synthetic']!r}; use 'birdcage'")
            try:
                maps = synthetic_coil_maps((ny, nx), **opts)
            except TypeError as exc:
                raise InputError(f"bad synthetic coil map options: {exc}") from None
        else:
            maps = load_array(coil_maps, "coil_maps", self.spec_arrays)
        if maps.ndim == 2:
            maps = maps[None]
        if maps.ndim not in (3, 4) or tuple(maps.shape[-2:]) != (ny, nx) or 0 in maps.shape:
            raise InputError(f"coil_maps must be shaped (coils, {ny}, {nx}) or (slices, coils, {ny}, {nx}), "
                             f"got {tuple(maps.shape)}")
        if not np.all(np.isfinite(maps)):
            raise InputError("coil_maps hold NaN or infinite values")
        self.register_buffer("coil_maps", torch.from_numpy(np.ascontiguousarray(maps, dtype=np.complex64)))
        self._per_slice(maps.shape[0] if maps.ndim == 4 else None)
        self.n_coils = int(maps.shape[-3])
        self.range_shape = (self.n_coils, ny, nx)

    def _maps(self) -> torch.Tensor:
        """The coil maps with a batch axis: ``(1, C, ny, nx)``, or ``(B, C, ny, nx)`` per slice."""
        return self.coil_maps if self.slice_varying else self.coil_maps[None]

    def _forward(self, x):
        # M F (S_c x) = M' fft2(S_c (C x)): the checkerboard on the one image, not on C coil images
        x = self._checker(self._cplx(x))
        return self._image_to_kspace(x[:, None] * self._maps(), checkered=True)

    def _adjoint(self, y):
        # sum_c conj(S_c) F^H M y_c = C sum_c conj(S_c) ifft2(M' y_c)
        # the coil images are the ifft's fresh output: weighted in place (promoted first, so that
        # complex64 data meets complex128 maps in complex128, as out of place), then summed
        maps = self._maps()
        v = self._kspace_to_image(y, checkered=True)
        v = v.to(torch.promote_types(v.dtype, maps.dtype))
        return self._checker(v.mul_(maps.conj()).sum(dim=1))

    def _normal(self, x):
        """``A^H A x = sum_c conj(S_c) F^H M F (S_c x)`` (:meth:`_image_to_image`), the numbers of
        ``adjoint(forward(x))`` with one pass over the coil images fewer."""
        maps = self._maps()
        v = self._image_to_image(self._checker(self._cplx(x))[:, None] * maps, checkered=True)
        v = v.to(torch.promote_types(v.dtype, maps.dtype))
        out = self._checker(v.mul_(maps.conj()).sum(dim=1))
        return out if self.domain_is_complex else out.real

    def zero_filled_coils(self, y):
        """Zero-filled coil images ``F^H M y_c``, ``(B, C, ny, nx)``."""
        return self._kspace_to_image(y)

    def classical(self, y):
        """Zero-filled: RSS ``sqrt(sum_c |F^H M y_c|^2)`` for a real image; the complex coil
        combination ``sum_c conj(S_c) F^H M y_c / sum_c |S_c|^2`` for a complex one."""
        self._check(y, self.range_shape, "measurement")
        coils = self.zero_filled_coils(y)
        if not self.domain_is_complex:
            return (coils.abs() ** 2).sum(dim=1).sqrt()
        maps = self._maps()
        w = (maps.abs() ** 2).sum(dim=1)
        comb = (maps.conj() * coils).sum(dim=1)
        inv = torch.where(w > 1e-6 * w.amax(dim=(-2, -1), keepdim=True), 1.0 / w.clamp(min=1e-30),
                          torch.zeros_like(w))
        return comb * inv.to(comb.real.dtype)

    def sense(self, y, iters: int = 30, lam: float = 0.0):
        """SENSE by conjugate gradients (:func:`medrecon_mri.recon.sense_cg`)."""
        from medrecon_mri.recon import sense_cg

        return sense_cg(self, y, iters=iters, lam=lam)
