"""Training data for priors: slice stacks (.npy + .json sidecar) and slices from volumes.

A *slice stack* is ``X.npy``, a float16 array (N, S, S) in physical units (HU for CT), with
a sidecar ``X.json``::

    {"format": "medrecon-slices", "modality": "ct"|"mr"|"us", "pixel_size_mm": 2.148,
     "shape": [N, S, S], "dtype": "float16",
     "intensity": {"kind": "window", "lo": -1000, "hi": 2000}            (CT)
               | {"kind": "percentile", "p_lo": 0.5, "p_hi": 99.5,
                  "lo": [per slice], "hi": [per slice]},                 (MR: the volume's percentiles)
               | {"kind": "mulaw", "mu": 255, "p_scale": 99.9,
                  "lo": [-s per slice], "hi": [s per slice]},            (US: RF scale s, then mu-law)
     "source": ..., "z_indices": [...], "source_pixel_size_mm": [dy, dx], ...}

Reading a stack imports numpy and json only (no pydicom / nibabel, no scipy), so priors
train on a machine that has neither.  Volumes (DICOM / NIfTI) are read through
:func:`medrecon.load_volume`, imported only when a volume is given.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.datasets import sha256_file
from medrecon.errors import FileFormatError, InputError
from medrecon.io.atomic import write_bytes_atomic, write_text_atomic

STACK_FORMAT = "medrecon-slices"


@dataclass
class SliceStack:
    """Slices (N, S, S) float32 in physical units, with what is needed to map them to [-1, 1]."""

    data: np.ndarray
    modality: str
    pixel_size_mm: float
    lo: np.ndarray  # (N,) physical value mapped to -1
    hi: np.ndarray  # (N,) physical value mapped to +1
    meta: dict[str, Any] = field(default_factory=dict)

    def to_net(self) -> np.ndarray:
        """float32 (N, S, S) in the network range: 2 (x - lo)/(hi - lo) - 1 per slice, then the
        intensity kind's companding (:mod:`medrecon.priors.intensity`; e.g. the ultrasound
        plugin's mu-law; none for CT and MR)."""
        lo = self.lo.astype(np.float32)[:, None, None]
        hi = self.hi.astype(np.float32)[:, None, None]
        v = 2 * (self.data.astype(np.float32) - lo) / (hi - lo) - 1
        inten = self.meta.get("intensity") or {}
        if inten.get("kind"):
            from medrecon.priors.intensity import intensity_kind

            v = intensity_kind(inten["kind"]).compress(v, inten)
        return v.astype(np.float32)

    @property
    def size(self) -> int:
        return int(self.data.shape[-1])


def intensity_bounds(modality: str, data: np.ndarray, p_lo: float = 0.5, p_hi: float = 99.5):
    """(lo, hi, intensity dict) for a volume: CT the fixed HU window, MR the volume's percentiles,
    another modality the registered intensity kind that declares it (its ``default()`` section,
    bound to the data: the ultrasound plugin's mu-law with lo = -s, hi = s, s a percentile of |x|)."""
    from medrecon.priors.config import CT_WINDOW
    from medrecon.priors.intensity import default_intensity, intensity_kind

    if modality == "ct":
        lo, hi = CT_WINDOW
        return lo, hi, {"kind": "window", "lo": lo, "hi": hi}
    if modality == "mr":
        lo, hi = (float(v) for v in np.percentile(data.astype(np.float32), [p_lo, p_hi]))
        if not hi > lo:
            raise InputError(f"MR volume has no intensity range (p{p_lo} = p{p_hi} = {lo})")
        return lo, hi, {"kind": "percentile", "p_lo": p_lo, "p_hi": p_hi}
    inten = default_intensity(modality)
    if inten is None:
        raise InputError(f"unknown modality {modality!r}; use ct, mr or us")
    inten = {k: v for k, v in inten.items() if k != "units"}
    lo, hi = intensity_kind(inten["kind"]).bind(data, inten)
    return lo, hi, inten


