"""A reconstruction scored against a reference: :func:`evaluate` reads both (volumes, arrays or
files; a measurement file is first reconstructed with the ``classical`` sampler), computes PSNR and
SSIM on one window (:mod:`medrecon.metrics`) and writes the JSON report and the figure.

It sits above the engine (it may run a classical reconstruction), so :mod:`medrecon.metrics`
stays free of it and the samplers can use the metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.figures import comparison_figure
from medrecon.intensity_window import default_window, parse_window
from medrecon.metrics import compare

__all__ = ["evaluate", "as_volume", "match_reference"]


def evaluate(recon, reference, *, window=None, classical=None, json_path=None, png=None,
             overwrite: bool = False, resample_reference: bool = False,
             allow_uneven: bool | float = False) -> dict[str, Any]:
    """Compare a reconstruction with a reference volume: PSNR and SSIM per slice and overall.

    Parameters
    ----------
    recon, reference : Volume, array, or path (NIfTI / DICOM folder)
    window : (lo, hi), optional
        Intensity window in physical units; default :func:`default_window` of the reference.
    classical : Volume, array or path, optional
        A classical reconstruction (e.g. FBP) scored the same way and shown in the figure.
        A measurement file (``.h5``) is reconstructed with the ``classical`` sampler.
    json_path : path, optional
        Write the result dict as JSON (atomically).
    png : path, optional
        Write the comparison figure (:func:`medrecon.figures.comparison_figure`).
    overwrite : bool
        Replace an existing ``json_path`` / ``png``; without it they are refused before any work.
        An output that is one of the inputs is always refused.
    resample_reference : bool
        When the reference lies on another grid than the reconstruction (a run of
        ``simulate --slices a:b``, ``--resample NYxNX`` or ``--pixel-size``), resample it onto
        the reconstruction's grid first (:func:`match_reference`); without it a different
        shape or placement raises :class:`InputError`.
    allow_uneven : bool or float
        Read unevenly spaced DICOM series resampled to even spacing
        (:func:`medrecon.io.load_volume`).

    Returns
    -------
    dict with ``window``, ``data_range``, ``psnr`` (dB), ``ssim``, ``psnr_per_slice``,
    ``ssim_per_slice``, ``shape``, ``reference_resampled`` (None, or how the reference was
    resampled), and ``classical`` (the same metrics) when given.
    """
    from medrecon.io.atomic import check_outputs

    check_outputs({"json_path": json_path, "png": png},
                  {"reconstruction": recon, "reference": reference, "classical": classical}, overwrite)
    rec_v = as_volume(recon, "reconstruction", allow_uneven=allow_uneven)
    ref_v = as_volume(reference, "reference", measurements=False, allow_uneven=allow_uneven)
    placed = not any(isinstance(o, (np.ndarray, list, tuple)) for o in (recon, reference))
    ref_v, resampled = match_reference(rec_v, ref_v, resample_reference, placed)
    if window is None:
        # the reference's modality / units decide; a bare NIfTI reference borrows the reconstruction's
        meta = ref_v.meta or {}
        if not (meta.get("modality") or meta.get("units")):
            meta = rec_v.meta or {}
        lo, hi = default_window(ref_v, meta=meta)
        source = "default"
    else:
        lo, hi = parse_window(window, ref_v.data)
        source = "given"
    out: dict[str, Any] = {
        "window": [lo, hi],
        "window_source": source,
        "data_range": hi - lo,
        "shape": list(rec_v.shape),
        "ssim_definition": "mean over axial slices of 2D SSIM (skimage, data_range = window width)",
        "psnr_definition": "10 log10(range^2 / MSE over the whole volume), values clipped to the window",
        "reference_resampled": resampled,
    }
    out.update(compare(rec_v.data, ref_v.data, (lo, hi)))
    cl_v = None
    if classical is not None:
        cl_v = as_volume(classical, "classical reconstruction", allow_uneven=allow_uneven)
        if cl_v.shape != rec_v.shape:
            raise InputError(f"classical reconstruction shape {cl_v.shape} differs from the reconstruction's "
                             f"{rec_v.shape}")
        out["classical"] = compare(cl_v.data, ref_v.data, (lo, hi))
    fit = ((rec_v.meta or {}).get("reconstruction") or {}).get("prior_fit")
    if fit:  # recorded by the engine (medrecon.engine.prior_fit): how familiar the study was to the prior
        out["prior_fit"] = {k: fit.get(k) for k in ("score", "warn_above", "warned", "reference")}
    if png is not None:
        comparison_figure(ref_v, rec_v, classical=cl_v, window=(lo, hi), path=png, metrics=out)
        out["png"] = str(png)
    if json_path is not None:
        from medrecon.io.atomic import atomic_file

        with atomic_file(Path(json_path), overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=2) + "\n")
    return out


def match_reference(rec_v, ref_v, resample: bool, placed: bool = True):
    """The reference ``ref_v`` on the reconstruction's grid, and how it got there.

    Returns ``(reference, how)``: ``how`` is None when the grids already agree (same shape and
    affines equal to ``rtol=1e-4, atol=1e-3``, or same shape when ``placed`` is false: a bare
    array has no place in space).  Otherwise, with ``resample``, the reference resampled with
    :func:`medrecon.io.resample.resample_to_grid` (both affines give the common physical space:
    slices matched by position, so a ``--slices a:b`` run picks its slices; area averaging where
    the reconstruction's pixels are larger, as ``simulate --resample`` does) and ``how`` the
    record kept in the metrics (shapes, spacings, per-axis method); without it an
    :class:`InputError` naming ``--resample-reference``.
    """
    same_shape = rec_v.shape == ref_v.shape
    if same_shape and (not placed or np.allclose(rec_v.affine, ref_v.affine, rtol=1e-4, atol=1e-3)):
        return ref_v, None

    def grid(v):
        return f"{'x'.join(map(str, v.shape))} voxels of {' x '.join(f'{s:.4g}' for s in v.spacing)} mm"

    if not placed:
        raise InputError(f"reconstruction shape {rec_v.shape} differs from reference shape {ref_v.shape} and an "
                         "array has no place in space to resample by; give both as volumes (files or Volume)")
    if not resample:
        where = "shape" if not same_shape else "placement in space (affine)"
        raise InputError(f"the reference ({grid(ref_v)}) differs from the reconstruction ({grid(rec_v)}) in "
                         f"{where}; pass --resample-reference (API: resample_reference=True) to resample the "
                         "reference onto the reconstruction's grid")
    from medrecon.io.resample import resample_to_grid

    out = resample_to_grid(ref_v, rec_v.shape, rec_v.affine, what="the reference", onto="the reconstruction")
    how = {"from_shape": list(ref_v.shape), "from_spacing_mm": [float(s) for s in ref_v.spacing],
           "to_shape": list(rec_v.shape), "to_spacing_mm": [float(s) for s in rec_v.spacing],
           **{k: v for k, v in out.meta.pop("resampled_to_grid").items() if k not in ("from_shape", "to_shape")}}
    return out, how


def as_volume(obj, what: str, measurements: bool = True, allow_uneven: bool | float = False):
    """``obj`` as a :class:`~medrecon.volume.Volume`: a Volume as it is, a path read from disk (a
    measurement or raw-data file ``.h5`` / ``.hdf5`` / ``.mat`` reconstructed with the ``classical``
    sampler, unless ``measurements`` is false; ``allow_uneven`` as for
    :func:`medrecon.io.load_volume`), an array wrapped (float32).  ``what`` names it in error
    messages."""
    from medrecon.volume import Volume

    if isinstance(obj, Volume):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.name.lower().endswith((".h5", ".hdf5", ".mat")):
            if not measurements:
                raise InputError(f"the {what} must be a volume (NIfTI or DICOM), not the measurement or raw file "
                                 f"{str(p)!r}")  # a measurement or raw data an importer reads
            from medrecon.engine import reconstruct

            return reconstruct(str(p), sampler="classical", progress=False)
        from medrecon.io import load_volume

        return load_volume(p, allow_uneven=allow_uneven)
    arr = np.asarray(obj, dtype=np.float32)
    return Volume(arr)
