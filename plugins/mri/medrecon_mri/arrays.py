"""Array-valued operator parameters (coil maps, phase maps) that keep ``spec()`` JSON-able.

An array parameter is given in one of these forms; the operator stores the form (not the
array) in its spec, so the spec stays small and rebuilds the same operator:

* a nested list of numbers (real), or ``{"real": nested, "imag": nested}`` (complex) --
  small cases; a numpy array or tensor passed in is converted to this form;
* ``{"file": "maps.npy"}`` or ``{"file": "maps.h5", "dataset": "coil_maps"}`` -- a file
  next to the data (``sha256`` optional: checked when present); in a measurement file only a
  relative path inside the measurement's folder is accepted (:mod:`medrecon.io.arrayfiles`);
* ``{"array": "coil_maps", "sha256": ...}`` -- an array stored inside the measurement file
  (``arrays/coil_maps``), passed to the operator as ``arrays=`` (what
  :meth:`medrecon.Measurement.operator` does);
* ``{"synthetic": "birdcage", ...}`` -- generated (coil maps only, :mod:`medrecon_mri.coils`).

``sha256`` is :func:`array_sha256` of the complex64 array: it puts the array's content into
the spec, so run settings (checkpoint hashes) change when the array does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = ["array_sha256", "as_param", "load_array"]


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 (hex) of ``a`` as contiguous complex64, with its shape."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.complex64))
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def as_param(value: Any) -> Any:
    """A JSON form of an array parameter: arrays and tensors become ``{"real", "imag"}`` lists."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        a = value.astype(np.complex64) if np.iscomplexobj(value) else value.astype(np.float32)
        if np.iscomplexobj(a):
            return {"real": a.real.tolist(), "imag": a.imag.tolist()}
        return a.tolist()
    return value


def load_array(value: Any, what: str, arrays: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The array a parameter value describes (complex128 or float64 numpy).

    ``arrays``: the measurement's arrays by name, which ``{"array": name}`` refers to (the
    operator's ``spec_arrays``, given as ``arrays=`` when it is built).
    """
    if isinstance(value, dict):
        if "real" in value:
            try:
                re = np.asarray(value["real"], dtype=np.float64)
                im = np.asarray(value.get("imag", np.zeros_like(re)), dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{what}: 'real' and 'imag' must be nested lists of numbers") from None
            if re.shape != im.shape:
                raise InputError(f"{what}: 'real' {re.shape} and 'imag' {im.shape} differ in shape")
            return re + 1j * im
        if "array" in value:
            name = str(value["array"])
            if arrays is None or not arrays:
                raise InputError(f"{what} refers to the measurement array {name!r}; build the operator with the "
                                 "measurement's arrays (Measurement.operator(), or arrays= of "
                                 "operator_from_spec / get_operator)")
            if name not in arrays:
                raise InputError(f"the measurement has no array {name!r} (it has: {', '.join(sorted(arrays))})")
            a = np.asarray(arrays[name])
        elif "file" in value:
            a = _read_file(Path(value["file"]), value.get("dataset"), what)
        else:
            raise InputError(f"{what}: a dict must hold 'real'/'imag', 'file', 'array' or 'synthetic'")
        sha = value.get("sha256")
        if sha and array_sha256(a) != sha:
            raise InputError(f"{what}: the array's content does not match the sha256 recorded in the spec")
        return a
    try:
        return np.asarray(value, dtype=np.complex128 if np.iscomplexobj(value) else np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a nested list of numbers or a reference dict") from None


def _read_file(p: Path, dataset, what: str) -> np.ndarray:
    """A ``{"file": ...}`` reference, read by :func:`medrecon.io.arrayfiles.read_array_file`: in the
    measurement's folder when built from a measurement file (references out of it are refused), its
    declared size checked against the memory budget, HDF5 without external links or storage."""
    from medrecon.io.arrayfiles import read_array_file

    return read_array_file(p, dataset, what, default_dataset="coil_maps")
