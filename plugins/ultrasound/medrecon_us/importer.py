"""``us.rf``: import plane-wave RF channel data (Verasonics-style MAT, zea-style HDF5) as a measurement.

Readable inputs
---------------
* **Verasonics-style MAT** (MATLAB v5/v7 through :func:`scipy.io.loadmat`; v7.3 files are
  HDF5 and are read with h5py): an RF array shaped ``samples x elements x transmits``
  (optionally ``x frames``), named ``RF``, ``RF1``, ``RFdata``, ``rf`` ... (the first of
  these names, else the only 3D/4D numeric array), and a parameter struct named
  ``param``, ``param1``, ``P``, ``params`` ... (else the only struct holding ``fs``, else
  top-level variables of these names) with fields ``c`` (m/s), ``fs`` (Hz), ``TXangle`` (radians, one per transmit), ``pitch`` (m),
  and optionally ``t0`` (s, time of the first sample) and ``fc`` / ``f0`` (Hz, centre
  frequency).  This is the layout of Garcia et al.'s f-k migration data (``RFdata1.mat``:
  ``RF1`` 2688 x 128 x 7 uint8, ``param1`` with c = 1540, fs = 20 MHz, TXangle -1.5 .. 1.5
  degrees in radians, pitch 0.298 mm, no t0).
* **zea-style HDF5** (the published format of the zea ultrasound toolbox where it fits):
  ``data/raw_data`` shaped ``(n_frames, n_tx, n_ax, n_el, n_ch)`` with ``n_ch = 1`` (RF;
  IQ data, ``n_ch = 2``, is refused), and a ``scan`` group with ``sampling_frequency``
  (Hz), ``center_frequency`` (Hz), ``polar_angles`` (rad, ``(n_tx,)``), ``probe_geometry``
  (``(n_el, 3)`` m, a uniform linear array along x), ``initial_times`` (s, ``(n_tx,)``: the
  time of the first sample after the first element fired), optional ``sound_speed`` (m/s,
  default 1540) and ``t0_delays`` (s, ``(n_tx, n_el)`` transmit delays).  :func:`write_rf_hdf5`
  writes such a file.

What :meth:`RFImporter.read` builds
-----------------------------------
* ``y`` float32 shaped ``(frames, n_angles, n_elements, n_samples)``; integer samples
  (uint8 / int16) are converted to float32 with their mean removed (the ADC offset; the
  mean over the whole array).
* The operator spec ``{"name": "us.planewave", "params": {...}}`` with ``shape [nz, nx]``,
  ``z_mm``, ``x_mm`` (pixel-centre coordinates of the first / last row and column in mm:
  depth from the probe face, lateral from the array centre), ``n_elements``, ``pitch_mm``,
  ``angles_deg``, ``c``, ``fs_hz``, ``n_samples``, ``t0_s``, ``f0_hz``, ``bandwidth``,
  ``f_number`` (and ``tx_reference`` / ``apodization`` when given or implied by the file).
* The default image grid: lateral across the aperture (first to last element centre, pixel
  ``pitch / 2``); axial from where the record starts, ``z_min = max(5 mm, c t0 / 2)``, to the
  deepest depth the samples reach, ``z_max = c (t0 + (n_samples - 1) / fs) / 2``, with pixel
  ``lambda / 8 = c / (8 f0)``:
  the beamformed RF oscillates along depth at spatial frequency ``2 f / c``, so ``lambda / 4``
  would sample the centre frequency at exactly its Nyquist rate and alias the upper half of the
  pulse's band; ``lambda / 8`` keeps the whole -6 dB band (up to ``f0 (1 + bandwidth / 2)``)
  below Nyquist and is the grid the shipped ultrasound priors were trained on.  Options override it: ``z_mm=[a,b]``,
  ``x_mm=[a,b]``, ``shape=[nz,nx]``, ``dz_mm``, ``dx_mm``.
* The volume ``(frames, nz, nx)`` with an affine in mm: column ``i`` -> lateral ``x``
  (world x), row ``j`` -> depth (world y), frame ``k`` -> world z at 1 mm per frame
  (frames are time, not space); units ``"a.u."``.

Options (``--import-option key=value``): ``z_mm``, ``x_mm``, ``shape``, ``dz_mm``, ``dx_mm``,
``f0_hz`` (default: the file's, else 5 MHz), ``bandwidth`` (0.6), ``f_number`` (1.5),
``frames`` (an index or a list of indices), ``c`` and ``t0_s`` (override the file),
``tx_reference`` and ``apodization`` (passed to the operator), ``rf`` / ``param`` (the MAT
variable names), ``dehaze`` (``true``: beamform every frame with delay-and-sum and return a
``us.haze`` measurement for the ``dehaze`` sampler, :func:`medrecon_us.haze.haze_measurement`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medrecon.errors import FileFormatError, InputError
from medrecon.io.budget import array_bytes, require
from medrecon.io.hdf5 import open_hdf5, read_dataset

__all__ = ["RFImporter", "write_rf_hdf5", "default_grid"]

OPERATOR = "us.planewave"
RF_NAMES = ("RF", "RF1", "RFdata", "RFData", "rf", "rf1", "rfdata", "RcvData")
PARAM_NAMES = ("param", "param1", "P", "params", "parameters", "Param", "PARAM")
C_RANGE = (1000.0, 4000.0)       # m/s: soft tissue, water, phantoms (bone excluded)
FS_RANGE = (1e5, 1e10)           # Hz
PITCH_RANGE_M = (1e-6, 5e-3)     # m
DEFAULT_F0 = 5e6
DEFAULT_C = 1540.0
Z_MIN_MM = 5.0


# ----------------------------------------------------------------------------- helpers
def _scalar(v, what: str, src: str) -> float:
    a = np.asarray(v, dtype=np.float64).ravel() if v is not None else np.zeros(0)
    if a.size == 0:
        raise FileFormatError(f"{src}: the parameter {what} is empty")
    if not np.all(a == a[0]):
        raise FileFormatError(f"{src}: the parameter {what} must be one value, got {a.size} different values")
    return float(a[0])


def _in_range(v: float, lo: float, hi: float, what: str, src: str) -> float:
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InputError(f"{src}: {what} = {v:g} is out of range [{lo:g}, {hi:g}]")
    return v


def _pair_option(v, what: str) -> list[float]:
    try:
        a, b = (float(t) for t in v)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be two numbers [first, last], got {v!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and b > a):
        raise InputError(f"{what} needs finite first < last, got {v!r}")
    return [a, b]


def default_grid(*, n_elements: int, pitch_mm: float, c: float, fs_hz: float, n_samples: int, t0_s: float,
                 f0_hz: float, z_mm=None, x_mm=None, shape=None, dz_mm=None, dx_mm=None) -> dict[str, Any]:
    """The image grid ``{"shape", "z_mm", "x_mm"}`` of the importer (see the module docstring).

    ``z_mm`` defaults to ``[max(5 mm, c t0 / 2), c t_last / 2]``: the record starts at ``t0``, and
    the shallowest depth it holds is ``c t0 / 2`` (the echo of a depth ``z`` reaches the element
    above it ``2 z / c`` after an unsteered transmit; a steered or off-axis path only takes
    longer), so a grid starting shallower would hold rows no sample reaches; 5 mm leaves out the
    transmit ring-down of a record that starts at the transmit (``t0 = 0``).  ``x_mm`` defaults
    to the first / last element centre (``+-(N - 1) pitch / 2``); the counts follow from
    ``dz_mm`` (default ``lambda / 8``) and ``dx_mm`` (default ``pitch / 2``) unless ``shape`` is
    given.
    """
    t_last = t0_s + (n_samples - 1) / fs_hz
    z_deep = c * t_last / 2 * 1e3  # mm
    if z_mm is None:
        z_first = max(Z_MIN_MM, c * t0_s / 2 * 1e3)  # mm: where the recorded data start
        if z_deep <= z_first:
            raise InputError(f"the RF record reaches only {z_deep:.2f} mm deep (from {z_first:.2f} mm); give the "
                             "depth range z_mm=[a,b]")
        z_mm = [z_first, z_deep]
    z_mm = _pair_option(z_mm, "z_mm")
    if z_mm[0] < 0:
        raise InputError(f"z_mm must start at a depth >= 0 mm, got {z_mm}")
    half = (n_elements - 1) * pitch_mm / 2
    x_mm = _pair_option(x_mm if x_mm is not None else [-half, half], "x_mm")
    if shape is not None:
        try:
            nz, nx = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(f"shape must be two integers [nz, nx], got {shape!r}") from None
        if nz < 2 or nx < 2:
            raise InputError(f"shape needs at least 2 x 2 pixels, got {shape!r}")
    else:
        dz = float(dz_mm) if dz_mm is not None else c / f0_hz / 8 * 1e3
        dx = float(dx_mm) if dx_mm is not None else pitch_mm / 2
        if not (dz > 0 and dx > 0):
            raise InputError(f"dz_mm and dx_mm must be positive, got {dz_mm!r}, {dx_mm!r}")
        nz = int(math.floor((z_mm[1] - z_mm[0]) / dz + 1e-9)) + 1
        nx = int(math.floor((x_mm[1] - x_mm[0]) / dx + 1e-9)) + 1
        z_mm = [z_mm[0], z_mm[0] + (nz - 1) * dz]
        x_mm = [x_mm[0], x_mm[0] + (nx - 1) * dx]
        if nz < 2 or nx < 2:
            raise InputError(f"the grid z_mm={z_mm}, x_mm={x_mm} holds fewer than 2 x 2 pixels")
    return {"shape": [nz, nx], "z_mm": [round(float(v), 6) for v in z_mm], "x_mm": [round(float(v), 6) for v in x_mm]}


def grid_affine(z_mm, x_mm, shape) -> np.ndarray:
    """Voxel ``(i = lateral column, j = depth row, k = frame)`` -> mm: x lateral, y depth, z frame (1 mm)."""
    nz, nx = shape
    dz = (z_mm[1] - z_mm[0]) / (nz - 1)
    dx = (x_mm[1] - x_mm[0]) / (nx - 1)
    aff = np.diag([dx, dz, 1.0, 1.0])
    aff[0, 3], aff[1, 3] = x_mm[0], z_mm[0]
    return aff


# ----------------------------------------------------------------------------- MAT
def _mat_struct_to_dict(s) -> dict[str, Any]:
    """A scipy.io ``mat_struct`` or a 1x1 record array as {field: value}."""
    if hasattr(s, "_fieldnames"):
        return {f: getattr(s, f) for f in s._fieldnames}
    if isinstance(s, np.ndarray) and s.dtype.names:
        rec = s.ravel()[0]
        return {f: rec[f] for f in s.dtype.names}
    return {}


def _field(d: dict[str, Any], names, default=None):
    low = {k.lower(): k for k in d}
    for n in names:
        if n.lower() in low:
            return d[low[n.lower()]]
    return default


def _pick_mat_variables(variables: dict[str, Any], src: str, rf_name: str | None, param_name: str | None):
    """(RF array, params dict, rf name, param name) from the file's variables."""
    if rf_name is not None:
        if rf_name not in variables:
            raise FileFormatError(f"{src} has no variable {rf_name!r} (it has: {', '.join(sorted(variables))})")
        rf_key = rf_name
    else:
        rf_key = next((n for n in RF_NAMES if n in variables and _is_rf(variables[n])), None)
        if rf_key is None:
            cands = [n for n, v in variables.items() if _is_rf(v)]
            if len(cands) != 1:
                raise FileFormatError(
                    f"{src} holds no RF array (a 3D/4D numeric variable samples x elements x transmits "
                    f"named {', '.join(RF_NAMES[:4])}, ...)" if not cands else
                    f"{src} holds several 3D/4D arrays ({', '.join(cands)}); name the RF one with rf=NAME")
            rf_key = cands[0]
    if param_name is not None:
        if param_name not in variables:
            raise FileFormatError(f"{src} has no variable {param_name!r} (it has: {', '.join(sorted(variables))})")
        p_key = param_name
    else:
        structs = {n: _mat_struct_to_dict(v) for n, v in variables.items() if n != rf_key}
        structs = {n: d for n, d in structs.items() if d}
        p_key = next((n for n in PARAM_NAMES if n in structs), None)
        if p_key is None:
            cands = [n for n, d in structs.items() if _field(d, ("fs",)) is not None]
            if not cands and _field(variables, ("fs",)) is not None:  # parameters as top-level variables
                return np.asarray(variables[rf_key]), {k: v for k, v in variables.items() if k != rf_key}, \
                    rf_key, "(top level)"
            if len(cands) != 1:
                raise FileFormatError(f"{src} holds no parameter struct (param / param1 / P with fields c, fs, "
                                      "TXangle, pitch)" if not cands else
                                      f"{src} holds several parameter structs ({', '.join(cands)}); name one with "
                                      "param=NAME")
            p_key = cands[0]
    params = _mat_struct_to_dict(variables[p_key])
    if not params:
        raise FileFormatError(f"{src}: the variable {p_key!r} is not a struct of parameters")
    return np.asarray(variables[rf_key]), params, rf_key, p_key