def refuse_nonfinite(data: np.ndarray, what: str) -> None:
    """An :class:`InputError` naming ``what`` (the file or series) when slices ``data`` (N, ...)
    hold NaN or +-inf, with the number of such slices and the first one; nothing otherwise."""
    bad = ~np.isfinite(data.reshape(data.shape[0], -1)).all(axis=1) if data.size else np.zeros(0, bool)
    if bad.any():
        raise InputError(f"{what} holds NaN or infinite values in {int(bad.sum())} of {bad.size} slices "
                         f"(the first is slice {int(np.argmax(bad))}); fix or leave out that data before training")


def _check_bounds(lo: np.ndarray, hi: np.ndarray, where: str) -> None:
    """An :class:`InputError` unless every slice's intensity bounds are finite with hi > lo."""
    bad = ~(np.isfinite(lo) & np.isfinite(hi) & (hi > lo))
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(f"{where} gives slice {k} the intensity bounds lo = {lo[k]}, hi = {hi[k]}; "
                         "they must be finite with hi > lo")


def resample_slices(data: np.ndarray, pixel_yx, size: int, pixel_size_mm: float | None = None):
    """Resample slices (N, Y, X) onto an S x S grid; returns (float32 (N, S, S), pixel size mm).

    The target pixel size defaults to ``max(Y dy, X dx) / size`` (the whole field of view fits).
    Each axis is resampled by area averaging when shrinking (exact block means for integer
    factors, e.g. 512 at 1.074 mm -> 256 at 2.148 mm) and bilinear (antialiased) when
    enlarging; the result is centre-cropped or padded with the slice minimum to S x S.
    """
    import torch
    import torch.nn.functional as F

    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    n, ny, nx = data.shape
    dy, dx = (float(pixel_yx[0]), float(pixel_yx[1]))
    if pixel_size_mm is None:
        pixel_size_mm = max(ny * dy, nx * dx) / size
    my = max(1, int(round(ny * dy / pixel_size_mm)))
    mx = max(1, int(round(nx * dx / pixel_size_mm)))
    x = torch.from_numpy(data)[:, None]
    if (my, mx) != (ny, nx):
        if my <= ny and mx <= nx:
            x = F.interpolate(x, size=(my, mx), mode="area")
        else:
            x = F.interpolate(x, size=(my, mx), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, 0]
    out = torch.empty((n, size, size), dtype=torch.float32)
    out[:] = x.amin(dim=(1, 2), keepdim=True)
    # centre crop / pad
    sy0, dy0 = max(0, (my - size) // 2), max(0, (size - my) // 2)
    sx0, dx0 = max(0, (mx - size) // 2), max(0, (size - mx) // 2)
    hy, hx = min(my, size), min(mx, size)
    out[:, dy0:dy0 + hy, dx0:dx0 + hx] = x[:, sy0:sy0 + hy, sx0:sx0 + hx]
    return out.numpy(), float(pixel_size_mm)


def parse_block(spec: str | None, n: int) -> tuple[int, int] | None:
    """'a:b' -> (a, b) with 0 <= a < b <= n (Python slice semantics, negatives allowed)."""
    if spec in (None, ""):
        return None
    try:
        a_s, b_s = spec.split(":")
        a = int(a_s) if a_s else 0
        b = int(b_s) if b_s else n
    except ValueError as exc:
        raise InputError(f"holdout must look like a:b (e.g. 0:32), got {spec!r}") from exc
    a, b, _ = slice(a, b).indices(n)
    if not b > a:
        raise InputError(f"holdout {spec!r} selects no slices of {n}")
    return a, b


def stack_from_volume(path, size: int, modality: str | None = None, pixel_size_mm: float | None = None,
                      z: slice | None = None) -> SliceStack:
    """Axial slices of a DICOM / NIfTI volume (via :func:`medrecon.load_volume`) as a :class:`SliceStack`.

    MR percentiles are computed on the whole volume (before ``z`` is applied), so the training
    and held-out parts of one volume share the same normalisation.
    """
    from medrecon.io import load_volume

    vol = load_volume(path)
    mod = (modality or (vol.meta.get("modality") or "")).lower()
    if mod not in ("ct", "mr", "us"):
        raise InputError(f"cannot tell the modality of {str(path)!r}; pass modality='ct', 'mr' or 'us'")
    if modality and vol.meta.get("modality") and vol.meta["modality"].lower() != modality:
        raise InputError(f"{str(path)!r} is a {vol.meta['modality']} volume, not {modality.upper()}")
    data = np.asarray(vol.data, dtype=np.float32)
    uid = vol.meta.get("series_uid")
    refuse_nonfinite(data, f"volume {str(path)!r}" + (f" (series {uid})" if uid else ""))
    lo, hi, inten = intensity_bounds(mod, data)
    _, dy, dx = vol.spacing
    zsel = np.arange(data.shape[0])[z if z is not None else slice(None)]
    res, px = resample_slices(data[zsel], (dy, dx), size, pixel_size_mm)
    meta = {"source": str(path), "z_indices": [int(i) for i in zsel], "source_shape": list(data.shape),
            "source_pixel_size_mm": [float(dy), float(dx)], "intensity": inten,
            "series_uid": vol.meta.get("series_uid")}
    n = res.shape[0]
    return SliceStack(res, mod, px, np.full(n, lo, np.float64), np.full(n, hi, np.float64), meta)


def write_stack(stack: SliceStack, path) -> Path:
    """Write ``path`` (.npy, float16) and its ``.json`` sidecar; refuses values float16 cannot hold."""
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_suffix(".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    if np.abs(stack.data).max(initial=0) > 65000:
        raise InputError("slice values exceed the float16 range (65504); rescale before writing a stack")
    arr = stack.data.astype(np.float16)
    buf = io.BytesIO()
    np.save(buf, arr)
    blob = buf.getvalue()
    write_bytes_atomic(path, lambda f: f.write(blob))
    inten = dict(stack.meta.get("intensity", {}))
    if stack.modality in ("mr", "us"):
        inten.update({"lo": [float(v) for v in stack.lo], "hi": [float(v) for v in stack.hi]})
    else:
        inten.update({"kind": "window", "lo": float(stack.lo[0]), "hi": float(stack.hi[0])})
    # what describes the written array comes last: a stack read from a file (a subset, say)
    # carries its source's shape, dtype and digest in its meta
    side = {**{k: v for k, v in stack.meta.items() if k != "intensity"},
            "format": STACK_FORMAT, "modality": stack.modality, "pixel_size_mm": stack.pixel_size_mm,
            "shape": list(arr.shape), "dtype": "float16", "units": "HU" if stack.modality == "ct" else "arbitrary",
            "intensity": inten, "sha256": hashlib.sha256(blob).hexdigest()}
    write_text_atomic(path.with_suffix(".json"), json.dumps(side, indent=1) + "\n")
    return path


def read_stack(path) -> SliceStack:
    """Read ``X.npy`` + ``X.json`` (see the module docstring)."""
    path = Path(path)
    side_path = path.with_suffix(".json")
    if not path.is_file():
        raise FileFormatError(f"slice stack {str(path)!r} does not exist")
    if not side_path.is_file():
        raise FileFormatError(f"slice stack {str(path)!r} has no sidecar {side_path.name!r}")
    try:
        side = json.loads(side_path.read_text())
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"sidecar {str(side_path)!r} is not valid JSON ({exc.msg})") from exc
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise FileFormatError(f"{str(path)!r} is not a readable .npy array ({exc})") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise FileFormatError(f"slice stack {str(path)!r} must be shaped (N, S, S), got {arr.shape}")
    refuse_nonfinite(arr, f"slice stack {str(path)!r}")
    mod = side.get("modality")
    if mod not in ("ct", "mr", "us"):
        raise FileFormatError(f"sidecar {str(side_path)!r} has no valid 'modality' (ct, mr or us)")
    if not side.get("pixel_size_mm"):
        raise FileFormatError(f"sidecar {str(side_path)!r} has no 'pixel_size_mm'")
    n = arr.shape[0]
    inten = side.get("intensity", {})
    if mod == "ct":
        from medrecon.priors.model import CT_WINDOW

        lo = np.full(n, float(inten.get("lo", CT_WINDOW[0])))
        hi = np.full(n, float(inten.get("hi", CT_WINDOW[1])))
    else:
        lo_v, hi_v = inten.get("lo"), inten.get("hi")
        if lo_v is None or hi_v is None:
            raise FileFormatError(f"{mod.upper()} sidecar {str(side_path)!r} lacks the per-slice intensity.lo/hi")
        lo = np.broadcast_to(np.asarray(lo_v, dtype=np.float64), (n,)).copy()
        hi = np.broadcast_to(np.asarray(hi_v, dtype=np.float64), (n,)).copy()
    _check_bounds(lo, hi, f"sidecar {str(side_path)!r}")
    meta = dict(side)
    meta["path"] = str(path)
    return SliceStack(arr.astype(np.float32), mod, float(side["pixel_size_mm"]), lo, hi, meta)


def resize_stack(stack: SliceStack, size: int) -> SliceStack:
    """The same field of view on an S x S grid (area averaging when shrinking)."""
    if stack.size == size:
        return stack
    px = stack.pixel_size_mm * stack.size / size
    data, _ = resample_slices(stack.data, (stack.pixel_size_mm, stack.pixel_size_mm), size, px)
    return SliceStack(data, stack.modality, px, stack.lo, stack.hi, dict(stack.meta))


def is_stack(path) -> bool:
    return str(path).endswith(".npy")


def read_manifest(path) -> list[str]:
    """Paths listed in a manifest: JSON (a list, or {"data": [...]}/{"train": [...]}) or one path a line.

    Relative paths are relative to the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"manifest {str(path)!r} does not exist")
    text = path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        if isinstance(obj, dict):
            obj = obj.get("train", obj.get("data"))
        if not isinstance(obj, list):
            raise FileFormatError(f"manifest {str(path)!r} must list paths (a JSON list or one path a line)")
        items = [str(o["path"] if isinstance(o, dict) else o) for o in obj]
    return [str((path.parent / i) if not Path(i).is_absolute() else Path(i)) for i in items]


def load_sources(paths, size: int | None, modality: str | None) -> tuple[SliceStack, list[dict]]:
    """Concatenate the slices of several stacks / volumes at one size; returns (stack, provenance)."""
    stacks, prov = [], []
    for p in paths:
        if is_stack(p):
            st = read_stack(p)
            if size is not None and st.size != size:
                st = resize_stack(st, size)
        else:
            if size is None:
                raise InputError("--size is needed when training from DICOM / NIfTI volumes")
            st = stack_from_volume(p, size, modality)
        if modality is not None and st.modality != modality:
            raise InputError(f"{str(p)!r} holds {st.modality.upper()} slices but --modality is {modality}")
        stacks.append(st)
        pp = Path(p)
        prov.append({"path": str(p), "slices": int(st.data.shape[0]), "pixel_size_mm": st.pixel_size_mm,
                     "sha256": sha256_file(pp) if pp.is_file() else st.meta.get("series_uid")})
    if not stacks:
        raise InputError("no training data given (use --data PATH or --manifest FILE)")
    sizes = {s.size for s in stacks}
    if len(sizes) > 1:
        raise InputError(f"slice stacks have different sizes {sorted(sizes)}; pass --size")
    pxs = [s.pixel_size_mm for s in stacks]
    if max(pxs) / min(pxs) > 1.25:
        import warnings

        warnings.warn(f"training data mix pixel sizes {min(pxs):.3g}..{max(pxs):.3g} mm", stacklevel=2)
    mods = {s.modality for s in stacks}
    if len(mods) > 1:
        raise InputError(f"training data mix {' and '.join(sorted(m.upper() for m in mods))} slices; "
                         "train one prior per modality")
    kinds = {json.dumps({k: v for k, v in (s.meta.get("intensity") or {}).items() if k in ("kind", "mu")},
                        sort_keys=True) for s in stacks if stacks[0].modality == "us"}
    if len(kinds) > 1:
        raise InputError("ultrasound slice stacks use different intensity transforms; train on one kind")
    inten = {k: v for k, v in (stacks[0].meta.get("intensity") or {}).items() if k not in ("lo", "hi")}
    out = SliceStack(np.concatenate([s.data for s in stacks]), stacks[0].modality, float(np.mean(pxs)),
                     np.concatenate([s.lo for s in stacks]), np.concatenate([s.hi for s in stacks]),
                     {"sources": prov, "intensity": inten})
    return out, prov
