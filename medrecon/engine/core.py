"""The reconstruction engine: batching, devices, seeding, checkpoints, progress.

``reconstruct(measurement, sampler, prior, ...)`` is the public entry point (also
``medrecon.reconstruct``).  See ``docs/engine.md`` for the full story; in short:

* **Batching.**  For a 2D (per-slice) sampler and operator, the slices of ``y``
  (axis 0) that are not done yet are cut into batches of ``batch_size`` slices;
  each batch is one ``sampler.sample`` call.  Only one batch per worker is on a
  device at a time, so peak device memory is set by the batch size, not by the
  number of slices.  A volume sampler (``sampler.per_slice`` false, e.g. ``tv`` with
  ``dims=3``) or a 3D operator gets the whole volume in one call.
* **Seeding.**  Slice ``k`` gets its own CPU generator seeded from ``(seed, k)``
  (:func:`medrecon.samplers.slice_generators`, numpy ``SeedSequence([seed, k])``), and
  samplers draw every random number of a slice from its generator.  A slice's result
  therefore does not depend on the batch size, on the batch it lands in, on the
  number of devices, or on being resumed.
* **Devices.**  ``devices=[...]`` starts one worker thread per entry (each with its
  own copy of the operator and prior on its device); workers take batches from a
  shared queue.  Several ``"cpu"`` entries give several CPU workers.
* **Checkpoints.**  With ``output`` given, every finished slice is written to
  ``OUT.partial/slice_NNNNN.npy`` (atomically) next to a ``state.json`` holding a hash
  of the settings that determine the result.  ``resume=True`` reloads the finished
  slices and computes only the rest; different settings are refused.  The folder
  is removed once the output is written.
* **Slice-varying operators.**  An operator whose parameters differ per slice
  (``slice_varying``, e.g. ``mri.sense`` with per-slice coil maps) is the operator for all
  ``Z`` slices of the measurement; every application to a subset goes through
  ``op.for_slices(indices)``: each batch, the intensity binding pass, the classical path
  (a sampler like any other), and the whole volume for volume samplers
  (``op.for_slices(range(Z))``).  Every other operator returns itself from ``for_slices``.
* **Components.**  An operator whose image has several components (``component_names``,
  e.g. ``us.haze``: tissue and haze, domain ``(2, Y, X)`` per slice) gives one volume per
  component: the first is the result (written to ``OUT``), each further one is
  ``result.components[name]`` and is written next to it with ``.name`` inserted before the
  extension (``out.nii.gz`` -> ``out.haze.nii.gz``; a DICOM folder ``out/`` -> ``out.haze/``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError, MedreconError, positive_int

log = logging.getLogger("medrecon")

__all__ = ["reconstruct", "load_input", "part_slices", "RunStopped", "PriorMismatchWarning", "run_settings",
           "check_volume_geometry", "component_names", "component_path"]

ENGINE_VERSION = 1


class RunStopped(MedreconError):
    """The run stopped early as asked (``_stop_after``); its checkpoints are kept for ``resume``."""


class PriorMismatchWarning(UserWarning):
    """The measurement's grid or pixel size is far from what the prior was trained on."""


# ============================================================================ inputs
def load_input(path: str | os.PathLike, **options: Any):
    """Read a measurement file, or a raw file that an installed importer recognises.

    Importers are entry points of the group ``medrecon.importers``: a class (or object)
    with ``can_read(path) -> bool`` and ``read(path, **options) -> Measurement``.
    ``options`` go to the importer (ignored for measurement files).
    """
    from medrecon.measurement import is_measurement_file, load_measurement

    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"no such file or folder: {str(p)!r}")
    if p.is_file() and is_measurement_file(p):
        return load_measurement(p)
    tried = []
    for imp_name, imp in _importers():
        tried.append(imp_name)
        try:
            ok = bool(imp.can_read(p))
        except Exception:  # noqa: BLE001 - a third-party probe must not break the others
            ok = False
        if ok:
            return _measurement_from_import(imp_name, imp.read(p, **options), p)
    if p.suffix.lower() in (".h5", ".hdf5") or _is_hdf5(p):
        known = f" (installed importers: {', '.join(tried)})" if tried else " (no importers are installed)"
        raise FileFormatError(
            f"{str(p)!r} is an HDF5 file but neither a medrecon measurement nor a raw format an importer reads{known}")
    raise FileFormatError(
        f"{str(p)!r} is not a medrecon measurement file and no installed importer reads it"
        + (f" (installed importers: {', '.join(tried)})" if tried else ""))


def _measurement_from_import(name: str, got, path: Path):
    """An importer returns a Measurement, or ``(y, operator, meta)`` which is wrapped into one.

    For the tuple form, the volume is ``(B, *operator.domain_shape)`` with B = ``y.shape[0]``,
    the affine is diagonal with the operator's ``pixel_size`` (or ``meta["pixel_size_mm"]``,
    default 1 mm) in-plane and between slices, and ``meta`` becomes the provenance.
    """
    from medrecon.measurement import Measurement

    if isinstance(got, Measurement):
        return got
    if not (isinstance(got, tuple) and len(got) == 3):
        raise MedreconError(f"importer {name!r} returned {type(got).__name__}, not a Measurement "
                            "or (y, operator, meta)")
    y, op, meta = got
    meta = dict(meta or {})
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    if y.ndim == len(op.range_shape):
        y = y[None]
    ps = meta.get("pixel_size_mm") or op.params.get("pixel_size") or 1.0
    ps = float(ps)
    prov = {"source": str(path), "importer": name, **meta}
    return Measurement(y=y, operator_spec=op.spec(), noise_std=float(meta.get("noise_std", 0.0) or 0.0),
                       volume_shape=(int(y.shape[0]), *tuple(op.domain_shape)), affine=np.diag([ps, ps, ps, 1.0]),
                       units=meta.get("image_units"), provenance=prov, reference_meta=None)


