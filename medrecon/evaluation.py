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

__all__ = ["evaluate", "as_volume"]


def evaluate(recon, reference, *, window=None, classical=None, json_path=None, png=None,
             overwrite: bool = False) -> dict[str, Any]:
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

    Returns
    -------
    dict with ``window``, ``data_range``, ``psnr`` (dB), ``ssim``, ``psnr_per_slice``,
    ``ssim_per_slice``, ``shape``, and ``classical`` (the same metrics) when given.
    """
    from medrecon.io.atomic import check_outputs

    check_outputs({"json_path": json_path, "png": png},
                  {"reconstruction": recon, "reference": reference, "classical": classical}, overwrite)
    rec_v = as_volume(recon, "reconstruction")
    ref_v = as_volume(reference, "reference", measurements=False)
    if rec_v.shape != ref_v.shape:
        raise InputError(f"reconstruction shape {rec_v.shape} differs from reference shape {ref_v.shape}")
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
    }
    out.update(compare(rec_v.data, ref_v.data, (lo, hi)))
    cl_v = None
    if classical is not None:
        cl_v = as_volume(classical, "classical reconstruction")
        if cl_v.shape != ref_v.shape:
            raise InputError(f"classical reconstruction shape {cl_v.shape} differs from reference shape {ref_v.shape}")
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


def as_volume(obj, what: str, measurements: bool = True):
    """``obj`` as a :class:`~medrecon.volume.Volume`: a Volume as it is, a path read from disk (a
    measurement or raw-data file ``.h5`` / ``.hdf5`` / ``.mat`` reconstructed with the ``classical``
    sampler, unless ``measurements`` is false), an array wrapped (float32).  ``what`` names it in
    error messages."""
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

        return load_volume(p)
    arr = np.asarray(obj, dtype=np.float32)
    return Volume(arr)