def _is_rf(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind in "iuf" and v.ndim in (3, 4) and min(v.shape) >= 1


def _load_mat(p: Path) -> tuple[dict[str, Any], str]:
    """All variables of a MAT file (v5/v7 via scipy, v7.3 via h5py with MATLAB's axis order restored)."""
    import scipy.io

    try:
        _check_mat_size(p)
        return scipy.io.loadmat(p, squeeze_me=False), "mat"
    except NotImplementedError:  # v7.3: HDF5
        return _load_mat73(p), "mat-v7.3"
    except (ValueError, TypeError, OSError) as exc:
        raise FileFormatError(f"{str(p)!r} is not a readable MAT file ({exc})") from exc


#: bytes per element of the MATLAB classes (others, e.g. struct and cell headers: 8)
_MAT_BYTES = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4,
              "uint32": 4, "int64": 8, "uint64": 8, "logical": 1, "char": 4}


def _check_mat_size(p: Path) -> None:
    """Refuse a MAT v5/v7 file whose variables (their declared shapes, as listed by
    :func:`scipy.io.whosmat` without reading them) are over the memory budget, each counted twice (its
    imaginary part, or the float copy the importer makes).  A compressed MAT file may declare far more
    than it holds on disk."""
    import scipy.io

    total = sum(array_bytes(shape, _MAT_BYTES.get(cls, 8)) * 2 for _, shape, cls in scipy.io.whosmat(p))
    require(total, f"the variables of {str(p)!r}")


