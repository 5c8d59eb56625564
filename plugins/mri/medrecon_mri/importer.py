"""``mri.kspace``: import raw Cartesian k-space (fastMRI HDF5, ISMRMRD HDF5, Siemens twix, ``.npy``) as a measurement.

Readable inputs
---------------
* **fastMRI HDF5**: a ``kspace`` dataset shaped ``(slices, coils, readout, phase_encode)``
  (multi-coil) or ``(slices, readout, phase_encode)`` (single coil); optional ``mask``
  dataset (one 0/1 flag per phase-encode line) and ``ismrmrd_header`` (XML; the field of
  view and matrix sizes give the pixel size and the readout oversampling).
* **ISMRMRD HDF5** (the ISMRM raw data format: a ``dataset`` group with the XML header and
  one record per readout), Cartesian 2D, single- or multi-slice, read with h5py alone
  (:mod:`medrecon_mri.ismrmrd`: line placement from the encoding counters and limits,
  averages averaged, noise / navigator / calibration-only readouts skipped, slice
  orientation from the readouts' position and direction cosines).
* **Siemens twix** ``.dat`` (VB/VD/VE) through twixtools (``pip install 'medrecon-mri[twix]'``):
  the last measurement's image data, pixel size and slice thickness from the protocol
  (``MeasYaps``); repetitions of other loop counters are averaged (``Ave``) or their first
  index kept (others, noted in the provenance).  The slice orientation and position
  (``sSliceArray``: normal, centre, in-plane rotation) give the affine
  (:mod:`medrecon_mri.geometry`, RAS+ mm); other inputs get a diagonal one.
* **numpy** ``.npy`` complex k-space whose axes are named in the file name or the
  ``layout`` option with Siemens' names: ``lin`` (phase-encode lines), ``cha`` (coils),
  ``col`` (readout samples), ``slc`` (slices), e.g. ``gre_kspace_lin_cha_col.npy``;
  without a name the fastMRI order is assumed.

Ambiguous layouts are refused (one sentence naming ``--import-option layout=...``): a 3D
``.npy``; an unnamed 4D ``.npy`` whose readout or phase-encode axis is shorter than its slice
or coil axis; and a 3D HDF5 ``kspace`` whose first axis (2 or more) is at most the number of
receiver channels in its ``ismrmrd_header`` (coils or slices?) unless the file is a fastMRI
emulated single-coil one (``reconstruction_esc``).  ``layout`` names the axes of an HDF5
``kspace`` dataset as it does for a ``.npy``.

What :meth:`KSpaceImporter.read` does
-------------------------------------
1. Puts k-space in the plugin's layout ``(slices, coils, readout, phase_encode)``.
2. The sampling mask: the file's ``mask`` dataset when present, else (or with ``mask=infer``)
   the phase-encode lines that are not all zero (over slices, coils and readout).  A file mask
   that disagrees with the data (a sampled line that is all zero, or an unsampled one that
   holds any non-zero sample) is refused, as is k-space with NaN or infinite samples.
3. Readout oversampling (``oversampling``, default from the header, else 2 for a ``.npy``
   whose file name carries Siemens axis names, and 1 otherwise, an explicit ``layout=``
   included): inverse FFT along the readout, keep the central ``1/oversampling`` of the
   image, FFT back (twix: always 2).  Exact when every measured line is fully sampled along
   the readout; readout samples that were not acquired (an asymmetric echo, ISMRMRD
   ``discard_pre/post``, twix echoes off centre) are placed by their centre sample and kept
   out of the mask (:func:`crop_rows`).  The image grid is the data's own (160 x 160 for the
   shared GRE phantom), whatever the prior's size.
4. ``undersample`` (a mask spec, :mod:`medrecon_mri.masks`): retrospective undersampling
   on top of the acquired mask.
5. Coil maps from the calibration region (:func:`medrecon_mri.coils.estimate_coil_maps`,
   ``coil_method`` default ``auto``: ESPIRiT, or ``lowres`` for a calibration region under 4
   lines) for multi-coil data, stored in the measurement file
   (``arrays/coil_maps``) and referenced from the ``mri.sense`` spec; single-coil data gets
   a low-resolution phase estimate (``arrays/phase``) for ``mri.cartesian``.
6. ``real_image`` (default True): the maps (or the phase) carry the low-resolution image
   phase, so the image to reconstruct is real, as a magnitude prior expects.
   ``real_image=false`` keeps a complex image.

Several slices: coil maps and phase differ from slice to slice, so they are estimated for
every slice from its own calibration region and stored with a slice axis, coil maps
``(S, C, ny, nx)`` and phase ``(S, ny, nx)``; the operator is then *slice-varying*
(:mod:`medrecon.operators.base`): slice ``s`` of the measurement is measured with maps
``s``, and the engine hands each batch ``op.for_slices(batch)``.  One slice (a
single-slice file, or ``slice=K`` to keep slice ``K``) keeps maps ``(C, ny, nx)`` /
phase ``(ny, nx)``.  Intensities stay in the scanner's arbitrary units (``units``
``"a.u."``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medrecon.errors import FileFormatError, InputError

__all__ = ["KSpaceImporter", "crop_readout", "infer_mask"]

_AXES = ("slc", "cha", "col", "lin")
_MASK_OPTIONS = ("file", "infer")
_MIN_CALIB = 4  # lines per side of the calibration region that every coil-map method needs (coils.lowres_coil_images)


def crop_readout(k: np.ndarray, factor: int, axis: int = -2) -> np.ndarray:
    """Remove ``factor``-times readout oversampling: keep the central ``n / factor`` image samples."""
    from medrecon_mri.fft import fft1c_np, ifft1c_np

    factor = int(factor)
    if factor <= 1:
        return k
    n = k.shape[axis]
    keep = n // factor
    img = ifft1c_np(k, axis)
    start = n // 2 - keep // 2  # the centre pixel n // 2 (centred FFT) becomes keep // 2
    img = np.take(img, np.arange(start, start + keep), axis=axis)
    return fft1c_np(img, axis)


def crop_rows(rows: np.ndarray, factor: int) -> np.ndarray:
    """Readout rows of the cropped grid that lie within the sampled k-space range of ``rows``.

    ``rows`` (bool, ``n``): readout samples that were acquired on the oversampled grid (an
    asymmetric echo leaves some out).  Keeping the central ``n' = n // factor`` image samples
    makes the k-space spacing ``factor`` times coarser: row ``r'`` sits at ``k = (r' - n' // 2)
    factor`` original steps from the centre and counts as sampled when ``k`` lies within the
    first and last acquired rows.  (Near that edge the cropped samples mix in the unacquired
    zeros: an approximation, exact when every row was acquired.)
    """
    rows = np.asarray(rows, bool)
    n, factor = rows.size, max(int(factor), 1)
    keep = n // factor
    got = np.flatnonzero(rows)
    if got.size == 0:
        return np.zeros(keep, bool)
    k = (np.arange(keep) - keep // 2) * factor
    return (k >= got[0] - n // 2) & (k <= got[-1] - n // 2)


def centre_kspace(k: np.ndarray, center_row: int | None, center_line: int | None, shape, what: str):
    """Place ``k`` (``..., rows, lines``) on an encoded grid ``shape`` = (rows, lines) so that the
    sample ``(center_row, center_line)`` lands on the centred FFT's zero frequency ``(R // 2,
    L // 2)``; returns the placed k-space and the readout rows that hold acquired samples.
    ``None`` or 0 centres mean a symmetric acquisition (``n // 2``).  Asymmetric echoes and
    partial-Fourier line numbering leave unacquired rows / lines at zero."""
    nr, nl = k.shape[-2:]
    R, L = (max(int(v), n) for v, n in zip(shape, (nr, nl), strict=True))
    sr = R // 2 - (int(center_row or 0) or nr // 2)
    sl = L // 2 - (int(center_line or 0) or nl // 2)
    if sr < 0 or sr + nr > R or sl < 0 or sl + nl > L:
        raise FileFormatError(f"{what}: the k-space centre (sample {center_row}, line {center_line}) cannot be "
                              f"placed on the {R} x {L} encoded grid")
    rows = np.zeros(R, bool)
    rows[sr:sr + nr] = True
    if (sr, sl, R, L) == (0, 0, nr, nl):
        return k, rows
    out = np.zeros((*k.shape[:-2], R, L), k.dtype)
    out[..., sr:sr + nr, sl:sl + nl] = k
    return out, rows


def infer_mask(k: np.ndarray) -> np.ndarray:
    """Phase-encode lines (last axis) that hold any non-zero sample, as a boolean vector."""
    return np.abs(k).reshape(-1, k.shape[-1]).max(axis=0) > 0


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_options(*, oversampling, slice, pixel_size, undersample, coil_method="auto", mask=None) -> None:
    """Importer options as they may arrive from ``--import-option key=value``: one sentence each."""
    from medrecon_mri.coils import METHODS

    if not isinstance(coil_method, str) or coil_method not in METHODS:
        raise InputError(f"coil_method must be one of {', '.join(METHODS)}, got {coil_method!r}")
    if mask is not None and mask not in _MASK_OPTIONS:
        raise InputError(f"mask must be {' or '.join(_MASK_OPTIONS)} (infer: ignore the file's mask dataset and "
                         f"take the phase-encode lines that hold data), got {mask!r}")
    if oversampling is not None and not (_is_int(oversampling) and oversampling >= 1):
        raise InputError(f"oversampling must be a positive integer (the readout oversampling factor), "
                         f"got {oversampling!r}")
    if slice is not None and not _is_int(slice):
        raise InputError(f"slice must be an integer (a slice index), got {slice!r}")
    if pixel_size is not None and (isinstance(pixel_size, (bool, str)) or not isinstance(pixel_size, (int, float))
                                   or not np.isfinite(pixel_size) or pixel_size <= 0):
        raise InputError(f"pixel_size must be a positive number of mm, got {pixel_size!r}")
    if undersample is not None and not isinstance(undersample, dict) and (
            isinstance(undersample, (bool, str)) or not isinstance(undersample, (int, float))):
        raise InputError(f"undersample must be an acceleration or a mask spec such as "
                         f'{{"kind": "random", "acceleration": 4}}, got {undersample!r}')


def _check_finite(k: np.ndarray, p: Path, slice) -> None:
    """Refuse k-space ``(slices, coils, readout, phase encode)`` with NaN or infinite samples in the slices to
    import (all, or ``slice``): a corrupt file, which no option repairs (``slice=`` may skip the bad slices)."""
    Z = k.shape[0]
    if slice is not None:
        if not -Z <= int(slice) < Z:
            return  # read refuses the index in one sentence
        k = k[[int(slice) % Z]]
    bad = k[0].size - np.count_nonzero(np.isfinite(k).reshape(k.shape[0], -1), axis=1)
    if bad.any():
        clean = np.flatnonzero(bad == 0) if slice is None else []
        which = np.flatnonzero(bad)
        hint = (f" (only slice{'s' if len(which) > 1 else ''} {', '.join(map(str, which))} hold"
                f"{'' if len(which) > 1 else 's'} them: --import-option slice=K imports one clean slice K, e.g. "
                f"slice={clean[0]})" if len(clean) else "")
        n = int(bad.sum())
        raise FileFormatError(f"{str(p)!r}: {n} of {k.size} k-space samples {'is' if n == 1 else 'are'} NaN or "
                              f"infinite; the file is corrupt and no --import-option can repair it{hint}")


def _check_file_mask(k: np.ndarray, file_mask, p: Path) -> None:
    """Refuse a file ``mask`` that disagrees with the data: a line marked sampled that is all zero in every
    slice and coil, or one marked unsampled that holds any non-zero sample."""
    m = np.asarray(file_mask).reshape(-1).astype(bool)
    if m.shape[0] != k.shape[-1]:
        return  # the entry count is checked (one sentence) where the mask is used
    held = (k != 0).reshape(-1, k.shape[-1]).any(axis=0)  # as infer_mask, but a NaN counts as data
    empty, extra = int(np.count_nonzero(m & ~held)), int(np.count_nonzero(~m & held))
    if empty or extra:
        parts = [f"{n} marked {what}" for n, what in ((empty, "sampled but all zero"),
                                                     (extra, "unsampled but holding data")) if n]
        raise FileFormatError(f"{str(p)!r}: the file's mask dataset disagrees with the k-space in {empty + extra} of "
                              f"{m.size} phase-encode lines ({' and '.join(parts)}); fix or remove the mask dataset, "
                              "or pass --import-option mask=infer to take the sampled lines from the data")


def _check_calibration(mask2d: np.ndarray, calib, method: str | None, undersample) -> None:
    """Refuse, before any estimation, a calibration region too small for the coil maps (``method``) or,
    single-coil (``method`` None), for the phase estimate; the sentence names the options that help."""
    from medrecon_mri.coils import resolve_method
    from medrecon_mri.espirit import MAX_CALIB, min_calib
    from medrecon_mri.masks import calibration_region, parse_calib

    shape = mask2d.shape
    if calib is not None:
        h, w = parse_calib(shape, calib)
    else:
        rs, cs = calibration_region(mask2d)
        h, w = rs.stop - rs.start, cs.stop - cs.start
    more = (", or a larger center_fraction in --import-option undersample=" if undersample is not None else "")
    what = (f"the {h} x {w} calibration region (the fully sampled centre of k-space"
            f"{', from calib=' if calib is not None else ''})")
    if min(h, w) < _MIN_CALIB:
        if method is None:
            raise InputError(f"{what} is too small to estimate the image phase, which needs at least {_MIN_CALIB} x "
                             f"{_MIN_CALIB}; use --import-option real_image=false, or --import-option "
                             f"calib=[rows,cols] to name a larger fully sampled centre{more}")
        raise InputError(f"{what} is too small to estimate coil maps: every coil_method needs at least {_MIN_CALIB} "
                         f"x {_MIN_CALIB} (coil_method=lowres and walsh included); use --import-option "
                         f"calib=[rows,cols] to name a larger fully sampled centre{more}, or sample more central lines")
    if method is not None and resolve_method(method, shape, mask2d, calib) == "espirit":
        need = max(min_calib(3), _MIN_CALIB)
        if min(h, w, MAX_CALIB) < need:
            raise InputError(f"{what} is too small for ESPIRiT coil maps, which need at least {need} fully sampled "
                             f"central lines on each side; use --import-option coil_method=lowres (which needs "
                             f"{_MIN_CALIB}), or --import-option calib=[rows,cols] to name a larger fully sampled "
                             f"centre{more}")


def _receiver_channels(text) -> int | None:
    """``acquisitionSystemInformation/receiverChannels`` of an ISMRMRD XML header, or None."""
    try:
        root = ET.fromstring(text.decode() if isinstance(text, bytes) else str(text))
    except (ET.ParseError, UnicodeDecodeError):
        return None
    for e in root.iter():
        if e.tag.rsplit("}", 1)[-1] == "receiverChannels":
            try:
                return int(float(e.text))
            except (TypeError, ValueError):
                return None
    return None


def _h5_kspace_shape(p: Path) -> tuple[tuple[int, ...], int | None, bool] | None:
    """Cheap look at a fastMRI-style HDF5 file before reading it: the ``kspace`` dataset's shape, the
    header's receiver channels and whether it is an emulated single-coil file (``reconstruction_esc``);
    None when there is no such dataset or the file does not open (read reports that)."""
    from medrecon.io.hdf5 import open_hdf5, read_dataset

    try:
        with open_hdf5(p) as f:
            d = f.get("kspace")
            if d is None or not hasattr(d, "shape"):
                return None
            h = read_dataset(f, "ismrmrd_header", p) if "ismrmrd_header" in f else None
            esc = "reconstruction_esc" in f
            return tuple(d.shape), (None if h is None else _receiver_channels(h)), esc
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _check_3d_h5(shape, channels: int | None, esc: bool, p: Path) -> None:
    """A 3D ``kspace`` is fastMRI's single-coil ``(slices, readout, phase encode)``, unless its first axis could
    be the coils the header lists: then the layout must be named (module docstring)."""
    n = shape[0]
    if len(shape) == 3 and not esc and channels is not None and 2 <= n <= channels:
        raise InputError(f"{str(p)!r}: the 3D kspace dataset {tuple(shape)} is ambiguous, since its header lists "
                         f"{channels} receiver channels and the first axis ({n}) may be coils rather than slices; "
                         "pass --import-option layout=cha_col_lin (coils, readout, phase encode) or "
                         "layout=slc_col_lin (single-coil slices)")


def _layout_from_name(name: str) -> str | None:
    m = re.search(r"((?:slc|cha|col|lin)(?:_(?:slc|cha|col|lin))+)", name.lower())
    return m.group(1) if m else None


def _header_info(text: str) -> dict[str, Any]:
    """Pixel size (mm) and readout oversampling from an ISMRMRD XML header (best effort)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return {}
    pre = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""

    def num(path):
        e = root.find("./" + "/".join(pre + part for part in path.split("/")))
        try:
            return float(e.text) if e is not None else None
        except (TypeError, ValueError):
            return None

    out = {}
    ex, rx = num("encoding/encodedSpace/matrixSize/x"), num("encoding/reconSpace/matrixSize/x")
    fx = num("encoding/encodedSpace/fieldOfView_mm/x")
    fy = num("encoding/encodedSpace/fieldOfView_mm/y")
    fz = num("encoding/encodedSpace/fieldOfView_mm/z")
    ey = num("encoding/encodedSpace/matrixSize/y")
    if ex and rx and ex > rx:
        out["oversampling"] = int(round(ex / rx))
    if fx and ex:
        out["pixel_size_readout"] = fx / ex
    if fy and ey:
        out["pixel_size_pe"] = fy / ey
    if fz:
        out["slice_thickness"] = fz
    return out


def _looks_like_twix(p: Path) -> bool:
    """Siemens twix: VD/VE start with two uint32 (0, number of measurements 1..64); VB with the
    header length followed by the protocol text (``Config``)."""
    with open(p, "rb") as f:
        head = f.read(64)
    if len(head) < 16:
        return False
    a, b = np.frombuffer(head[:8], "<u4")
    return (a == 0 and 1 <= b <= 64) or b"Config" in head[4:40]


class KSpaceImporter:
    """Importer of raw Cartesian k-space (registered as ``mri.kspace``; see the module docstring)."""

    name: ClassVar[str] = "mri.kspace"

    @classmethod
    def can_read(cls, path) -> bool:
        """True for an HDF5 file with a 3D/4D ``kspace`` dataset or ISMRMRD acquisitions, a Siemens
        twix ``.dat``, or a complex 2D-4D ``.npy`` (cheap)."""
        from medrecon.io.sniff import sniff_file

        def probe(p: Path) -> bool:
            if p.suffix.lower() == ".dat":
                return _looks_like_twix(p)
            if p.suffix.lower() == ".npy":
                a = np.load(p, mmap_mode="r", allow_pickle=False)
                return np.iscomplexobj(a) and 2 <= a.ndim <= 4
            from medrecon.io.hdf5 import open_hdf5
            from medrecon_mri.ismrmrd import find_ismrmrd_group

            with open_hdf5(p) as f:  # a file referring to other files is claimed, and read() refuses it
                d = f.get("kspace")
                if d is not None and hasattr(d, "shape") and len(d.shape) in (3, 4):
                    return True
                return "kspace" not in f and find_ismrmrd_group(f) is not None

        return sniff_file(path, probe)

    def read(self, path, *, layout: str | None = None, oversampling: int | None = None, slice: int | None = None,
             real_image: bool = True, coil_method: str = "auto", calib=None, undersample=None,
             pixel_size: float | None = None, threshold: float = 0.05, mask: str | None = None):
        """Read raw k-space; returns a :class:`medrecon.Measurement` (coil maps in its ``arrays``).

        Options (``--import-option key=value`` on the command line): ``layout`` (axis names
        for ``.npy`` or an HDF5 ``kspace``, e.g. ``lin_cha_col``), ``oversampling`` (readout oversampling factor),
        ``slice`` (keep one slice), ``real_image``, ``coil_method`` (auto: espirit, or lowres when the
        calibration region is under 4 lines; lowres, walsh, espirit), ``mask`` (``infer``: ignore the
        file's mask dataset and take the lines that hold data),
        ``calib`` (ACS size ``[rows, cols]``), ``undersample`` (mask spec for retrospective
        undersampling), ``pixel_size`` (mm, overrides the header), ``threshold`` (coil-map
        background fade, relative).
        """
        p = Path(path)
        if not p.is_file():
            raise FileFormatError(f"no such file: {str(p)!r}")
        if not isinstance(real_image, bool):
            raise InputError(f"real_image must be true or false, got {real_image!r}")
        _check_options(oversampling=oversampling, slice=slice, pixel_size=pixel_size, undersample=undersample,
                       coil_method=coil_method, mask=mask)
        info: dict[str, Any] = {}
        file_mask = None
        if p.suffix.lower() == ".dat":
            k, info = self._read_twix(p)
            multicoil = k.shape[1] > 1
            os_default = 2
        elif p.suffix.lower() == ".npy":
            from medrecon.io.arrayfiles import read_npy

            k = read_npy(p, "k-space")  # its declared size checked against the memory budget first
            lay = layout or _layout_from_name(p.name)
            k, multicoil = self._to_layout(k, lay, p)
            # a Siemens export named by its axes (gre_kspace_lin_cha_col.npy) carries the scanner's 2x
            # readout oversampling; an explicit layout= says nothing about it (default 1)
            os_default = 2 if layout is None and lay else 1
        else:
            probe = _h5_kspace_shape(p)  # None: ISMRMRD (or unreadable: _read_h5 says so)
            if probe is not None and layout is None:
                _check_3d_h5(*probe, p)
            k, file_mask, info, multicoil = self._read_h5(p)
            if probe is not None and layout is not None:
                k, multicoil = self._to_layout(k[:, 0] if len(probe[0]) == 3 else k, layout, p)
            os_default = 1
        if not np.iscomplexobj(k):
            raise FileFormatError(f"{str(p)!r}: k-space must be complex, got {k.dtype}")
        _check_finite(k, p, slice)
        if mask == "infer":
            file_mask = None
        elif file_mask is not None:
            _check_file_mask(k, file_mask, p)
        os_factor = int(oversampling if oversampling is not None else info.get("oversampling", os_default))
        Z = k.shape[0]
        geom = info.get("slice_frames")
        if geom is not None and len(geom) != Z:
            geom = None  # the protocol's slices do not match the data's: no orientation
        if slice is not None:
            if not -Z <= int(slice) < Z:
                raise InputError(f"slice must be an integer in [0, {Z}), got {slice!r}")
            k = k[[int(slice) % Z]]
            if geom is not None:
                geom = [geom[int(slice) % Z]]
            Z = 1
        mask_cols = infer_mask(k) if file_mask is None else np.asarray(file_mask).reshape(-1).astype(bool)
        if mask_cols.shape[0] != k.shape[-1]:
            raise FileFormatError(f"{str(p)!r}: the mask has {mask_cols.shape[0]} entries for "
                                  f"{k.shape[-1]} phase-encode lines")
        rows = info.get("rows_sampled")  # readout rows acquired (an asymmetric echo leaves some out)
        if rows is not None and len(rows) != k.shape[-2]:
            rows = None
        k = crop_readout(k, os_factor, axis=-2).astype(np.complex64)
        ny, nx = k.shape[-2:]
        row_mask = np.ones(ny, bool) if rows is None or np.all(rows) else crop_rows(rows, os_factor)
        mask2d = row_mask[:, None] & mask_cols[None, :]
        if undersample is not None:
            from medrecon_mri.masks import make_mask

            mask2d &= make_mask((ny, nx), undersample if isinstance(undersample, dict)
                                else {"kind": "random", "acceleration": float(undersample), "seed": 0})
        k = k * mask2d  # zero-filled full grid
        if multicoil or real_image:  # before any estimation: a calibration region too small, in one sentence
            _check_calibration(mask2d, calib, coil_method if multicoil else None, undersample)
        from medrecon.measurement import Measurement
        from medrecon_mri.arrays import array_sha256
        from medrecon_mri.coils import estimate_coil_maps, resolve_method

        def per_slice(estimate) -> np.ndarray:
            """``estimate(k_s)`` for every slice: stacked on a slice axis when there are several."""
            out = [estimate(k[z]) for z in range(Z)]
            return out[0] if Z == 1 else np.stack(out)

        col_mask = bool(np.all(mask2d == mask2d[:1]))
        mask_param = mask2d[0].astype(int).tolist() if col_mask else mask2d.astype(int).tolist()
        arrays: dict[str, np.ndarray] = {}
        if multicoil:
            maps = per_slice(lambda ks: estimate_coil_maps(ks, mask2d, method=coil_method, calib=calib,
                                                           threshold=threshold))
            arrays["coil_maps"] = maps
            spec_params = dict(shape=[ny, nx], coil_maps={"array": "coil_maps", "sha256": array_sha256(maps)},
                               mask=mask_param, real_image=real_image)
            if real_image:  # the maps carry an estimated phase: classical methods may solve for a complex image
                spec_params["phase_estimated"] = True
            name = "mri.sense"
        else:
            spec_params = dict(shape=[ny, nx], mask=mask_param, real_image=real_image)
            if real_image:
                from medrecon_mri.coils import lowres_coil_images

                ph = per_slice(lambda ks: np.angle(lowres_coil_images(ks, mask2d, calib)[0])).astype(np.float32)
                arrays["phase"] = ph
                spec_params["phase"] = {"array": "phase", "sha256": array_sha256(ph)}
            name = "mri.cartesian"
        import medrecon

        op = medrecon.get_operator(name, arrays=arrays, **spec_params)  # validates the spec now, not at reconstruction
        ps_ro = float(pixel_size or info.get("pixel_size_readout") or 1.0)
        ps_pe = float(pixel_size or info.get("pixel_size_pe") or ps_ro)
        dz = float(info.get("slice_thickness") or ps_ro)
        # voxel (i=column=phase encode, j=row=readout, k=slice) -> mm: oriented from a Siemens protocol
        # (medrecon_mri.geometry), else a diagonal
        slice_positions = None
        if geom is not None:
            from medrecon_mri.geometry import frames_affine

            affine, slice_positions = frames_affine(geom, (ny, nx), ps_pe, ps_ro)
        else:
            affine = np.diag([ps_pe, ps_ro, dz, 1.0])
        prov = {"source": str(p), "importer": self.name, "oversampling_removed": os_factor,
                "slice": None if slice is None else int(slice),
                "coil_method": resolve_method(coil_method, (ny, nx), mask2d, calib) if multicoil else None,
                "acceleration": op.acceleration, "calibration": op.mask_info["calibration"],
                "undersample": undersample, "layout": "slices, coils, readout (rows), phase encode (columns)",
                "mask_source": "mask dataset" if file_mask is not None else "inferred from the data"}
        prov["orientation"] = info.get("orientation", "?") if geom is not None else "none (diagonal affine)"
        if slice_positions is not None and Z > 1:
            prov["slice_positions"] = slice_positions
        for key in ("twix_dropped", "ismrmrd_skipped", "ismrmrd_dropped", "averages"):
            if info.get(key):
                prov[key] = info[key]
        return Measurement(y=k if multicoil else k[:, 0], operator_spec=op.spec(), noise_std=0.0,
                           volume_shape=(Z, ny, nx), affine=affine, units="a.u.", provenance=prov, arrays=arrays)

    @staticmethod
    def _to_layout(k: np.ndarray, lay: str | None, p: Path):
        """``(slices, coils, readout, phase_encode)`` and whether there are several coils."""
        if lay is None:  # fastMRI order: (slices,) (coils,) readout, phase encode
            if k.ndim == 2:
                return k[None, None], False
            if k.ndim == 3:
                raise InputError(f"{str(p)!r}: a 3D .npy is ambiguous (slices or coils first?); pass "
                                 "--import-option layout=cha_col_lin or layout=slc_col_lin (and oversampling=2 "
                                 "for Siemens data)")
            if k.ndim == 4 and min(k.shape[2:]) < max(k.shape[:2]):
                raise InputError(f"{str(p)!r}: a 4D .npy without axis names is read as (slices, coils, readout, "
                                 f"phase encode), but its shape {k.shape} has a readout or phase-encode axis shorter "
                                 "than a slice or coil axis; name the axes with --import-option layout=, e.g. "
                                 "layout=slc_cha_col_lin or lin_cha_col_slc")
            return k, k.shape[1] > 1
        names = lay.split("_")
        if sorted(names) != sorted(set(names)) or any(n not in _AXES for n in names) or len(names) != k.ndim:
            raise InputError(f"layout {lay!r} must name the {k.ndim} axes with distinct slc, cha, col, lin")
        if "col" not in names or "lin" not in names:
            raise InputError(f"layout {lay!r} must name the readout (col) and phase-encode (lin) axes")
        for extra in ("slc", "cha"):
            if extra not in names:
                k = k[None]
                names = [extra] + names
        k = np.transpose(k, [names.index(a) for a in _AXES])
        return k, k.shape[1] > 1

    @staticmethod
    def _read_twix(p: Path):
        """``(slices, coils, readout, phase_encode)`` k-space and geometry from a Siemens twix file."""
        try:
            import twixtools
        except ImportError as exc:
            raise InputError("reading Siemens twix (.dat) needs twixtools: pip install 'medrecon-mri[twix]'") from exc
        import contextlib
        import io

        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                scans = twixtools.map_twix(str(p), verbose=False)
        except Exception as exc:  # noqa: BLE001 - twixtools raises many kinds on foreign files
            raise FileFormatError(f"{str(p)!r} is not a readable Siemens twix file ({type(exc).__name__})") from exc
        scan = scans[-1] if isinstance(scans, list) and scans else None
        if not isinstance(scan, dict) or "image" not in scan:
            raise FileFormatError(f"{str(p)!r} holds no imaging data")
        img = scan["image"]
        img.flags["remove_os"] = False
        img.flags["squeeze_singletons"] = False
        dims = list(img.dims)
        k = np.asarray(img[:])
        if "Par" in dims and k.shape[dims.index("Par")] > 1:
            raise FileFormatError(f"{str(p)!r}: 3D encodings ({k.shape[dims.index('Par')]} partitions) are not "
                                  "supported; only 2D (multi-slice) Cartesian data")
        dropped = {}
        for d in list(dims):
            if d in ("Sli", "Cha", "Col", "Lin"):
                continue
            ax = dims.index(d)
            if k.shape[ax] > 1:
                dropped[d] = int(k.shape[ax])
            k = k.mean(axis=ax) if d == "Ave" else np.take(k, 0, axis=ax)
            dims.pop(ax)
        k = np.transpose(k, [dims.index(a) for a in ("Sli", "Cha", "Col", "Lin")])
        info: dict[str, Any] = {"oversampling": 2}
        # the k-space centre of the readouts (their CenterCol / CenterLin) onto the centred FFT's
        # zero frequency of the encoded grid (2 x base resolution samples, lPhaseEncodingLines lines)
        grid = list(k.shape[-2:])
        try:
            kspace = scan["hdr"]["MeasYaps"]["sKSpace"]
            grid = [max(grid[0], 2 * int(kspace["lBaseResolution"])), max(grid[1], int(kspace["lPhaseEncodingLines"]))]
        except (KeyError, TypeError, ValueError):
            pass
        k, info["rows_sampled"] = centre_kspace(k, getattr(img, "kspace_center_col", None),
                                                getattr(img, "kspace_center_lin", None), grid, repr(str(p)))
        try:
            yaps = scan["hdr"]["MeasYaps"]
            sl = yaps["sSliceArray"]["asSlice"][0]
            info["pixel_size_readout"] = float(sl["dReadoutFOV"]) / float(yaps["sKSpace"]["lBaseResolution"])
            info["pixel_size_pe"] = float(sl["dPhaseFOV"]) / float(yaps["sKSpace"]["lPhaseEncodingLines"])
            info["slice_thickness"] = float(sl["dThickness"])
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
            pass
        try:
            from medrecon_mri.geometry import siemens_frames, slice_geometry

            geom = slice_geometry(scan["hdr"]["MeasYaps"])
            info["slice_frames"] = siemens_frames(geom) if geom else None
            info["orientation"] = "protocol (sSliceArray)"
        except (KeyError, TypeError, ValueError):
            info["slice_frames"] = None
        if dropped:
            info["twix_dropped"] = dropped
        return k, info

    @staticmethod
    def _read_h5(p: Path):
        """k-space, mask and header of a fastMRI-style file, through :func:`medrecon.io.hdf5.open_hdf5`
        (no external links or storage) with each dataset's size checked against the memory budget."""
        from medrecon.io.hdf5 import open_hdf5, read_dataset
        from medrecon_mri.ismrmrd import find_ismrmrd_group

        with open_hdf5(p) as f:
            mrd = "kspace" not in f and find_ismrmrd_group(f) is not None
            if "kspace" not in f and not mrd:
                raise FileFormatError(f"{str(p)!r} has neither a kspace dataset (fastMRI-style k-space) nor "
                                      "ISMRMRD acquisitions")
            k = None if mrd else read_dataset(f, "kspace", p)
            mask = read_dataset(f, "mask", p) if "mask" in f and not mrd else None
            info = {}
            if "ismrmrd_header" in f and not mrd:
                h = read_dataset(f, "ismrmrd_header", p)
                info = _header_info(h.decode() if isinstance(h, bytes) else str(h))
        if mrd:
            return KSpaceImporter._read_ismrmrd(p)
        if k.ndim == 3:
            return k[:, None], mask, info, False
        if k.ndim == 4:
            return k, mask, info, k.shape[1] > 1
        raise FileFormatError(f"{str(p)!r}: kspace must be (slices, [coils,] readout, phase encode), got {k.shape}")

    @staticmethod
    def _read_ismrmrd(p: Path):
        """ISMRMRD HDF5 (:mod:`medrecon_mri.ismrmrd`): k-space, no mask dataset, header info."""
        from medrecon_mri.ismrmrd import read_ismrmrd

        k, raw = read_ismrmrd(p)
        info = _header_info(raw["header_xml"])
        info.update(slice_frames=raw["slice_frames"], orientation="ISMRMRD acquisition headers",
                    rows_sampled=raw["rows_sampled"],
                    ismrmrd_skipped=raw["skipped"], ismrmrd_dropped=raw["dropped"],
                    averages=raw["averages"] if raw["averages"] > 1 else None)
        return k, None, info, k.shape[1] > 1
