"""What a run is made of, resolved from what the caller gave: the measurement (a file, a raw file an
importer reads, or a :class:`~medrecon.measurement.Measurement`), the sampler (a name with its
parameters, or a :class:`~medrecon.samplers.Sampler`), the settings the prior recommends for it,
the prior (a name, a folder or an object) and the devices.

Each function turns one argument of :func:`medrecon.plan` into the object the run uses, or raises
one sentence (:class:`~medrecon.errors.InputError` for what the caller gave,
:class:`~medrecon.errors.FileFormatError` for what a file holds).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import FileFormatError, InputError, MedreconError

__all__ = ["load_input", "as_measurement", "as_sampler", "with_recommended", "as_prior", "resolve_devices"]


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
            check_importer_options(imp_name, imp, options)
            m = _measurement_from_import(imp_name, imp.read(p, **options), p)
            m.origin = os.fspath(p)
            return m
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


def importer_options(imp) -> dict[str, Any] | None:
    """The options an importer's ``read(path, **options)`` takes, name -> default (None when it
    takes any keyword), read from its signature: the importer contract is ``read(path, *, opt=default,
    ...)``."""
    import inspect

    params = list(inspect.signature(imp.read).parameters.values())[1:]  # after the path
    if any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params):
        return None
    return {q.name: (None if q.default is inspect.Parameter.empty else q.default) for q in params
            if q.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def check_importer_options(name: str, imp, options: dict[str, Any]) -> None:
    """Refuse options the importer does not take, naming the ones it does (one sentence)."""
    known = importer_options(imp)
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise InputError(f"importer {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(known) or 'none'}")


def importers():
    """The installed importers as ``(name, importer)`` pairs (entry-point group ``medrecon.importers``)."""
    return list(_importers())


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


def as_measurement(measurement):
    from medrecon.measurement import Measurement

    if isinstance(measurement, Measurement):
        return measurement
    if isinstance(measurement, (str, os.PathLike)):
        return load_input(measurement)
    raise InputError(f"reconstruct needs a Measurement or a path to a measurement file, got "
                     f"{type(measurement).__name__}")


def as_sampler(sampler, params: dict[str, Any] | None, m):
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
    if "noise_std" in cls.params and "noise_std" not in params:
        params["noise_std"] = float(m.noise_std)
    return get_sampler(sampler, **params)


def with_recommended(smp, prior, steps, params, m):
    """The sampler (and step count) with the settings ``prior`` recommends for it
    (:mod:`medrecon.priors.recommended`): only parameters the caller did not set, and the
    prior's step count only when the caller gave none.  Returns ``(sampler, steps, rec)``."""
    from medrecon.priors.recommended import resolve

    cfg = getattr(prior, "config", None)
    if not isinstance(cfg, dict) or not cfg.get("recommended"):
        return smp, steps, None
    rec = resolve(cfg, type(smp), steps, dict(params or {}), (m.operator_spec or {}).get("name"),
                  prior.num_timesteps)
    if rec is None:
        return smp, steps, None
    if rec.params:
        try:
            smp = type(smp)(**{**smp.param_values, **rec.params})
        except InputError as exc:
            raise FileFormatError(f"the prior's recommended settings for {smp.name!r} are not valid: {exc}") from None
    return smp, (rec.steps if rec.steps is not None else steps), rec


def as_prior(prior, sampler):
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


def resolve_devices(device, devices) -> list:
    from medrecon.devices import resolve_device

    if devices is None:
        names = [device]
    elif isinstance(devices, str):
        names = [d.strip() for d in devices.split(",")]
        if len(names) > 1 and not all(names):
            raise InputError(f"devices {devices!r} has an empty entry; list them as cuda:0,cuda:1")
        names = [n for n in names if n]
    else:
        names = list(devices)
    if not names:
        raise InputError("devices= is empty; name at least one device (cpu, cuda, cuda:N)")
    return [resolve_device(str(n)) for n in names]

