"""``ct.dxchange``: import parallel-beam projections stored in the Data Exchange HDF5 layout.

Data Exchange (APS, used by tomopy / dxchange) keeps raw counts in::

    exchange/data        (n_angles, n_rows, n_det)   projections
    exchange/data_white  (n_flat, n_rows, n_det)     flat (open beam) fields
    exchange/data_dark   (n_dark, n_rows, n_det)     dark fields
    exchange/theta       (n_angles,)                 angles (attribute units: degrees or radians)

:meth:`DataExchangeImporter.read` turns them into line integrals::

    y = -log( (data - mean(dark)) / (mean(white) - mean(dark)) )

(the transmission is clipped to ``[1e-6, inf)`` first), picks one detector row or
keeps all, finds the rotation centre (given, or estimated from the 0-degree
projection and the mirrored projection at 180 degrees, see
:func:`estimate_center`), crops the detector symmetrically around it so that
the centre is in the middle (the sub-pixel remainder goes into the operator's
``det_offset``, so no data is interpolated), and returns a matching
:class:`~medrecon_ct.parallel.ParallelBeam2D`.

Example::

    >>> from medrecon_ct.dxchange import DataExchangeImporter
    >>> y, A, meta = DataExchangeImporter().read("tooth.h5", row=0)   # doctest: +SKIP
    >>> x = A.classical(y)                                            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medrecon.errors import FileFormatError, InputError
from medrecon_ct.geometry import _finite, check_filter
from medrecon_ct.parallel import ParallelBeam2D

__all__ = ["DataExchangeImporter", "estimate_center", "normalize"]


def normalize(data: np.ndarray, white: np.ndarray | None, dark: np.ndarray | None,
              eps: float = 1e-6) -> tuple[np.ndarray, int]:
    """Flat/dark normalisation and ``-log``; returns ``(line integrals float32, n clipped)``."""
    data = data.astype(np.float64)
    d = dark.astype(np.float64).mean(0) if dark is not None and dark.size else 0.0
    if white is not None and white.size:
        w = white.astype(np.float64).mean(0)
    else:
        w = np.percentile(data, 99.9, axis=(0,), keepdims=False)  # open beam estimated from the data
    denom = w - d
    denom = np.where(np.abs(denom) < eps, eps, denom)
    t = (data - d) / denom
    bad = int(np.count_nonzero(~(t >= eps)))
    t = np.clip(np.nan_to_num(t, nan=eps, posinf=1.0, neginf=eps), eps, None)
    return (-np.log(t)).astype(np.float32), bad


def _xcorr_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Sub-pixel shift ``s`` maximising ``sum_k a(k + s) b(k)`` (circular, zero padded)."""
    n = a.size
    m = 1 << int(np.ceil(np.log2(2 * n)))
    a = a - a.mean()
    b = b - b.mean()
    cc = np.fft.irfft(np.fft.rfft(a, m) * np.conj(np.fft.rfft(b, m)), m)
    k = int(np.argmax(cc))
    c0, cm, cp = cc[k], cc[k - 1], cc[(k + 1) % m]
    den = cm - 2 * c0 + cp
    frac = 0.5 * (cm - cp) / den if den != 0 else 0.0
    s = k + frac
    return s - m if s > m / 2 else s