def _load_mat73(p: Path) -> dict[str, Any]:
    """Datasets and one level of struct groups of a MATLAB v7.3 file; arrays transposed back
    to MATLAB's axis order (h5py sees them reversed)."""
    import h5py

    out: dict[str, Any] = {}
    with open_hdf5(p, "MAT v7.3 (HDF5) file") as f:  # no external links or storage
        for name, obj in f.items():
            if name.startswith("#"):
                continue
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(read_dataset(f, name, p)).T
            elif isinstance(obj, h5py.Group):
                rec = {k: np.asarray(read_dataset(obj, k, p)).T for k, v in obj.items()
                       if isinstance(v, h5py.Dataset)}
                arr = np.empty((1, 1), dtype=[(k, object) for k in rec])
                for k, v in rec.items():
                    arr[k][0, 0] = v
                out[name] = arr
    return out


# ----------------------------------------------------------------------------- zea HDF5
def _is_zea(f) -> bool:
    d = f.get("data/raw_data")
    return d is not None and hasattr(d, "shape") and len(d.shape) == 5 and "scan" in f


def _read_zea(p: Path) -> dict[str, Any]:
    src = repr(str(p))
    with open_hdf5(p) as f:  # no external links or storage; sizes checked against the memory budget
        if not _is_zea(f):
            raise FileFormatError(f"{src} has no data/raw_data (n_frames, n_tx, n_ax, n_el, n_ch) with a scan group")
        if f["data/raw_data"].shape[-1] != 1:
            raise FileFormatError(f"{src}: raw_data has {f['data/raw_data'].shape[-1]} channels; only RF data "
                                  "(1 channel) is supported, not IQ (2 channels)")
        raw = read_dataset(f, "data/raw_data", p)
        scan = f["scan"]

        def get(name, required=True):
            if name in scan:
                return np.asarray(read_dataset(scan, name, p))
            if required:
                raise FileFormatError(f"{src}: the scan group has no {name}")
            return None

        out = {"raw": raw, "fs": get("sampling_frequency"), "f0": get("center_frequency", False),
               "c": get("sound_speed", False), "angles": get("polar_angles"), "geom": get("probe_geometry"),
               "t0": get("initial_times"), "t0_delays": get("t0_delays", False)}
    return out


