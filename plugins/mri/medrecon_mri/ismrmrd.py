"""ISMRMRD HDF5 raw data (Cartesian, 2D) read into a k-space array, with h5py only.

File layout (ISMRMRD 1.x; https://ismrmrd.readthedocs.io): a group (``/dataset`` by
default) holding

* ``xml``: the XML header, one variable-length string (``ismrmrdHeader``: encoded and
  reconstructed matrix sizes and fields of view in mm, encoding limits, trajectory);
* ``data``: one compound record per readout (acquisition): ``head`` (the
  ``AcquisitionHeader``), ``traj`` and ``data`` (float32, real and imaginary parts
  interleaved, ``active_channels x number_of_samples`` complex samples).

:func:`read_ismrmrd` places every imaging readout on the encoded grid
``(slices, coils, readout, phase_encode)``, the plugin's layout:

* phase-encode line ``e1 = idx.kspace_encode_step_1`` goes to column
  ``e1 + ny // 2 - c1``, with ``ny`` the encoded matrix ``y`` and ``c1`` the centre of
  ``kspace_encoding_step_1`` in the encoding limits (default ``ny // 2``), so that the
  k-space centre lands on the centred FFT's zero frequency whatever the partial-Fourier
  or asymmetric line numbering;
* sample ``s`` of a readout goes to row ``s + nx // 2 - center_sample`` (``nx`` the
  encoded matrix ``x``, readout oversampling included): an asymmetric echo leaves the
  rows it did not sample at zero, and they are marked unsampled (``rows_sampled``; the
  importer keeps them out of the operator's mask).  Readouts flagged ``ACQ_IS_REVERSE`` are
  flipped first; the ``discard_pre`` / ``discard_post`` samples are set to zero and unsampled;
* repeated readouts of one line are averaged when they differ only in the ``average``
  counter; of the other loop counters (``contrast``, ``phase``, ``repetition``, ``set``)
  the lowest index present is kept and the number of values dropped is reported (as for
  Siemens twix files); ``segment`` is part of the image and kept.

Readouts that are not imaging data are skipped and counted: noise measurements,
navigators, phase-correction, feedback, dummy scans, surface-coil correction and phase
stabilisation, and separate parallel-imaging calibration lines (``ACQ_IS_PARALLEL_
CALIBRATION`` without ``..._AND_IMAGING``: they may have another contrast or resolution).
Only Cartesian 2D encodings are read: a non-Cartesian trajectory, a second phase-encode
dimension (``kspace_encode_step_2``, 3D) or readouts of another encoding space are refused
in one sentence.

Geometry.  ISMRMRD gives each readout the slice centre ``position`` (mm) and the unit
vectors ``read_dir``, ``phase_dir``, ``slice_dir`` in the patient coordinate system (DICOM's
LPS).  Image rows (readout) run along ``read_dir`` and columns (phase encode) along
``phase_dir``, the centre pixel ``(nx // 2, ny // 2)`` at ``position``: the convention of
images reconstructed from ISMRMRD data (Gadgetron), not checked against scanner DICOM
images here (none in the shared data).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError
from medrecon.io.budget import array_bytes, require
from medrecon.io.hdf5 import open_hdf5, read_dataset

__all__ = ["find_ismrmrd_group", "read_ismrmrd", "SKIPPED_FLAGS"]

#: ISMRMRD acquisition flags (bit ``n - 1`` of ``head.flags``) of readouts that are not imaging data.
SKIPPED_FLAGS = {
    19: "noise",
    23: "navigator",
    24: "phase correction",
    26: "hp feedback",
    27: "dummy scan",
    28: "rt feedback",
    29: "surface-coil correction",
    30: "phase stabilisation reference",
    31: "phase stabilisation",
}
_PARALLEL_CALIBRATION = 20
_CALIBRATION_AND_IMAGING = 21
_REVERSE = 22
_KEPT_FIRST = ("contrast", "phase", "repetition", "set")


def _flag(flags: int, n: int) -> bool:
    return bool(int(flags) >> (n - 1) & 1)


def find_ismrmrd_group(f) -> str | None:
    """Name of the ISMRMRD dataset group of an open h5py file (``dataset`` first), or None."""
    names = ["dataset"] + [k for k in f.keys() if k != "dataset"]
    for name in names:
        g = f.get(name)
        d = g.get("data") if hasattr(g, "get") else None
        if d is not None and hasattr(d, "dtype") and d.dtype.names and {"head", "data"} <= set(d.dtype.names):
            return name
    return None


def _header(text: str, p: Path) -> dict[str, Any]:
    """Encoded matrix, trajectory and the phase-encode centre from the XML header."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FileFormatError(f"{str(p)!r}: the ISMRMRD XML header does not parse ({exc})") from exc
    pre = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""

    def find(path):
        return root.find("./" + "/".join(pre + part for part in path.split("/")))

    def num(path):
        e = find(path)
        try:
            return float(e.text) if e is not None else None
        except (TypeError, ValueError):
            return None

    traj = find("encoding/trajectory")
    out = {"trajectory": (traj.text or "").strip().lower() if traj is not None else "cartesian",
           "nx": num("encoding/encodedSpace/matrixSize/x"), "ny": num("encoding/encodedSpace/matrixSize/y"),
           "nz": num("encoding/encodedSpace/matrixSize/z"),
           "c1": num("encoding/encodingLimits/kspace_encoding_step_1/center"),
           "n_encodings": len(root.findall("./" + pre + "encoding"))}
    return out