def estimate_center(sino: np.ndarray, theta_deg: np.ndarray) -> float:
    """Rotation centre (detector pixel index, 0-based, sub-pixel) of a parallel-beam sinogram.

    ``sino`` is ``(n_angles, n_det)`` or ``(n_rows, n_angles, n_det)`` (rows are
    averaged).  In parallel beam ``p(theta + 180, k) = p(theta, 2 c - k)``: the
    view nearest 0 degrees is matched with the mirrored view at 180 degrees
    (extrapolated linearly from the last two views when the scan stops short of
    180, as in a ``[0, 180)`` scan) by cross-correlation with parabolic
    sub-pixel refinement; the shift ``delta`` between them gives
    ``c = (n_det - 1 + delta) / 2``.
    """
    s = np.asarray(sino, np.float64)
    if s.ndim == 3:
        s = s.mean(0)
    th = np.asarray(theta_deg, np.float64)
    n = s.shape[-1]
    i0 = int(np.argmin(np.abs(np.mod(th - th.min() + 180.0, 360.0) - 180.0)))  # first view
    target = th[i0] + 180.0
    d = th - target
    if np.any(np.abs(d) < 1e-6):
        p180 = s[int(np.argmin(np.abs(d)))]
    else:
        order = np.argsort(th)
        ths, ss = th[order], s[order]
        j = int(np.searchsorted(ths, target))
        j = min(max(j, 1), ths.size - 1)
        a, b = j - 1, j
        if ths[b] == ths[a]:
            p180 = ss[b]
        else:
            t = (target - ths[a]) / (ths[b] - ths[a])  # > 1: extrapolation past the last view
            t = float(np.clip(t, -1.0, 2.0))
            p180 = (1 - t) * ss[a] + t * ss[b]
        if abs(ths[b] - target) > 20 and abs(ths[a] - target) > 20:
            raise InputError("the scan has no view near 180 degrees from its first view; give center=")
    mirrored = p180[::-1]
    # mirrored(k) = p0(k + delta), delta = 2c - (n - 1)
    delta = _xcorr_shift(s[i0], mirrored)
    return (n - 1 + delta) / 2.0


def _read_rows(dset, sel: slice, p: Path, require_dataset) -> np.ndarray:
    """``dset[:, sel, :]`` of a 3D dataset, its size checked against the memory budget first."""
    if dset.ndim != 3:
        raise FileFormatError(f"{p}: {dset.name} must be 3D (frames, rows, detector), got {dset.shape}")
    rows = len(range(*sel.indices(dset.shape[1])))
    require_dataset(dset, p, shape=(dset.shape[0], rows, dset.shape[2]))
    return dset[:, sel, :]