def _is_hdf5(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _importers():
    from medrecon import registry
    from medrecon.errors import PluginError

    for info in registry.discover("medrecon.importers"):
        try:
            obj = info.load()
            inst = obj() if isinstance(obj, type) else obj
        except (PluginError, Exception) as exc:  # noqa: BLE001
            warnings.warn(f"importer {info.name!r} is broken and was skipped ({exc})", stacklevel=3)
            continue
        yield info.name, inst


def _as_measurement(measurement):
    from medrecon.measurement import Measurement

    if isinstance(measurement, Measurement):
        return measurement
    if isinstance(measurement, (str, os.PathLike)):
        return load_input(measurement)
    raise InputError(f"reconstruct needs a Measurement or a path to a measurement file, got "
                     f"{type(measurement).__name__}")


def _as_sampler(sampler, params: dict[str, Any] | None, m):
    from medrecon.samplers import Sampler, get_sampler, sampler_class

    if isinstance(sampler, Sampler):
        if params:
            raise InputError("params= applies to a sampler given by name; build the Sampler with them instead")
        return sampler
    if not isinstance(sampler, str):
        raise InputError(f"sampler must be a name or a Sampler, got {type(sampler).__name__}")
    params = dict(params or {})
    cls = sampler_class(sampler)
    # samplers that model the noise take its level from the measurement unless told otherwise
    if "noise_std" in getattr(cls, "params", {}) and "noise_std" not in params:
        params["noise_std"] = float(m.noise_std)
    return get_sampler(sampler, **params)


def _with_recommended(smp, prior, steps, params, m):
    """The sampler (and step count) with the settings ``prior`` recommends for it
    (:mod:`medrecon.priors.recommended`): only parameters the caller did not set, and the
    prior's step count only when the caller gave none.  Returns ``(sampler, steps, rec)``."""
    from medrecon.priors.recommended import resolve

    cfg = getattr(prior, "config", None)
    if not isinstance(cfg, dict) or not cfg.get("recommended"):
        return smp, steps, None
    rec = resolve(cfg, type(smp), steps, dict(params or {}), (m.operator_spec or {}).get("name"),
                  getattr(prior, "num_timesteps", None))
    if rec is None:
        return smp, steps, None
    if rec.params:
        try:
            smp = type(smp)(**{**smp.param_values, **rec.params})
        except InputError as exc:
            raise FileFormatError(f"the prior's recommended settings for {smp.name!r} are not valid: {exc}") from None
    return smp, (rec.steps if rec.steps is not None else steps), rec


def _as_prior(prior, sampler):
    if prior is None:
        if sampler.needs_prior:
            raise InputError(
                f"sampler {sampler.name!r} needs a diffusion prior; pass prior= (--prior NAME|PATH), "
                "e.g. ct-default or mr-default")
        return None, None
    if isinstance(prior, (str, os.PathLike)):
        from medrecon.priors.model import load_prior

        return load_prior(prior), str(prior)
    return prior, getattr(prior, "name", None) or type(prior).__name__


# ============================================================================ settings hash
def _hash_array(h, arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    if arr.ndim == 0 or arr.shape[0] == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return
    for k in range(arr.shape[0]):  # slice by slice: no full copy of a large y
        h.update(np.ascontiguousarray(arr[k]).tobytes())


def _measurement_hash(m) -> str:
    h = hashlib.sha256()
    _hash_array(h, m.y)
    h.update(json.dumps([float(m.noise_std), list(m.volume_shape), np.asarray(m.affine).tolist(), m.units],
                        sort_keys=True).encode())
    return h.hexdigest()


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).contiguous().numpy().tobytes()


def _prior_fingerprint(prior) -> str | None:
    """SHA-256 (16 hex digits) of what determines a prior's output: config / weights / tensors."""
    import torch

    if prior is None:
        return None
    h = hashlib.sha256(type(prior).__qualname__.encode())
    cfg = getattr(prior, "config", None)
    if isinstance(cfg, dict):  # what it recommends to samplers does not change its output
        h.update(json.dumps({k: v for k, v in cfg.items() if k != "recommended"}, sort_keys=True,
                            default=str).encode())
    sha = cfg.get("weights", {}).get("sha256") if isinstance(cfg, dict) else None
    if isinstance(prior, torch.nn.Module):
        if not sha:
            for k, v in sorted(prior.state_dict().items()):
                h.update(k.encode())
                h.update(_tensor_bytes(v))
    else:
        for k, v in sorted(vars(prior).items()):
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(_tensor_bytes(v))
            elif isinstance(v, (int, float, str, bool, tuple, list, type(None))):
                h.update(f"{k}={v!r}".encode())
    for attr in ("_lo", "_hi"):
        v = getattr(prior, attr, None)
        if v is not None:
            h.update(f"{attr}={v.tolist() if hasattr(v, 'tolist') else v!r}".encode())
    return h.hexdigest()[:16]


def run_settings(m, sampler, prior, steps, seed, amp) -> dict[str, Any]:
    """The settings that determine a reconstruction's result (hashed for checkpoints)."""
    return {
        "engine_version": ENGINE_VERSION,
        "measurement_sha256": _measurement_hash(m),
        "operator": m.operator_spec,
        "sampler": sampler.spec(),
        "prior": _prior_fingerprint(prior),
        "steps": steps,
        "seed": int(seed),
        "amp": bool(amp),
    }


def _settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


# ============================================================================ components
def component_names(op) -> tuple[str, ...]:
    """The names of an operator's image components (``op.component_names``), or ``()`` for a
    plain image.  A component operator's domain is ``(n_components, *image_shape)``."""
    names = tuple(str(n) for n in (getattr(op, "component_names", None) or ()))
    if names and (len(op.domain_shape) < 2 or op.domain_shape[0] != len(names)):
        raise MedreconError(f"operator {op.name!r} names {len(names)} components but its image is shaped "
                            f"{tuple(op.domain_shape)}")
    return names


def component_path(output: str | os.PathLike, name: str) -> Path:
    """Where component ``name`` of a result written to ``output`` goes: ``.name`` inserted before the
    extension (``out.nii.gz`` -> ``out.haze.nii.gz``, ``out.nii`` -> ``out.haze.nii``), or a sibling
    folder ``out.haze`` for a DICOM folder ``out``/``out/``."""
    p = Path(os.fspath(output).rstrip("/\\"))
    low = p.name.lower()
    for ext in (".nii.gz", ".nii"):
        if low.endswith(ext):
            return p.with_name(p.name[: -len(ext)] + f".{name}" + p.name[-len(ext):])
    return p.with_name(p.name + f".{name}")


def _image_shape(op) -> tuple[int, ...]:
    """The shape of one component image (the domain without its component axis)."""
    dshape = tuple(op.domain_shape)
    return dshape[1:] if component_names(op) else dshape


# ============================================================================ checks
def _check_measurement(m, op, volume_mode_3d: bool) -> None:
    y = m.y
    if y.dtype.kind == "c":
        finite = np.all(np.isfinite(y.real)) and np.all(np.isfinite(y.imag))
    else:
        finite = np.all(np.isfinite(y))
    if not finite:
        raise InputError("the measurement y holds NaN or infinite values; fix or re-import the data")
    rshape, dshape = tuple(op.range_shape), _image_shape(op)
    vshape = tuple(m.volume_shape)
    if volume_mode_3d:
        if tuple(y.shape) not in (rshape, (1, *rshape)):
            raise InputError(f"the measurement y is shaped {tuple(y.shape)} but operator "
                             f"{op.name!r} measures {rshape}")
        if vshape and dshape != vshape:
            raise InputError(f"operator {op.name!r} reconstructs {dshape}, but the measurement's volume is {vshape}")
        return
    if tuple(y.shape[1:]) != rshape:
        raise InputError(f"the measurement y is shaped {tuple(y.shape)}, but operator {op.name!r} measures "
                         f"slices shaped {rshape}")
    if getattr(op, "slice_varying", False) and op.n_slices != y.shape[0]:
        raise InputError(f"operator {op.name!r} holds per-slice parameters for {op.n_slices} slice(s), but the "
                         f"measurement has {y.shape[0]} slices of y")
    if len(vshape) == 3:
        if vshape[0] != y.shape[0]:
            raise InputError(f"the measurement has {y.shape[0]} slices of y but its volume has {vshape[0]} slices")
        if tuple(vshape[1:]) != dshape:
            raise InputError(f"operator {op.name!r} reconstructs slices shaped {dshape}, but the measurement's "
                             f"volume slices are {tuple(vshape[1:])}")


def _pixel_size(m) -> float | None:
    """The measurement's in-plane pixel size in mm (geometric mean of the two axes), or None."""
    aff = np.asarray(m.affine, dtype=np.float64)
    dx, dy = float(np.linalg.norm(aff[:3, 0])), float(np.linalg.norm(aff[:3, 1]))
    return math.sqrt(dx * dy) if dx > 0 and dy > 0 else None


def check_prior_fit(prior, m, op, rescaled: bool = False) -> list[str]:
    """Warn (:class:`PriorMismatchWarning`) when the grid or pixel size is far from the prior's training.

    Pixel size: more than 25% off the config's ``pixel_size_mm`` (not when the prior is
    ``rescaled`` to the data's finer grid).  Grid: the slice is more
    than 2x larger or smaller than the config's ``image_size`` (skipped for priors trained on
    patches, ``training.patch``, which apply to any larger grid by design).
    Returns the warning sentences.
    """
    cfg = getattr(prior, "config", None)
    if not isinstance(cfg, dict):
        return []
    msgs = []
    dshape = tuple(op.domain_shape)[-2:]
    px = _pixel_size(m)
    train_px = cfg.get("pixel_size_mm")
    if rescaled:
        return msgs
    if px and train_px and abs(math.log(px / float(train_px))) > math.log1p(0.25):
        msgs.append(f"pixel size {px:.3g} mm is far from the prior's training pixel size {float(train_px):.3g} mm; "
                    "resample the data or expect a weaker prior")
    size = cfg.get("image_size")
    training = cfg.get("training") or {}
    patch = (training.get("patch") or training.get("patch_size")) if isinstance(training, dict) else None
    if size and not patch and len(dshape) == 2:
        big, small = max(dshape), min(dshape)
        if big > 2 * int(size) or small < int(size) / 2:
            msgs.append(f"the image grid {dshape[0]}x{dshape[1]} is far from the {size}x{size} slices the prior "
                        "was trained on; a convolutional prior still applies, but check the pixel size")
    for msg in msgs:
        warnings.warn(msg, PriorMismatchWarning, stacklevel=3)
    return msgs


def _guess_modality(m) -> str | None:
    ref = m.reference_meta or {}
    if ref.get("modality"):
        return ref["modality"]
    name = str(m.operator_spec.get("name", ""))
    prefix = name.split(".", 1)[0].lower()
    return {"ct": "CT", "mri": "MR", "mr": "MR", "us": "US", "ultrasound": "US"}.get(prefix)


# ============================================================================ parts
def part_slices(n_slices: int, num_parts: int, part_id: int) -> range:
    """The slices of part ``part_id`` of ``num_parts``: contiguous blocks whose sizes differ by
    at most one, larger blocks first (as ``numpy.array_split``).  10 slices in 3 parts:
    ``range(0, 4)``, ``range(4, 7)``, ``range(7, 10)``."""
    base, extra = divmod(int(n_slices), int(num_parts))
    start = part_id * base + min(part_id, extra)
    return range(start, start + base + (1 if part_id < extra else 0))


def _check_parts(num_parts, part_id, output) -> tuple[int, int]:
    n = positive_int("num_parts", num_parts)
    try:
        k = int(part_id)
    except (TypeError, ValueError):
        k = None
    if k is None or k != part_id or not 0 <= k < n:
        raise InputError(f"part_id must be in 0..{n - 1} for num_parts={n}, got {part_id!r}")
    if n > 1 and output is None:
        raise InputError("a run split into parts needs output= (the parts meet in its .partial folder)")
    return n, k


# ============================================================================ devices and workers
def _resolve_devices(device, devices) -> list:
    from medrecon.devices import resolve_device

    if devices is None:
        names = [device]
    elif isinstance(devices, str):
        names = [d.strip() for d in devices.split(",") if d.strip()]
    else:
        names = list(devices)
    if not names:
        raise InputError("devices= is empty; name at least one device (cpu, cuda, cuda:N)")
    return [resolve_device(str(n)) for n in names]


def _prior_copy(prior, dev, amp: bool, share: bool):
    """The prior for one worker: its own copy on ``dev`` (the original is never modified)."""
    import torch

    from medrecon.priors.rescaled import RescaledPrior

    if prior is None:
        return None
    if isinstance(prior, RescaledPrior):  # the wrapped prior is what holds weights and settings
        return RescaledPrior(_prior_copy(prior.base, dev, amp, _same_device(prior.base, dev)), prior.factor)
    if isinstance(prior, torch.nn.Module):
        p = copy.copy(prior) if share else copy.deepcopy(prior)
        if not share:
            p = p.to(dev)
    else:
        p = copy.copy(prior) if share else copy.deepcopy(prior)
    if hasattr(p, "autocast"):
        p.autocast = bool(amp)
    return p


def _same_device(obj, dev) -> bool:
    d = getattr(obj, "device", None)
    if d is None:
        import torch

        if isinstance(obj, torch.nn.Module):
            t = next(iter(list(obj.parameters()) + list(obj.buffers())), None)
            d = t.device if t is not None else None
    if d is None:
        return dev.type == "cpu"
    return str(d) == str(dev) or (d.type == dev.type == "cpu")


class _Worker:
    def __init__(self, index: int, dev, op, prior):
        self.index, self.dev, self.op, self.prior = index, dev, op, prior


def _make_workers(devs, op, prior, amp: bool) -> list[_Worker]:
    workers = []
    for i, dev in enumerate(devs):
        if i == 0:
            w_op = op.to(dev)
            share = _same_device(prior, dev) if prior is not None else True
        else:
            w_op = copy.deepcopy(op).to(dev)
            share = False
        workers.append(_Worker(i, dev, w_op, _prior_copy(prior, dev, amp, share)))
    return workers


# ============================================================================ progress
class _Progress:
    """Rich progress bars on stderr (slices overall, steps per worker), or a user callback."""

    def __init__(self, mode, total_slices: int, done: int, n_workers: int, label: str):
        self.cb: Callable[[int, int], None] | None = mode if callable(mode) else None
        self.total = total_slices
        self.done = done
        self.lock = threading.Lock()
        self.rich = None
        if mode is True:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
            self.slice_task = self.rich.add_task(f"{label} slices", total=total_slices, completed=done)
            self.step_tasks = [self.rich.add_task(f"  worker {i} steps" if n_workers > 1 else "  steps",
                                                  total=1, completed=0) for i in range(n_workers)]

    def __enter__(self):
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.stop()

    def step_callback(self, worker: int):
        if self.rich is None:
            return None
        task = self.step_tasks[worker]

        def cb(done: int, total: int) -> None:
            self.rich.update(task, completed=int(done), total=max(int(total), 1))

        return cb

    def slices_done(self, n: int) -> None:
        with self.lock:
            self.done += n
            done = self.done
        if self.rich is not None:
            self.rich.update(self.slice_task, completed=done)
        if self.cb is not None:
            self.cb(done, self.total)


# ============================================================================ the engine
def _to_image(x, what: str) -> np.ndarray:
    import torch

    if not isinstance(x, torch.Tensor):
        raise MedreconError(f"the sampler returned {type(x).__name__}, not a torch.Tensor")
    x = x.detach()
    if x.is_complex():
        x = x.abs()
    out = x.to("cpu", torch.float32).numpy()
    if not np.all(np.isfinite(out)):
        raise MedreconError(f"the sampler produced NaN or infinite values for {what}; lower its step size or "
                            "check the measurement's scale")
    return out


_TUNING_LOCK = threading.Lock()


def _run_batch(w: _Worker, sampler, m, idx: list[int], steps, seed: int, cb, samples: int = 1,
               antithetic: bool = False, draw_batch: int = 1, records: dict | None = None) -> np.ndarray:
    """The slices ``idx`` reconstructed on worker ``w``: ``(B, *image)``; with ``samples`` > 1,
    ``samples`` draws per slice (streams ``(seed, k, d)``, draw 0 the plain one; ``antithetic``:
    draw ``d`` uses stream ``d // 2``, negated for odd ``d``) summarised as ``(B, 2, *image)``:
    their mean and standard deviation (Welford).

    ``draw_batch`` draws run together in one sampler call: the batch holds the slices ``idx``
    once per draw (``len(idx) * draw_batch`` images), each copy with its draw's generator.
    The samplers treat batch entries independently (per-slice norms, step sizes and streams),
    so the result is the one of the draws run one after another, up to rounding.

    ``records``: where a sampler that chose its weight per slice
    (:mod:`medrecon.samplers.autotune`) leaves its choices (``records["auto_tuned"]``) and the
    prior-fit scores go (``records["prior_fit"]``, :mod:`medrecon.engine.prior_fit`), by slice index."""
    import torch

    from medrecon.samplers import slice_generators
    from medrecon.samplers.autotune import pop_last_tuning

    y = torch.from_numpy(np.ascontiguousarray(m.y[idx])).to(w.dev)
    what = f"slices {idx[0]}..{idx[-1]}" if len(idx) > 1 else f"slice {idx[0]}"
    B, image = len(idx), tuple(w.op.domain_shape)
    g = max(1, min(int(draw_batch), samples))
    groups = [list(range(d0, min(d0 + g, samples))) for d0 in range(0, samples, g)]
    ops = {n: w.op.for_slices(idx * n) for n in {len(ds) for ds in groups}}
    mean = m2 = None
    n_done = 0
    for j, ds in enumerate(groups):
        gcb = cb if cb is None or len(groups) == 1 else (
            lambda done, total, j=j: cb(j * total + done, len(groups) * total))
        gens = []
        for d in ds:
            gens += slice_generators(seed, idx, d // 2, antithetic=d % 2 == 1) if antithetic else \
                slice_generators(seed, idx, d)
        yy = y if len(ds) == 1 else y.repeat(len(ds), *([1] * (y.dim() - 1)))
        pop_last_tuning()
        x = sampler.sample(yy, ops[len(ds)], w.prior, steps=steps, generators=gens, progress=gcb)
        rec = pop_last_tuning()
        if rec is not None and records is not None and j == 0:
            with _TUNING_LOCK:
                tuning = records.setdefault("auto_tuned", {})
                tuning.setdefault("param", rec["param"])
                tuning.setdefault("method", rec["method"])
                tuning.setdefault("values", {}).update({str(k): rec["values"][i] for i, k in enumerate(idx)})
        if j == 0 and records is not None and "prior_fit" in records:
            from medrecon.engine.prior_fit import score_batch

            score_batch(w.prior, y, ops[1] if 1 in ops else w.op.for_slices(idx), idx, records["prior_fit"])
        out = _to_image(x, what)
        if out.shape != (len(ds) * B, *image):
            raise MedreconError(f"sampler {sampler.name!r} returned shape {out.shape}, expected "
                                f"{(len(ds) * B, *image)}")
        if samples == 1:
            return out
        for draw in out.astype(np.float64).reshape(len(ds), B, *image):
            n_done += 1
            if mean is None:
                mean, m2 = draw, np.zeros_like(draw)
            else:
                delta = draw - mean
                mean = mean + delta / n_done
                m2 = m2 + delta * (draw - mean)
    # antithetic pairs: their mean is nearly exact (no degree of freedom spent on it), so the
    # spread about it is divided by N, which is unbiased where the sampler is linear in its noise
    std = np.sqrt(m2 / (samples if antithetic else samples - 1))
    return np.stack([mean, std], axis=1).astype(np.float32)


def reconstruct(
    measurement,
    sampler: Any = "dds",
    prior: Any = None,
    *,
    steps: int | None = None,
    params: dict[str, Any] | None = None,
    device: str = "cpu",
    devices: Sequence[str] | str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    amp: bool = False,
    output: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | Callable[[int, int], None] = True,
    overwrite: bool = False,
    like: Any = None,
    checkpoint_every_s: float = 60.0,
    num_parts: int = 1,
    part_id: int = 0,
    samples: int = 1,
    antithetic: bool = False,
    draw_batch: int = 1,
    recommended: bool = True,
    prior_scale: str = "auto",
    _stop_after: int | None = None,
    _stop_after_steps: int | None = None,
):
    """Reconstruct a volume from a measurement with a sampler (and a diffusion prior).

    Parameters
    ----------
    measurement : Measurement or path
        A :class:`medrecon.Measurement`, a measurement file (``.h5``), or a raw file an
        installed importer reads.  ``y`` holds one measured slice per row of axis 0.
    sampler : str or Sampler
        ``"dds"`` (default), ``"dps"``, ``"reddiff"``, ``"tv"``, ``"classical"`` or any
        registered sampler; ``params`` are its keyword parameters.
    prior : DiffusionPrior, name or folder, optional
        Needed by the diffusion samplers (``ct-default``, ``mr-default``, a folder, or
        any object meeting :class:`~medrecon.priors.protocol.PriorProtocol`).  An MR
        prior whose intensity map uses the volume's percentiles is bound to the
        percentiles of the whole volume's classical reconstruction (not per batch).
    steps : int, optional
        Sampler steps (default: the sampler's own).
    device, devices : str, list of str
        One device (``cpu``, ``cuda``, ``cuda:N``) or several: one worker per entry
        sharing the batches (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``).
    batch_size : int
        Slices per sampler call; sets the peak memory.  The result does not depend on it.
    seed : int
        Slice ``k`` is sampled with a generator seeded from ``(seed, k)``.
    amp : bool
        bf16 autocast of the prior network on CUDA (the prior's ``autocast``); operators and
        data consistency stay in float32.  No effect on the CPU.
    output : path, optional
        Write the result atomically: ``.nii`` / ``.nii.gz`` or a DICOM folder (a derived
        series of the source series recorded in the measurement, or of ``like``).  Finished
        slices are checkpointed in ``OUT.partial/`` meanwhile.
    resume : bool
        Continue a killed run from ``OUT.partial/`` (same settings required).
    progress : bool or callable
        Rich progress bars on stderr, or ``progress(slices_done, total_slices)``.
    overwrite : bool
        Replace an existing output (and discard a stale ``.partial`` folder when not resuming).
    like : DICOM folder / file, Volume or meta dict, optional
        Source of patient / study tags for DICOM output (default: the measurement's reference_meta).
    checkpoint_every_s : float
        Volume samplers that hand over their state at step boundaries (``mbir3d``, ``dds3d``)
        have it saved to ``OUT.partial/volume_state.safetensors`` at most this often (and
        always when the run is stopped or interrupted); ``resume`` continues from it.
    num_parts, part_id : int
        Split the slices into ``num_parts`` contiguous blocks (:func:`part_slices`) and compute
        block ``part_id`` only: one job of a job array (``--num-parts/--part-id``), or one Ray
        task (:mod:`medrecon.engine.distributed`).  Needs ``output``: every part checkpoints
        into the same ``OUT.partial/`` (a shared filesystem across machines), finished slices
        of the part are kept as with ``resume``, and the part that finds every slice finished
        writes the output.  All parts must use the same settings (as for ``resume``); the
        result is identical to one unsplit run.  Slice-coupled samplers cannot be split.
    samples : int
        Posterior draws per slice (diffusion samplers that work slice by slice): the result is
        their mean, an estimate of the posterior mean E[x | y], which has a lower expected
        squared error than any single draw (each draw adds its spread about the mean; see
        docs/samplers.md), and ``vol.components["std"]`` their standard deviation (an
        uncertainty map, physical units; written to :func:`component_path` ``(output, "std")``).
        Draw ``d`` of slice ``k`` uses the stream ``(seed, k, d)``; draw 0 is the
        ``samples=1`` result.  Costs ``samples`` times the time.
    antithetic : bool
        With ``samples`` even: the draws come in antithetic pairs, draw ``2j + 1`` running on
        the negated noise of draw ``2j`` (stream ``(seed, k, j)``; every normal number the
        sampler draws, initial and per step, negated).  Each draw is still a posterior sample;
        the pair's noise cancels to first order in their mean, which lands much closer to
        E[x | y] than the mean of two independent draws (docs/samplers.md).  The ``std``
        component then divides by ``samples`` (not ``samples - 1``): unbiased where the
        sampler is linear in its noise.
    draw_batch : int
        With ``samples`` > 1: how many draws of a batch's slices run together in one sampler
        call (a batch of ``batch_size * draw_batch`` images).  The result is that of 1 up to
        floating-point rounding (the draws keep their streams); on a GPU, where a small batch
        leaves the card mostly idle, it runs the draws side by side; on a CPU it is no faster
        (docs/engine.md).  Memory grows ``draw_batch``-fold.
    recommended : bool
        Apply the settings the prior recommends for this sampler (its config's ``recommended``
        section, measured on held-out validation slices: :mod:`medrecon.priors.recommended`) to
        the parameters ``params`` does not set, and its step count when ``steps`` is None.  Only
        for a sampler given by name.  What was applied is logged (logger ``medrecon``) and kept
        in ``vol.meta["reconstruction"]["recommended"]``.  False: the sampler's own defaults.
    prior_scale : {"auto", "native"}
        ``"auto"``: when the data's pixels are at least 1.25x finer than the prior's
        ``pixel_size_mm`` (e.g. a 512 x 512 CT at 0.5 mm and a 2.1 mm prior), the prior runs at
        its own scale (:class:`medrecon.priors.rescaled.RescaledPrior`: the network sees the
        image downsampled to its pixel size, finer detail comes from the data) and
        ``vol.meta["reconstruction"]["prior_scale"]`` records the factor.  ``"native"``: the
        network sees the data's grid as it is (a pixel-size warning is issued).

    Returns
    -------
    Volume or None
        float32 (Z, Y, X) in physical units (``meta["units"]``) with the measurement's affine.
        ``None`` for a part (``num_parts > 1``) that did not write the output (other parts
        are still running, or another part is writing it).
        For an operator with image components (``us.haze``: tissue, haze) it is the first
        component, and ``vol.components`` maps each further name to its Volume (written to
        :func:`component_path` of ``output``).  With ``samples`` > 1 it is the mean of the
        draws and ``vol.components["std"]`` their standard deviation.

    Example::

        m = medrecon.load_measurement("sparse8.h5")
        vol = medrecon.reconstruct(m, "dds", "ct-default", steps=50, output="recon.nii.gz")
    """
    m = _as_measurement(measurement)
    batch_size = positive_int("batch_size", batch_size)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or int(steps) < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if resume and output is None:
        raise InputError("resume needs output= (the checkpoints live next to the output)")
    num_parts, part_id = _check_parts(num_parts, part_id, output)
    samples = positive_int("samples", samples)
    if not isinstance(antithetic, (bool, np.bool_)):
        raise InputError(f"antithetic must be true or false, got {antithetic!r}")
    if antithetic and samples % 2:
        raise InputError(f"antithetic draws come in pairs: samples must be even, got {samples}")
    draw_batch = positive_int("draw_batch", draw_batch)
    try:
        checkpoint_every_s = float(checkpoint_every_s)
    except (TypeError, ValueError):
        raise InputError(f"checkpoint_every_s must be a number of seconds, got {checkpoint_every_s!r}") from None
    if not checkpoint_every_s >= 0:
        raise InputError(f"checkpoint_every_s must be >= 0, got {checkpoint_every_s}")
    if not isinstance(recommended, (bool, np.bool_)):
        raise InputError(f"recommended must be true or false, got {recommended!r}")
    smp = _as_sampler(sampler, params, m)
    rec = None
    if smp.needs_prior:
        prior_obj, prior_name = _as_prior(prior, smp)
        if recommended and isinstance(sampler, str):
            smp, steps, rec = _with_recommended(smp, prior_obj, steps, params, m)
    else:
        prior_obj, prior_name = None, None  # classical, tv: a prior given is not used (nor loaded)
    devs = _resolve_devices(device, devices)
    if output is not None:
        from medrecon.io.atomic import check_target

        out_path = Path(os.fspath(output).rstrip("/\\"))
        check_target(out_path, overwrite)

    op = m.operator()
    volume_mode_3d = not getattr(op, "per_slice", True)
    volume_mode = volume_mode_3d or not getattr(smp, "per_slice", True)
    _check_measurement(m, op, volume_mode_3d)
    if volume_mode and not volume_mode_3d:
        check_volume_geometry(m, smp)
    if num_parts > 1 and volume_mode:
        what = "the operator is 3D" if volume_mode_3d else f"sampler {smp.name!r} couples all slices"
        raise InputError(f"{what}: it cannot be split into parts; run it as one job (num_parts=1)")
    comps = component_names(op)
    if samples > 1:
        _check_samples(samples, smp, op, comps, volume_mode)
        comps = ("mean", "std")  # each slice holds the draws' mean and standard deviation
    if output is not None:
        for name in comps[1:]:
            check_target(component_path(out_path, name), overwrite)
    scale = None
    if prior_obj is not None:
        from medrecon.priors.rescaled import scale_for

        scale = scale_for(prior_obj, _pixel_size(m), prior_scale)
        if scale is not None:  # run the prior at its own pixel size (medrecon.priors.rescaled)
            from medrecon.priors.rescaled import RescaledPrior

            prior_obj = RescaledPrior(prior_obj, scale["factor"])
        check_prior_fit(prior_obj, m, op, rescaled=scale is not None)
        prior_obj = _bind_intensity(prior_obj, m, op, devs[0], batch_size)

    eff_steps = int(steps) if steps is not None else getattr(smp, "default_steps", None)
    z = int(m.volume_shape[0]) if len(m.volume_shape) == 3 else int(m.y.shape[0])
    slice_shape = tuple(m.volume_shape[1:]) if len(m.volume_shape) == 3 else tuple(op.domain_shape)[-2:]
    if comps:  # each slice holds every component: (n_components, Y, X)
        slice_shape = (len(comps), *slice_shape)
    settings = run_settings(m, smp, prior_obj, eff_steps, seed, amp)
    if scale is not None:  # (absent at the prior's own scale: earlier checkpoints stay valid)
        settings["prior_scale"] = scale
    if samples > 1:  # (absent for one draw: checkpoints of earlier versions stay valid)
        settings["samples"] = samples
    if antithetic:
        settings["antithetic"] = True
    shash = _settings_hash(settings)
    if num_parts > z:
        raise InputError(f"num_parts={num_parts} is more than the {z} slice(s) of the measurement")
    mine = list(part_slices(z, num_parts, part_id))

    ck = None
    if output is not None:
        from medrecon.engine.checkpoint import Checkpoint, partial_path

        try:
            ck = Checkpoint.open(partial_path(out_path), settings, shash, z, slice_shape,
                                 resume=resume, discard=overwrite, shared=num_parts > 1, part=part_id)
        except InputError as exc:
            if rec is None or "different settings" not in str(exc):
                raise
            raise InputError(f"{str(exc).rstrip('.')}; this run took {rec.describe()} from the prior's recommended "
                             "settings: if the partial run used other values, pass them explicitly or turn "
                             "the recommendation off (recommended=False, CLI --no-recommended)") from None
        ck.acquire()
    if rec is not None:
        log.info("%s: %s recommended by the prior (%s); values you set win, and recommended=False "
                 "(CLI --no-recommended) turns this off", smp.name, rec.describe(), rec.source())
    try:
        return _run(m, op, smp, prior_obj, prior_name, devs, batch_size, eff_steps, seed, amp, progress,
                    settings, ck, z, slice_shape, volume_mode, volume_mode_3d, _stop_after,
                    out_path if output is not None else None, overwrite, like, mine if num_parts > 1 else None,
                    {"every_s": checkpoint_every_s, "resume": bool(resume), "stop_after_steps": _stop_after_steps},
                    comps, samples, bool(antithetic), draw_batch, rec)
    finally:
        if ck is not None:
            ck.release()


def _run(m, op, smp, prior_obj, prior_name, devs, batch_size, eff_steps, seed, amp, progress, settings, ck, z,
         slice_shape, volume_mode, volume_mode_3d, _stop_after, out_path, overwrite, like, mine, vopts,
         comps, samples, antithetic=False, draw_batch=1, rec=None):
    """Compute the slices not done yet (of ``mine``, a part's slices, when the run is split),
    then assemble and write the output.  A part returns None unless it writes the output.
    ``comps``: the names of the channels each slice holds (an operator's image components, or
    ``("mean", "std")`` for ``samples`` > 1), the first one returned, the others in ``components``."""
    from medrecon.volume import Volume

    result = np.zeros((z, *slice_shape), dtype=np.float32)
    done = set(ck.done()) if ck is not None else set()
    for k in done:
        result[k] = ck.load(k)
    wanted = range(z) if mine is None else mine
    todo = [k for k in wanted if k not in done]

    t0 = time.perf_counter()
    from medrecon.engine.prior_fit import applies

    records: dict = {"prior_fit": {}} if applies(smp, prior_obj, component_names(op), volume_mode) else {}
    if todo:
        n_resumed = len(wanted) - len(todo)
        label = f"{smp.name}" + (f" ({n_resumed} resumed)" if n_resumed else "")
        if mine is not None:
            label = f"part {mine[0]}..{mine[-1]}: {label}"
        with _Progress(progress, len(wanted), n_resumed, 1 if volume_mode else len(devs), label) as prog:
            workers = _make_workers(devs[:1] if volume_mode else devs, op, prior_obj, amp)
            if volume_mode:
                if len(devs) > 1:
                    warnings.warn(f"sampler {smp.name!r} couples all slices; it runs on {devs[0]} only",
                                  stacklevel=2)
                _run_volume(workers[0], smp, m, eff_steps, seed, result, ck, prog, volume_mode_3d, z, **vopts)
            else:
                _run_slices(workers, smp, m, todo, batch_size, eff_steps, seed, result, ck, prog, _stop_after,
                            samples, antithetic, draw_batch, records)
    elapsed = time.perf_counter() - t0
    if mine is not None:  # a part: write the output only when every slice is finished, exactly once
        computed = set(todo)
        if len(ck.done()) < z or not ck.claim_assembly():
            return None
        for k in range(z):
            if k not in computed and k not in done:
                result[k] = ck.load(k)  # finished by another part meanwhile
        done = set(range(z)) - computed

    meta = dict(copy.deepcopy(m.reference_meta) if m.reference_meta else {})
    meta["units"] = m.units
    if not meta.get("modality"):
        meta["modality"] = _guess_modality(m)
    import medrecon

    meta["reconstruction"] = {
        "sampler": smp.spec(),
        "prior": prior_name,
        "prior_fingerprint": settings["prior"],
        "steps": eff_steps,
        "seed": int(seed),
        "amp": bool(amp),
        "operator": m.operator_spec,
        "measurement_sha256": settings["measurement_sha256"],
        "measurement_source": (m.provenance or {}).get("source"),
        "resumed_slices": len(done),
        "seconds": round(elapsed, 3),
        "medrecon_version": medrecon.__version__,
    }
    if samples > 1:
        meta["reconstruction"]["samples"] = samples
    if antithetic:
        meta["reconstruction"]["antithetic"] = True
    if rec is not None:
        meta["reconstruction"]["recommended"] = rec.as_meta()
    if settings.get("prior_scale"):  # the prior ran at its own pixel size (medrecon.priors.rescaled)
        meta["reconstruction"]["prior_scale"] = settings["prior_scale"]
    if records.get("auto_tuned"):  # weights chosen per slice from the data (resumed slices are not listed)
        meta["reconstruction"]["auto_tuned"] = records["auto_tuned"]
    if records.get("prior_fit"):
        from medrecon.engine.prior_fit import summarise

        meta["reconstruction"]["prior_fit"] = summarise(records["prior_fit"])
    if comps and samples == 1:
        meta["component"] = comps[0]
    if comps:
        meta["reconstruction"]["components"] = {
            name: str(component_path(out_path, name)) if out_path is not None and k else None
            for k, name in enumerate(comps)}
    vol = Volume(result[:, 0] if comps else result, np.asarray(m.affine, dtype=np.float64), meta)
    extra = {name: Volume(result[:, k], vol.affine, dict(copy.deepcopy(meta), component=name))
             for k, name in enumerate(comps) if k}
    if out_path is not None:
        for name, v in extra.items():
            _write_output(v, component_path(out_path, name), overwrite, like, f"{smp.name} {name}")
        _write_output(vol, out_path, overwrite, like, smp.name)
        ck.remove()
    if comps:
        vol.components = extra  # the further components (Volume each), by name
    return vol


def _bind_intensity(prior, m, op, dev, batch_size: int):
    """MR priors map intensities with the volume's percentiles, ultrasound priors with its RF scale
    (intensity kind ``mulaw``): bind them once for the whole volume (from its classical
    reconstruction; its first component for a component operator), so that batches do not see
    different maps."""
    from medrecon.priors.model import BOUND_KINDS

    cfg = getattr(prior, "config", None)
    if not (isinstance(cfg, dict) and (cfg.get("intensity") or {}).get("kind") in BOUND_KINDS):
        return prior
    if getattr(prior, "_lo", None) is not None and getattr(prior, "_hi", None) is not None:
        return prior
    import torch

    cop = op if _same_device(op, dev) else copy.deepcopy(op).to(dev)
    parts = []
    with torch.no_grad():
        per_slice = m.y.shape[1:] == tuple(op.range_shape)
        y = m.y if per_slice else m.y[None]
        for s in range(0, y.shape[0], batch_size):
            bop = cop.for_slices(range(s, min(s + batch_size, y.shape[0]))) if per_slice else cop
            x = bop.classical(torch.from_numpy(np.ascontiguousarray(y[s:s + batch_size])).to(dev))
            if component_names(cop):
                x = x[:, 0]
            parts.append((x.abs() if x.is_complex() else x).float().cpu().numpy())
    return prior.for_volume(np.concatenate(parts))


def _check_samples(samples: int, smp, op, comps, volume_mode: bool) -> None:
    """``samples`` > 1 needs a stochastic (diffusion) sampler that works slice by slice on a
    plain image: one clear sentence otherwise."""
    if not getattr(smp, "needs_prior", False):
        raise InputError(f"sampler {smp.name!r} is deterministic: {samples} samples would all be the same; "
                         "use samples=1 (or a diffusion sampler: dds, dps, reddiff)")
    if volume_mode:
        raise InputError(f"samples={samples} needs a sampler that works slice by slice; {smp.name!r} with "
                         f"operator {op.name!r} reconstructs the whole volume at once")
    if comps:
        raise InputError(f"samples={samples} is not available for operator {op.name!r}, whose image has "
                         f"components ({', '.join(comps)})")


def check_volume_geometry(m, smp) -> float | None:
    """Before a volume sampler (``per_slice`` false) runs on a per-slice operator: at least 2
    slices, a finite affine with a non-zero slice step, and, when the measurement records
    slice positions (``provenance`` or ``reference_meta`` key ``slice_positions``, mm along
    the slice normal), equal spacing.  One-sentence :class:`InputError` otherwise; returns
    the slice spacing in mm."""
    from medrecon.samplers.admm_tvz import check_slice_geometry

    z = int(m.volume_shape[0]) if len(m.volume_shape) == 3 else int(m.y.shape[0])
    positions = None
    for src in (m.provenance, m.reference_meta):
        if isinstance(src, dict) and src.get("slice_positions") is not None:
            positions = src["slice_positions"]
            break
    return check_slice_geometry(z, affine=m.affine, positions=positions, who=f"sampler {smp.name!r}")


def _takes(fn, *names: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names)


class _VolumeSaver:
    """The ``checkpoint=`` callback of a volume sampler: keeps the latest step-boundary state
    (a copy) and writes it to the checkpoint folder at most every ``every_s`` seconds, and
    always on :meth:`flush` (a stop or an interrupt).  ``stop_after_steps`` (tests) stops the
    run at that step with :class:`RunStopped` after saving."""

    def __init__(self, ck, every_s: float, stop_after_steps: int | None):
        self.ck, self.every_s, self.stop_after = ck, float(every_s), stop_after_steps
        self.last_save = time.monotonic()
        self.pending: dict | None = None
        self.saved_step: int | None = None

    def __call__(self, state: dict) -> None:
        import torch

        def keep(v):
            if isinstance(v, torch.Tensor):
                return v.detach().clone()
            if isinstance(v, (list, tuple)):
                return [keep(e) for e in v]
            return copy.deepcopy(v)

        self.pending = {k: keep(v) for k, v in state.items()}
        step = int(state.get("step", 0))
        stop = self.stop_after is not None and step >= int(self.stop_after)
        if stop or time.monotonic() - self.last_save >= self.every_s:
            self.flush()
        if stop:
            raise RunStopped(f"run stopped after step {step} of {state.get('total')} as asked; continue it with "
                             "resume=True (--resume)")

    def flush(self) -> None:
        if self.pending is None:
            return
        self.ck.save_volume_state(self.pending)
        self.saved_step = int(self.pending.get("step", 0))
        self.pending = None
        self.last_save = time.monotonic()


def _run_volume(w, smp, m, steps, seed, result, ck, prog, volume_mode_3d: bool, z: int, *,
                every_s: float = 60.0, resume: bool = False, stop_after_steps: int | None = None) -> None:
    import torch

    from medrecon.samplers import slice_generators
    from medrecon.samplers.admm_tvz import volume_slices

    y = np.ascontiguousarray(m.y)
    if volume_mode_3d:
        if y.shape == tuple(w.op.range_shape):
            y = y[None]
        # one volume: a sampler that draws per axial slice (dds3d, mbir3d) gets slice k's generator
        # for slice k, as with a per-slice operator; others (tv dims=3, classical) one generator
        nz = volume_slices(w.op) if getattr(smp, "generators_per_axial_slice", False) else None
        gens = slice_generators(seed, range(nz) if nz is not None else [0])
    else:
        gens = slice_generators(seed, range(z))
    kw: dict[str, Any] = {}
    saver = None
    if ck is not None and _takes(smp.sample, "checkpoint", "resume_state"):
        saver = _VolumeSaver(ck, every_s, stop_after_steps)
        kw["checkpoint"] = saver
        if resume:
            state = ck.load_volume_state(w.dev)
            if state is not None:
                kw["resume_state"] = state
        else:
            ck.clear_volume_state()
    op = w.op if volume_mode_3d else w.op.for_slices(range(z))  # the operator for all slices, in order
    try:
        x = smp.sample(torch.from_numpy(y).to(w.dev), op, w.prior, steps=steps, generators=gens,
                       progress=prog.step_callback(0), **kw)
    except BaseException:
        if saver is not None:
            saver.flush()  # a stop, Ctrl-C or an error: keep the last finished step for --resume
        raise
    out = _to_image(x, "the volume")
    if volume_mode_3d:
        out = out.reshape(out.shape[1:]) if out.shape[0] == 1 else out
    if out.shape != result.shape:
        raise MedreconError(f"sampler {smp.name!r} returned shape {out.shape}, expected {result.shape}")
    result[:] = out
    if ck is not None:
        for k in range(z):
            ck.save(k, result[k])
        ck.clear_volume_state()
    prog.slices_done(z)


def _run_slices(workers, smp, m, todo, batch_size, steps, seed, result, ck, prog, stop_after, samples=1,
                antithetic=False, draw_batch=1, records=None) -> None:
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    stop = threading.Event()
    counter = {"n": 0}
    lock = threading.Lock()

    def finish(idx, out):
        for j, k in enumerate(idx):
            result[k] = out[j]
            if ck is not None:
                ck.save(k, out[j])
        prog.slices_done(len(idx))
        with lock:
            counter["n"] += len(idx)
            if stop_after is not None and counter["n"] >= stop_after:
                stop.set()

    if len(workers) == 1:
        w = workers[0]
        for idx in batches:
            if stop.is_set():
                break
            finish(idx, _run_batch(w, smp, m, idx, steps, seed, prog.step_callback(0), samples, antithetic,
                                   draw_batch, records))
    else:
        q: queue.Queue = queue.Queue()
        for b in batches:
            q.put(b)
        errors: list[BaseException] = []

        def loop(w):
            import torch

            if w.dev.type == "cuda" and w.dev.index is not None:
                torch.cuda.set_device(w.dev)
            cb = prog.step_callback(w.index)
            while not stop.is_set():
                try:
                    idx = q.get_nowait()
                except queue.Empty:
                    return
                try:
                    finish(idx, _run_batch(w, smp, m, idx, steps, seed, cb, samples, antithetic, draw_batch,
                                           records))
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    errors.append(exc)
                    stop.set()
                    return

        threads = [threading.Thread(target=loop, args=(w,), name=f"medrecon-worker-{w.index}", daemon=True)
                   for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
        if errors:
            raise errors[0]
    if stop.is_set() and stop_after is not None and counter["n"] < len(todo):
        raise RunStopped(f"run stopped after {counter['n']} slice(s) as asked; continue it with resume=True (--resume)")


def _write_output(vol, out_path: Path, overwrite: bool, like, sampler_name: str) -> None:
    from medrecon.volume import save_volume, volume_format

    if volume_format(out_path) == "nifti":
        save_volume(vol, out_path, overwrite=overwrite)
        return
    if out_path.suffix.lower() not in ("", ".dcm", ".dicom") and not out_path.is_dir():
        save_volume(vol, out_path, overwrite=overwrite, like=like)  # raises the format error
        return
    from medrecon.io.dicom import write_dicom_series

    src = vol.meta.get("series_description") or ""
    desc = f"{src} medrecon {sampler_name}".strip()[:64]
    write_dicom_series(vol, out_path, overwrite=overwrite, like=like, description=desc)