def read_ismrmrd(p: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(k, info)``: k-space ``(slices, coils, readout, phase_encode)`` complex64 of an ISMRMRD
    HDF5 file, and what the importer needs from it (see the module docstring): ``info`` has
    ``header_xml`` (the XML text), ``slice_frames`` (per slice: ``position``, ``row_dir``,
    ``col_dir``, ``normal`` in LPS), ``rows_sampled`` (bool per readout row of the encoded
    grid: acquired by some readout), ``skipped`` (readouts not used, by kind) and ``dropped``
    (loop counters of which only the first index was kept)."""
    with open_hdf5(p) as f:  # no external links or storage; sizes checked against the memory budget
        group = find_ismrmrd_group(f)
        if group is None:
            raise FileFormatError(f"{str(p)!r} has no ISMRMRD acquisition dataset")
        g = f[group]
        if "xml" not in g:
            raise FileFormatError(f"{str(p)!r}: the ISMRMRD dataset {group!r} has no xml header")
        x = g["xml"][0]
        text = x.decode() if isinstance(x, bytes) else str(x)
        acqs = read_dataset(g, "data", p)
    hdr = _header(text, p)
    if hdr["trajectory"] != "cartesian":
        raise FileFormatError(f"{str(p)!r}: only Cartesian ISMRMRD data can be read, this is {hdr['trajectory']!r}")
    if not hdr["nx"] or not hdr["ny"]:
        raise FileFormatError(f"{str(p)!r}: the ISMRMRD header gives no encoded matrix size")
    nx, ny = int(hdr["nx"]), int(hdr["ny"])
    c1 = int(hdr["c1"]) if hdr["c1"] is not None else ny // 2
    head = acqs["head"]
    idx = head["idx"]
    flags = head["flags"].astype(np.uint64)
    skipped: dict[str, int] = defaultdict(int)
    use = np.ones(len(acqs), bool)
    for n, kind in SKIPPED_FLAGS.items():
        hit = np.array([_flag(v, n) for v in flags], bool)
        skipped[kind] += int((hit & use).sum())
        use &= ~hit
    calib_only = np.array([_flag(v, _PARALLEL_CALIBRATION) and not _flag(v, _CALIBRATION_AND_IMAGING)
                           for v in flags], bool)
    skipped["parallel calibration"] += int((calib_only & use).sum())
    use &= ~calib_only
    other_space = head["encoding_space_ref"] != 0
    skipped["other encoding space"] += int((other_space & use).sum())
    use &= ~other_space
    skipped = {k: v for k, v in skipped.items() if v}
    if not use.any():
        raise FileFormatError(f"{str(p)!r} holds no imaging readouts")
    if (hdr["nz"] or 1) > 1 or np.any(idx["kspace_encode_step_2"][use] != 0):
        raise FileFormatError(f"{str(p)!r}: 3D encodings (kspace_encode_step_2) are not supported; "
                              "only 2D (multi-slice) Cartesian data")
    dropped = {}
    for counter in _KEPT_FIRST:
        vals = idx[counter][use]
        if np.unique(vals).size > 1:
            dropped[counter] = int(np.unique(vals).size)
            use &= idx[counter] == vals.min()
    channels = np.unique(head["active_channels"][use])
    if channels.size != 1:
        raise FileFormatError(f"{str(p)!r}: readouts with different numbers of channels {channels.tolist()}")
    C = int(channels[0])
    slices = np.unique(idx["slice"][use])
    slot = {int(s): i for i, s in enumerate(slices)}
    require(array_bytes((len(slices), C, nx, ny), 16),  # the header's matrix size, not the file's size
            f"the k-space of {str(p)!r} ({len(slices)} slice(s) x {C} coil(s) x {nx} x {ny} complex128)")
    k = np.zeros((len(slices), C, nx, ny), np.complex128)
    hits = np.zeros((len(slices), ny), np.int64)
    rows = np.zeros(nx, bool)  # readout rows that hold acquired samples (an asymmetric echo leaves some out)
    frames: dict[int, dict[str, Any]] = {}
    for a in np.flatnonzero(use):
        h = head[a]
        ns = int(h["number_of_samples"])
        data = np.asarray(acqs["data"][a], np.float32)
        if data.size != 2 * C * ns:
            raise FileFormatError(f"{str(p)!r}: readout {a} holds {data.size} values for {C} channels x {ns} samples")
        d = data.view(np.complex64).reshape(C, ns).astype(np.complex128)
        pre_, post = int(h["discard_pre"]), int(h["discard_post"])
        if pre_ or post:  # counted in acquisition order, before a reversed readout is flipped
            d = d.copy()
            d[:, :pre_] = 0
            d[:, ns - post:] = 0
        lo, hi = pre_, ns - post  # the kept samples
        if _flag(h["flags"], _REVERSE):
            d = d[:, ::-1]
            lo, hi = post, ns - pre_
        r0 = nx // 2 - (int(h["center_sample"]) or ns // 2)  # centre 0: unset, a symmetric readout
        col = int(h["idx"]["kspace_encode_step_1"]) + ny // 2 - c1
        if r0 < 0 or r0 + ns > nx or not 0 <= col < ny:
            raise FileFormatError(f"{str(p)!r}: readout {a} (line {int(h['idx']['kspace_encode_step_1'])}, "
                                  f"{ns} samples, centre {int(h['center_sample'])}) falls outside the "
                                  f"encoded {nx} x {ny} matrix")
        z = slot[int(h["idx"]["slice"])]
        k[z, :, r0:r0 + ns, col] += d
        rows[r0 + lo:r0 + hi] = True
        hits[z, col] += 1
        if z not in frames:
            frames[z] = {"position": np.asarray(h["position"], np.float64),
                         "row_dir": np.asarray(h["read_dir"], np.float64),
                         "col_dir": np.asarray(h["phase_dir"], np.float64),
                         "normal": np.asarray(h["slice_dir"], np.float64)}
    k /= np.maximum(hits, 1)[:, None, None, :]  # averages of one line
    averages = int(hits.max())
    info: dict[str, Any] = {"header_xml": text, "skipped": skipped, "dropped": dropped, "averages": averages,
                            "rows_sampled": rows,
                            "group": group, "slice_frames": [frames[z] for z in range(len(slices))]}
    return k.astype(np.complex64), info