class DataExchangeImporter:
    """Importer of Data Exchange HDF5 projections (registered as ``ct.dxchange``)."""

    name: ClassVar[str] = "ct.dxchange"

    @classmethod
    def can_read(cls, path) -> bool:
        """True when ``path`` is an HDF5 file with a 3D ``exchange/data`` dataset (cheap)."""
        from medrecon.io.sniff import sniff_file

        def probe(p: Path) -> bool:
            from medrecon.io.hdf5 import open_hdf5

            with open_hdf5(p) as f:  # a file referring to other files is claimed; read() refuses it
                d = f.get("exchange/data")
                return d is not None and hasattr(d, "shape") and len(d.shape) == 3

        return sniff_file(path, probe)

    def read(self, path, *, row: int | None = None, center: float | None = None,
             pixel_size: float = 1.0, crop: bool = True, shape=None,
             filter: str = "ram-lak") -> tuple[torch.Tensor, ParallelBeam2D, dict[str, Any]]:
        """Read projections; returns ``(y, operator, meta)``.

        ``y``: float32 ``(n_rows or 1, n_angles, n_det)`` line integrals
        (dimensionless, so the reconstruction is attenuation per mm when
        ``pixel_size`` is the detector pixel in mm).

        Options: ``row`` (detector row; ``None`` keeps all rows as the batch),
        ``center`` (rotation centre as a detector pixel index, 0-based; ``None``
        estimates it), ``pixel_size`` (mm per detector pixel, also used for the
        image pixels), ``crop`` (crop the detector symmetrically around the
        centre; otherwise keep every bin and put the whole shift in
        ``det_offset``), ``shape`` (image size, default the cropped detector
        length), ``filter`` (FBP window of the returned operator).
        """
        from medrecon.io.hdf5 import open_hdf5, read_dataset, require_dataset

        p = Path(path)
        if not p.is_file():
            raise FileFormatError(f"no such file: {p}")
        ps = _finite("pixel_size", pixel_size, positive=True)
        check_filter(filter)
        with open_hdf5(p) as f:  # no external links or storage; sizes checked against the memory budget
            if "exchange/data" not in f:
                raise FileFormatError(f"{p} has no exchange/data dataset (not Data Exchange)")
            dset = f["exchange/data"]
            if dset.ndim != 3:
                raise FileFormatError(f"{p}: exchange/data must be 3D (angles, rows, detector), got {dset.shape}")
            n_ang, n_rows, n_det = dset.shape
            if row is not None:
                if isinstance(row, bool) or not float(row).is_integer() or not -n_rows <= int(row) < n_rows:
                    raise InputError(f"row must be an integer detector row in [0, {n_rows}), got {row!r}")
                r = int(row) % n_rows
                sel = slice(r, r + 1)
            else:
                sel = slice(None)
            data = _read_rows(dset, sel, p, require_dataset)
            white = _read_rows(f["exchange/data_white"], sel, p, require_dataset) if "exchange/data_white" in f else None
            dark = _read_rows(f["exchange/data_dark"], sel, p, require_dataset) if "exchange/data_dark" in f else None
            if "exchange/theta" in f:
                theta = np.asarray(read_dataset(f, "exchange/theta", p), np.float64).reshape(-1)
                units = f["exchange/theta"].attrs.get("units", b"")
                units = units.decode() if isinstance(units, bytes) else str(units)
                if units.lower().startswith("rad") or (not units and np.ptp(theta) <= 2 * np.pi + 1e-6):
                    theta = np.rad2deg(theta)
                    units = units or "radians (assumed)"
            else:
                theta = np.linspace(0.0, 180.0, n_ang, endpoint=False)
                units = "missing: assumed [0, 180) degrees"
        if theta.size != n_ang:
            raise FileFormatError(f"{p}: exchange/theta has {theta.size} angles but exchange/data has {n_ang}")
        sino, n_clipped = normalize(data, white, dark)
        sino = np.ascontiguousarray(np.transpose(sino, (1, 0, 2)))  # (rows, angles, det)
        if center is None:
            c = estimate_center(sino, theta)
            center_source = "estimated (0/180 degree mirror match)"
        else:
            c = _finite("center", center)
            if not 0 <= c <= n_det - 1:
                raise InputError(f"center must be a detector pixel index in [0, {n_det - 1}], got {center!r}")
            center_source = "given"
        if crop:
            ci = int(round(c))
            half = min(ci, n_det - 1 - ci)
            if half < 1:
                raise InputError(f"the rotation centre {c:.2f} is at the edge of the detector")
            sino = sino[:, :, ci - half : ci + half + 1]
            nd = 2 * half + 1
            off = -(c - ci) * ps
            first_bin = ci - half
        else:
            nd = n_det
            off = ((n_det - 1) / 2.0 - c) * ps
            first_bin = 0
        img_shape = nd if shape is None else shape
        op = ParallelBeam2D(shape=img_shape, angles=[float(t) for t in theta], n_det=nd, det_spacing=ps,
                            pixel_size=ps, det_offset=off, filter=filter)
        meta = {
            "source": str(p),
            "format": "Data Exchange HDF5",
            "rows": list(range(n_rows))[sel],
            "n_angles": int(n_ang),
            "theta_units": units,
            "center": float(c),
            "center_source": center_source,
            "detector_bins_kept": [int(first_bin), int(first_bin + nd)],
            "det_offset_mm": float(off),
            "pixel_size_mm": float(ps),
            "n_flat": 0 if white is None else int(white.shape[0]),
            "n_dark": 0 if dark is None else int(dark.shape[0]),
            "n_clipped_transmission": n_clipped,
            "units": "line integral (dimensionless)",
        }
        return torch.from_numpy(sino), op, meta
