"""Measurement files: ``y`` plus everything needed to reconstruct it later, in one HDF5 file.

A measurement file is enough to reconstruct on another machine a year later:
it holds the data ``y``, the operator spec (``Operator.spec()``, from which
:func:`medrecon.operator_from_spec` rebuilds ``A``), the noise level, the target
volume's shape and affine, units and provenance.

HDF5 layout, schema ``measurement/1``
-------------------------------------
Root attributes:

* ``medrecon_schema`` = ``"measurement/1"`` (files with another ``measurement/N``
  are refused with a message naming the version; foreign HDF5 files are refused)
* ``noise_std`` -- float, standard deviation of the noise in ``y`` (absolute,
  in the units of ``y``; for complex ``y`` the std of the complex noise,
  ``E|n|^2 = noise_std^2``)
* ``units`` -- units of the image the operator acts on (``"HU"``, ...; ``""`` if unknown)
* ``medrecon_version`` -- version of the writer

Datasets:

* ``y`` -- float32 / complex64 (or 64-bit), shaped ``(B, *range_shape)``; B =
  slices for per-slice operators
* ``volume_shape`` -- int64 ``(Z, Y, X)``
* ``affine`` -- float64 4x4, RAS+ mm, same convention as :class:`medrecon.Volume`
* ``operator_spec`` -- scalar UTF-8 string: JSON of the operator spec
* ``provenance`` -- scalar string: JSON (source, series_uid, command, date,
  medrecon_version, ...)
* ``reference_meta`` -- scalar string, optional: JSON of the source volume's
  ``meta``, so that a reconstruction can be written as a derived DICOM series
* ``arrays/NAME`` -- optional group of datasets: large operator inputs (MRI coil
  maps) that the operator spec references as ``{"array": NAME, ...}`` instead of
  holding them as JSON.  :meth:`Measurement.operator` passes them to the operator
  (``operator_from_spec(spec, arrays=...)``).  Readers
  that do not know the group ignore it (an additive change within ``measurement/1``).
  A spec may also reference an array file, ``{"file": "maps.npy"}``: only a relative path
  to a file in the measurement's own folder is accepted (:mod:`medrecon.io.arrayfiles`).

A measurement file must hold its data itself: HDF5 external links, external storage and
virtual datasets are refused (:mod:`medrecon.io.hdf5`), and every dataset's declared size
is checked against the memory budget (:mod:`medrecon.io.budget`) before it is read.

(The JSON texts are datasets, not attributes, because HDF5 attributes are limited to
64 kB and a spec can hold long angle lists or sampling masks.)

Example::

    >>> import numpy as np, medrecon, tempfile, os
    >>> m = medrecon.Measurement(y=np.ones((2, 4, 4), np.float32),
    ...     operator_spec={"name": "template.scale", "params": {"shape": [4, 4], "factor": 2.0}},
    ...     noise_std=0.0, volume_shape=(2, 4, 4), affine=np.eye(4), units="HU")
    >>> path = os.path.join(tempfile.mkdtemp(), "m.h5")
    >>> _ = medrecon.save_measurement(m, path)
    >>> medrecon.load_measurement(path).y.shape
    (2, 4, 4)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError, MedreconError

__all__ = ["Measurement", "SCHEMA", "save_measurement", "load_measurement", "is_measurement_file"]

SCHEMA = "measurement/1"
_SCHEMA_NAME, _SCHEMA_VERSION = SCHEMA.split("/")


def _version() -> str:
    import medrecon

    return medrecon.__version__


@dataclass
class Measurement:
    """Measured data ``y`` with the operator spec, noise level, target geometry and provenance.

    Attributes
    ----------
    y : numpy.ndarray
        Real or complex, shaped ``(B, *range_shape)`` (B = slices for per-slice operators).
    operator_spec : dict
        ``Operator.spec()``: ``{"name": ..., "params": {...}}``.
    noise_std : float
        Absolute standard deviation of the noise in ``y`` (units of ``y``); 0 for none.
        For complex ``y``: ``E|n|^2 = noise_std^2`` (each of real / imaginary parts
        ``noise_std / sqrt(2)``).
    volume_shape : tuple of int
        ``(Z, Y, X)`` of the volume to reconstruct.
    affine : numpy.ndarray
        4x4 RAS+ mm, voxel ``(i=column, j=row, k=slice)`` -> mm (see :class:`medrecon.Volume`).
    units : str or None
        Units of the image (``"HU"`` for CT).
    provenance : dict
        ``source``, ``series_uid``, ``command``, ``date``, ``medrecon_version`` and
        anything else the writer adds (noise mode, seed, slice range).
    reference_meta : dict or None
        The source volume's ``meta``, to write a reconstruction as a derived DICOM
        series (``save_volume(vol, folder, like=m.reference_meta)``).
    arrays : dict of str -> numpy.ndarray
        Large operator inputs referenced by name from ``operator_spec`` (MRI coil maps:
        ``{"array": "coil_maps"}``); stored as the ``arrays/`` group.  Usually empty.
    origin : str or None
        The file or folder this measurement was read from (set by :func:`load_measurement`
        and ``medrecon.engine.load_input``; not saved), so a run can refuse an output that
        would overwrite it.
    """

    y: np.ndarray
    operator_spec: dict[str, Any]
    noise_std: float = 0.0
    volume_shape: tuple[int, ...] = ()
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    units: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    reference_meta: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    origin: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        y = np.asarray(self.y)
        if y.dtype.kind not in "fcbiu":
            raise InputError(f"Measurement.y must be numeric, got dtype {y.dtype}")
        if y.dtype.kind in "biu":
            y = y.astype(np.float32)
        self.y = y
        if not isinstance(self.operator_spec, dict) or "name" not in self.operator_spec:
            raise InputError("Measurement.operator_spec must be a dict with a 'name' entry (Operator.spec())")
        try:
            self.noise_std = float(self.noise_std)
        except (TypeError, ValueError):
            raise InputError(f"noise_std must be a number, got {self.noise_std!r}") from None
        if not np.isfinite(self.noise_std) or self.noise_std < 0:
            raise InputError(f"noise_std must be finite and >= 0, got {self.noise_std}")
        self.volume_shape = tuple(int(s) for s in self.volume_shape)
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise InputError(f"Measurement.affine must be a finite 4x4 matrix, got shape {aff.shape}")
        self.affine = aff
        self.provenance = dict(self.provenance or {})
        if self.reference_meta is not None and not isinstance(self.reference_meta, dict):
            raise InputError("Measurement.reference_meta must be a dict or None")
        arrays = {}
        for k, v in dict(self.arrays or {}).items():
            a = np.asarray(v)
            if not isinstance(k, str) or not k or "/" in k or a.dtype.kind not in "fcbiu":
                raise InputError(f"Measurement.arrays entry {k!r} must be a numeric array under a plain name")
            arrays[k] = a
        self.arrays = arrays

    def operator(self, device=None):
        """Rebuild the operator from ``operator_spec`` and :attr:`arrays` (via
        :func:`medrecon.operator_from_spec`), optionally moved to ``device``.  Array files the
        spec references (``{"file": ...}``) are read from the folder of :attr:`origin` and only
        from there (:mod:`medrecon.io.arrayfiles`)."""
        from medrecon.io.arrayfiles import array_folder
        from medrecon.operators import operator_from_spec

        # a spec read from a file may reference array files only in that file's folder
        with array_folder(Path(self.origin).parent if self.origin else None):
            op = operator_from_spec(self.operator_spec, arrays=self.arrays)
        return op.to(device) if device is not None else op

    @property
    def is_complex(self) -> bool:
        return self.y.dtype.kind == "c"

    def __repr__(self) -> str:
        return (f"Measurement(y={self.y.shape} {self.y.dtype}, operator={self.operator_spec.get('name')!r}, "
                f"noise_std={self.noise_std:.4g}, volume_shape={self.volume_shape}, units={self.units!r})")


def _json(obj: Any, what: str) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON-able")

    try:
        return json.dumps(obj, default=default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"Measurement.{what} cannot be stored as JSON: {exc}") from exc


def save_measurement(m: Measurement, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``m`` to the HDF5 file ``path`` (schema ``measurement/1``), atomically.

    An existing ``path`` is replaced only with ``overwrite=True``.  Returns the path.
    """
    import h5py

    from medrecon.io.atomic import atomic_file

    if not isinstance(m, Measurement):
        raise InputError(f"save_measurement needs a Measurement, got {type(m).__name__}")
    p = Path(path)
    spec = _json(m.operator_spec, "operator_spec")
    prov = dict(m.provenance)
    prov.setdefault("medrecon_version", _version())
    prov_s = _json(prov, "provenance")
    ref_s = _json(m.reference_meta, "reference_meta") if m.reference_meta is not None else None
    with atomic_file(p, overwrite=overwrite, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["medrecon_schema"] = SCHEMA
            f.attrs["medrecon_version"] = _version()
            f.attrs["noise_std"] = float(m.noise_std)
            f.attrs["units"] = m.units if m.units is not None else ""
            text = h5py.string_dtype("utf-8")
            f.create_dataset("operator_spec", data=spec, dtype=text)
            f.create_dataset("provenance", data=prov_s, dtype=text)
            if ref_s is not None:
                f.create_dataset("reference_meta", data=ref_s, dtype=text)
            f.create_dataset("y", data=m.y, compression="gzip", compression_opts=1, shuffle=True)
            f.create_dataset("volume_shape", data=np.asarray(m.volume_shape, dtype=np.int64))
            f.create_dataset("affine", data=m.affine)
            if m.arrays:
                g = f.create_group("arrays")
                for k, v in m.arrays.items():
                    g.create_dataset(k, data=v, compression="gzip", compression_opts=1, shuffle=True)
    return p


def is_measurement_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file with a ``medrecon_schema`` attribute of kind ``measurement``."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return str(f.attrs.get("medrecon_schema", "")).startswith(_SCHEMA_NAME + "/")
    except Exception:  # noqa: BLE001
        return False


def _attr_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


_MISSING = object()


def _text(f, name: str, default: Any = _MISSING) -> Any:
    """A JSON text stored as a scalar string dataset (or, leniently, an attribute)."""
    if name in f:
        from medrecon.io.hdf5 import read_dataset

        return _attr_str(read_dataset(f, name, f.filename))
    if name in f.attrs:
        return _attr_str(f.attrs[name])
    if default is _MISSING:
        raise KeyError(name)
    return default


def load_measurement(path: str | os.PathLike) -> Measurement:
    """Read a measurement file written by :func:`save_measurement`.

    Raises :class:`FileFormatError` for a missing, truncated or foreign file, for a file of a
    newer schema than this medrecon reads, for a file that refers to data in other files (HDF5
    external links, external storage, virtual datasets: :mod:`medrecon.io.hdf5`) and for an
    operator spec referencing an array file outside the file's folder
    (:mod:`medrecon.io.arrayfiles`); :class:`~medrecon.io.budget.MemoryBudgetError` for
    datasets larger than the memory budget (checked before reading them).
    """
    from medrecon.io.arrayfiles import check_file_references
    from medrecon.io.hdf5 import open_hdf5

    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"no such measurement file: {str(p)!r}")
    f = open_hdf5(p, "HDF5 file")
    try:
        with f:
            _check_schema(f, p)
            try:
                spec = json.loads(_text(f, "operator_spec"))
                prov = json.loads(_text(f, "provenance", "{}"))
                ref = _text(f, "reference_meta", None)
                ref = json.loads(ref) if ref is not None else None
                units = _attr_str(f.attrs.get("units", "")) or None
                noise = float(f.attrs.get("noise_std", 0.0))
                y, arrays, shape, affine = _read_arrays(f, p)
            except KeyError as exc:
                raise FileFormatError(f"{str(p)!r} lacks a required entry of {SCHEMA}: {exc}") from exc
            except (OSError, ValueError, TypeError) as exc:
                raise FileFormatError(
                    f"{str(p)!r} is corrupt or truncated ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                ) from exc
    except MedreconError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py can raise odd errors on damaged files
        raise FileFormatError(f"{str(p)!r} could not be read: {type(exc).__name__}: {exc}") from exc
    check_file_references(spec, p.parent, repr(str(p)))
    try:
        return Measurement(y=y, operator_spec=spec, noise_std=noise, volume_shape=shape, affine=affine,
                           units=units, provenance=prov, reference_meta=ref, arrays=arrays,
                           origin=os.fspath(p))
    except InputError as exc:
        raise FileFormatError(f"{str(p)!r} holds invalid measurement data: {exc}") from exc


def _check_schema(f, p: Path) -> None:
    schema = f.attrs.get("medrecon_schema")
    if schema is None:
        raise FileFormatError(
            f"{str(p)!r} is an HDF5 file but not a medrecon measurement (no medrecon_schema attribute)")
    schema = _attr_str(schema)
    name, _, ver = schema.partition("/")
    if name != _SCHEMA_NAME:
        raise FileFormatError(f"{str(p)!r} is a medrecon {name!r} file, not a measurement")
    if not ver.isdigit():
        raise FileFormatError(f"{str(p)!r} has a malformed schema tag {schema!r}")
    if int(ver) > int(_SCHEMA_VERSION):
        raise FileFormatError(
            f"{str(p)!r} uses schema {schema}, newer than the {SCHEMA} this medrecon "
            f"{_version()} reads; upgrade medrecon")


def _read_arrays(f, p: Path):
    """``y``, the ``arrays/`` group, ``volume_shape`` and ``affine``: each dataset's size, and
    their sum, checked against the memory budget before any is read."""
    import h5py

    from medrecon.io.budget import require
    from medrecon.io.hdf5 import read_dataset, require_dataset

    group = f["arrays"] if "arrays" in f else None
    if group is not None and not isinstance(group, h5py.Group):
        raise FileFormatError(f"{str(p)!r}: 'arrays' must be a group of datasets")
    names = list(group) if group is not None else []
    dsets = [f["y"], *(group[k] for k in names)]
    for d in dsets:
        if not isinstance(d, h5py.Dataset):
            raise FileFormatError(f"{str(p)!r}: {d.name!r} is an HDF5 group, not a dataset")
        require_dataset(d, p)
    require(sum(d.size * d.dtype.itemsize for d in dsets), f"the datasets of {str(p)!r} (y and arrays/)")
    y = dsets[0][()]
    arrays = {k: d[()] for k, d in zip(names, dsets[1:], strict=True)}
    shape = tuple(int(s) for s in np.asarray(read_dataset(f, "volume_shape", p)).reshape(-1))
    affine = np.asarray(read_dataset(f, "affine", p), dtype=np.float64)
    return y, arrays, shape, affine