def write_rf_hdf5(path, rf, *, fs_hz: float, angles_rad, pitch_m: float, c: float = DEFAULT_C,
                  f0_hz: float = DEFAULT_F0, t0_s: float | np.ndarray = 0.0, tx_reference: str = "first_element",
                  probe_name: str = "", description: str = "", overwrite: bool = False) -> Path:
    """Write plane-wave RF channel data as a zea-style HDF5 file that :class:`RFImporter` reads.

    Parameters
    ----------
    rf : array ``(n_frames, n_tx, n_ax, n_el)``, or ``(n_tx, n_ax, n_el)`` for one frame
        RF samples (float32 or int16 kept; other types become float32).
    fs_hz, f0_hz : float
        Sampling and centre frequency (Hz).
    angles_rad : sequence of n_tx floats
        Plane-wave steering angles (radians, positive towards +x).
    pitch_m : float
        Element pitch (m); elements at ``x_e = (e - (n_el - 1) / 2) pitch``, y = z = 0.
    c : float
        Sound speed (m/s), stored as ``scan/sound_speed``.
    t0_s : float or (n_tx,)
        ``initial_times``: time of the first sample (s) after the time reference.
    tx_reference : "first_element" or "center"
        What time zero is: the first element firing (zea's and Verasonics' convention;
        ``t0_delays`` then start at 0) or the wavefront crossing the array centre
        (``t0_delays`` centred on 0).  The importer reads it back from ``t0_delays``.

    The file is written atomically; returns its path.
    """
    import h5py

    from medrecon.io.atomic import atomic_file

    a = np.asarray(rf)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.dtype.kind not in "iuf":
        raise InputError(f"rf must be numeric, shaped (n_frames, n_tx, n_ax, n_el), got shape {a.shape}")
    a = a[..., None]  # one RF channel
    if a.dtype not in (np.float32, np.int16):
        a = a.astype(np.float32)
    n_frames, n_tx, n_ax, n_el, _ = a.shape
    angles = np.asarray(angles_rad, dtype=np.float64).ravel()
    if angles.size != n_tx:
        raise InputError(f"{angles.size} steering angles for {n_tx} transmits")
    from medrecon_us.geometry import TX_REFERENCES, element_positions

    if tx_reference not in TX_REFERENCES:
        raise InputError(f"tx_reference must be one of {', '.join(TX_REFERENCES)}, got {tx_reference!r}")
    xe = element_positions(n_el, pitch_m).numpy()
    geom = np.zeros((n_el, 3), np.float32)
    geom[:, 0] = xe
    # element e fires when the plane wave through the array centre at t=0 passes it: x_e sin(theta) / c
    t0_delays = xe[None, :] * np.sin(angles)[:, None] / c
    if tx_reference == "first_element":
        t0_delays = t0_delays - t0_delays.min(axis=1, keepdims=True)
    t0 = np.broadcast_to(np.asarray(t0_s, dtype=np.float64), (n_tx,))
    scan = {
        "probe_geometry": geom,
        "sampling_frequency": np.float32(fs_hz),
        "center_frequency": np.float32(f0_hz),
        "demodulation_frequency": np.float32(0.0),
        "initial_times": t0.astype(np.float32),
        "t0_delays": t0_delays.astype(np.float32),
        "tx_apodizations": np.ones((n_tx, n_el), np.float32),
        "focus_distances": np.full(n_tx, np.inf, np.float32),
        "transmit_origins": np.zeros((n_tx, 3), np.float32),
        "polar_angles": angles.astype(np.float32),
        "sound_speed": np.float32(c),
    }
    path = Path(path)
    with atomic_file(path, overwrite=overwrite, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["probe_name"] = probe_name
        f.attrs["us_machine"] = ""
        f.attrs["description"] = description or "plane-wave RF channel data written by medrecon-ultrasound"
        f.create_dataset("data/raw_data", data=a, compression="gzip", compression_opts=1)
        for k, v in scan.items():
            f.create_dataset(f"scan/{k}", data=v)
    return path


def _tx_reference_from_delays(t0_delays, angles, xe, c, src) -> str | None:
    """``"first_element"`` when the transmit delays start at 0, ``"center"`` when they are 0 at the
    array centre (for a linear array: their mean), None when there are no delays or all angles are 0."""
    if t0_delays is None or not np.any(angles):
        return None
    d = np.asarray(t0_delays, dtype=np.float64).reshape(len(angles), -1)
    if d.shape[1] != xe.size:
        raise FileFormatError(f"{src}: t0_delays has {d.shape[1]} elements, the probe {xe.size}")
    tol = 0.05 * (xe[1] - xe[0]) / c if xe.size > 1 else 1e-9
    centre = np.array([np.interp(0.0, xe, row) for row in d])
    if np.all(np.abs(d.min(axis=1)) <= tol):
        return "first_element"
    if np.all(np.abs(centre) <= tol):
        return "center"
    raise FileFormatError(f"{src}: t0_delays are neither zero at the first-firing element nor at the array centre")


# ----------------------------------------------------------------------------- importer
class RFImporter:
    """Importer of plane-wave RF channel data (registered as ``us.rf``; see the module docstring)."""

    name: ClassVar[str] = "us.rf"

    @classmethod
    def can_read(cls, path) -> bool:
        """True for a MAT file with a 3D/4D RF array and a parameter struct, or a zea-style HDF5 file (cheap)."""
        from medrecon.io.sniff import sniff_file

        def probe(p: Path) -> bool:
            if p.suffix.lower() == ".mat":
                import scipy.io

                try:
                    info = scipy.io.whosmat(p)
                except NotImplementedError:  # v7.3
                    import h5py

                    with open_hdf5(p) as f:  # a file referring to other files is claimed; read() refuses it
                        return any(isinstance(v, h5py.Dataset) and len(v.shape) in (3, 4) for v in f.values())
                return (any(len(shape) in (3, 4) and cls_ not in ("struct", "cell") for _, shape, cls_ in info)
                        and any(cls_ == "struct" or name.lower() == "fs" for name, _, cls_ in info))
            with open_hdf5(p) as f:  # a file referring to other files is claimed; read() refuses it
                return _is_zea(f)

        return sniff_file(path, probe)

    def read(self, path, *, z_mm=None, x_mm=None, shape=None, dz_mm=None, dx_mm=None, f0_hz=None,
             bandwidth: float = 0.6, f_number: float = 1.5, frames=None, c=None, t0_s=None,
             tx_reference: str | None = None, apodization: str | None = None, rf: str | None = None,
             param: str | None = None, dehaze: bool = False):
        """Read RF channel data; returns a :class:`medrecon.Measurement` for ``us.planewave``.

        Options are those of the module docstring (``--import-option key=value``).  Raises
        :class:`FileFormatError` for a file without the expected arrays / fields and
        :class:`InputError` for parameters out of range or disagreeing with the RF shape.
        """
        p = Path(path)
        src = repr(str(p))
        if not p.is_file():
            raise FileFormatError(f"no such file: {src}")
        prov: dict[str, Any] = {"source": str(p), "importer": self.name}
        if p.suffix.lower() == ".mat":
            variables, fmt = _load_mat(p)
            variables = {k: v for k, v in variables.items() if not k.startswith("__")}
            raw, params, rf_key, p_key = _pick_mat_variables(variables, src, rf, param)
            prov.update(format=fmt, rf_variable=rf_key, param_variable=p_key)
            if raw.ndim == 3:
                raw = raw[..., None]
            # samples x elements x transmits x frames -> frames, transmits, elements, samples
            raw = np.transpose(raw, (3, 2, 1, 0))
            missing = [n for n, keys in (("c", ("c", "c0", "soundspeed", "sound_speed")), ("fs", ("fs",)),
                                         ("TXangle", ("TXangle", "TXangles", "angles", "angle")),
                                         ("pitch", ("pitch",))) if _field(params, keys) is None]
            if missing:
                raise FileFormatError(f"{src}: the parameter struct {p_key!r} lacks {', '.join(missing)} "
                                      "(needs c, fs, TXangle, pitch)")
            file_c = _scalar(_field(params, ("c", "c0", "soundspeed", "sound_speed")), "c", src)
            fs = _scalar(_field(params, ("fs",)), "fs", src)
            angles = np.asarray(_field(params, ("TXangle", "TXangles", "angles", "angle")), np.float64).ravel()
            pitch_m = _scalar(_field(params, ("pitch",)), "pitch", src)
            t0_file = _field(params, ("t0",))
            t0 = np.zeros(1) if t0_file is None else np.asarray(t0_file, np.float64).ravel()
            f0_file = _field(params, ("fc", "f0", "fc_hz", "f0_hz"))
            f0_file = None if f0_file is None else _scalar(f0_file, "fc", src)
            file_ref = None
            prov["t0_in_file"] = t0_file is not None
        else:
            z = _read_zea(p)
            prov["format"] = "zea-hdf5"
            raw = np.transpose(z["raw"][..., 0], (0, 1, 3, 2))  # frames, tx, el, ax
            fs = _scalar(z["fs"], "sampling_frequency", src)
            f0_file = None if z["f0"] is None else _scalar(z["f0"], "center_frequency", src)
            file_c = DEFAULT_C if z["c"] is None else _scalar(z["c"], "sound_speed", src)
            prov["sound_speed_in_file"] = z["c"] is not None
            angles = np.asarray(z["angles"], np.float64).ravel()
            geom = np.asarray(z["geom"], np.float64)
            if geom.ndim != 2 or geom.shape[1] != 3 or geom.shape[0] < 2:
                raise FileFormatError(f"{src}: probe_geometry must be (n_el, 3) metres, got {geom.shape}")
            steps = np.diff(geom[:, 0])
            if np.any(np.abs(geom[:, 1:]) > 1e-9) or not np.allclose(steps, steps[0], rtol=1e-4):
                raise InputError(f"{src}: probe_geometry is not a uniform linear array along x "
                                 "(us.planewave needs one)")
            pitch_m = float(steps[0])
            t0 = np.asarray(z["t0"], np.float64).ravel()
            file_ref = "pending"
            t0_delays = z["t0_delays"]
        # --------------------------------------------------------------- checks
        if raw.dtype.kind not in "iuf":
            raise FileFormatError(f"{src}: the RF data must be numeric, got dtype {raw.dtype}")
        n_frames, n_tx, n_el, n_s = raw.shape
        if angles.size != n_tx:
            raise InputError(f"{src}: the RF data has {n_tx} transmits but the parameters list {angles.size} "
                             "steering angles")
        if not np.all(np.isfinite(angles)) or np.any(np.abs(angles) >= math.pi / 2):
            raise InputError(f"{src}: steering angles must be radians strictly between -pi/2 and pi/2, "
                             f"got {angles.tolist()}")
        c_val = _in_range(float(c) if c is not None else file_c, *C_RANGE, "the sound speed c (m/s)", src)
        fs = _in_range(fs, *FS_RANGE, "the sampling rate fs (Hz)", src)
        pitch_m = _in_range(pitch_m, *PITCH_RANGE_M, "the element pitch (m)", src)
        if n_el < 2 or n_s < 8:
            raise InputError(f"{src}: RF shaped {n_el} elements x {n_s} samples is too small")
        if t0.size not in (1, n_tx):
            raise InputError(f"{src}: t0 has {t0.size} values for {n_tx} transmits")
        if not np.allclose(t0, t0[0], rtol=0, atol=0.01 / fs):
            raise InputError(f"{src}: the first-sample time t0 differs between transmits; us.planewave needs one t0")
        t0_val = float(t0_s) if t0_s is not None else float(t0[0])
        if not math.isfinite(t0_val):
            raise InputError(f"{src}: t0 must be finite, got {t0_val}")
        f0 = float(f0_hz) if f0_hz is not None else (f0_file if f0_file is not None else DEFAULT_F0)
        prov["f0_source"] = "option" if f0_hz is not None else ("file" if f0_file is not None else "default 5 MHz")
        if not (0 < f0 < fs / 2):
            raise InputError(f"{src}: the centre frequency f0 = {f0:g} Hz must lie in (0, fs/2 = {fs / 2:g} Hz)")
        if file_ref == "pending":
            from medrecon_us.geometry import element_positions

            xe = element_positions(n_el, pitch_m).numpy()
            file_ref = _tx_reference_from_delays(t0_delays, angles, xe, c_val, src)
        # the ADC offset of integer samples: the mean over the whole file (all frames)
        offset = float(np.mean(raw, dtype=np.float64)) if raw.dtype.kind in "iu" else None
        # --------------------------------------------------------------- frames
        if frames is not None:
            idx = [frames] if np.ndim(frames) == 0 else list(frames)
            ok = bool(idx) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx)
            if not ok or any(not -n_frames <= i < n_frames for i in idx):
                raise InputError(f"frames must be frame indices in [0, {n_frames}), got {frames!r}")
            raw = raw[[i % n_frames for i in idx]]
            prov["frames"] = [i % n_frames for i in idx]
        # --------------------------------------------------------------- data
        y = raw.astype(np.float32)
        if offset is not None:
            y -= np.float32(offset)
            prov["offset_removed"] = offset
        if not np.all(np.isfinite(y)):
            raise InputError(f"{src}: the RF data holds NaN or infinite values")
        # --------------------------------------------------------------- operator spec + geometry
        grid = default_grid(n_elements=n_el, pitch_mm=pitch_m * 1e3, c=c_val, fs_hz=fs, n_samples=n_s,
                            t0_s=t0_val, f0_hz=f0, z_mm=z_mm, x_mm=x_mm, shape=shape, dz_mm=dz_mm, dx_mm=dx_mm)
        spec_params: dict[str, Any] = dict(
            shape=grid["shape"], z_mm=grid["z_mm"], x_mm=grid["x_mm"], n_elements=int(n_el),
            pitch_mm=pitch_m * 1e3, angles_deg=[round(float(np.degrees(a)), 9) for a in angles], c=c_val, fs_hz=fs,
            n_samples=int(n_s), t0_s=t0_val, f0_hz=f0, bandwidth=float(bandwidth), f_number=float(f_number))
        ref = tx_reference if tx_reference is not None else (file_ref or None)
        if ref is not None:
            spec_params["tx_reference"] = ref
        if apodization is not None:
            spec_params["apodization"] = apodization
        import medrecon
        from medrecon.measurement import Measurement

        op = medrecon.get_operator(OPERATOR, **spec_params)  # validates the spec now, not at reconstruction
        nz, nx = grid["shape"]
        prov.update(wavelength_mm=c_val / f0 * 1e3, layout="frames, transmits, elements, samples",
                    grid="default" if (z_mm is None and x_mm is None and shape is None) else "options")
        m = Measurement(y=y, operator_spec=op.spec(), noise_std=0.0, volume_shape=(y.shape[0], nz, nx),
                        affine=grid_affine(grid["z_mm"], grid["x_mm"], grid["shape"]), units="a.u.",
                        provenance=prov)
        if not isinstance(dehaze, bool):
            raise InputError(f"dehaze must be true or false, got {dehaze!r}")
        if dehaze:
            from medrecon_us.haze import haze_measurement

            m = haze_measurement(m)
        return m
