"""Plan, then execute: every decision of a run resolved once, before any work.

:func:`plan` turns what the caller gave (a measurement or path, a sampler name and parameters,
a prior name or folder, options) into a frozen :class:`RunPlan`:

* the sampler with the settings the prior recommends merged in (values the caller set win);
* the effective step count, **capped** at the prior's schedule length ``T`` for a diffusion
  sampler (a 1000-step prior runs at most 1000 steps, and that is what the plan, the checkpoint
  hash and the output's metadata record; ``steps_requested`` keeps what was asked);
* the prior at its own pixel size where the data are finer (:mod:`medrecon.priors.rescaled`) and
  its intensity map bound to the whole volume (MR percentiles; the bound ``lo``/``hi`` are in the
  plan), with its fingerprint;
* the run mode (slice batches, one volume sampler, or a 3D operator), devices, parts, image
  components, the output paths (checked: nothing is overwritten without ``overwrite``);
* the settings that determine the result and their hash (:mod:`medrecon.engine.settings`).

:func:`medrecon.engine.execute.execute` carries a plan out and decides nothing.  The plan's
JSON (:meth:`RunPlan.to_json`) is what ``medrecon reconstruct --dry-run`` prints and round-trips
through :meth:`RunPlan.from_json`; the live objects (measurement, operator, sampler, prior) ride
along in :attr:`RunPlan.live` and are not part of it.

Example (the classical sampler needs no prior)::

    >>> import numpy as np, medrecon
    >>> vol = medrecon.Volume(np.zeros((2, 32, 32), np.float32), np.eye(4), {"units": "HU"})
    >>> m = medrecon.simulate(vol, "ct.parallel", {"n_views": 8})
    >>> p = medrecon.plan(m, "classical", progress=False)
    >>> p.mode, p.n_slices, p.steps
    ('slices', 2, 1)
    >>> medrecon.RunPlan.from_json(p.to_json()) == p
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError, positive_int
from medrecon.jsonable import json_default

__all__ = ["RunPlan", "Live", "plan"]

PLAN_VERSION = 1
#: the most steps a run may ask for (iterative solvers converge in hundreds; priors cap at T)
MAX_STEPS = 100_000


@dataclass
class Live:
    """The objects a plan was resolved into (not part of its JSON): the measurement, its operator,
    the sampler, the prior (rescaled and bound), the devices (``torch.device``), the ``like``
    source of DICOM tags, the prior's recommendation (:class:`~medrecon.priors.recommended.Recommendation`)
    and the progress mode (``True``, ``False`` or a callable)."""

    measurement: Any
    operator: Any
    sampler: Any
    prior: Any
    devices: list
    like: Any = None
    recommendation: Any = None
    progress: bool | Callable[[int, int], None] = True


@dataclass(frozen=True)
class RunPlan:
    """Every decision of one reconstruction run (JSON-able), plus the live objects (:class:`Live`).

    Attributes
    ----------
    sampler : dict
        The sampler's spec (``name`` and every parameter), recommendations merged.
    prior, prior_fingerprint : str or None
        The prior as named by the caller, and the SHA-256 (16 hex digits) of what determines its output.
    steps, steps_requested : int or None
        The steps the sampler runs (capped at the prior's ``T``), and what was asked (None: default).
    mode : {"slices", "volume", "volume3d"}
        Slice batches; one call of a sampler that couples the slices; one call with a 3D operator.
    n_slices : int
        Z, the slices of the result.  ``slice_shape``: one slice, with a leading component axis
        when ``components`` is not empty.
    components : list of str
        What each slice holds: an operator's image components, ``["mean", "std"]`` for several
        draws, or ``[]`` for a plain image.  The first is the result, each further one a file beside it.
    part : list of int or None
        ``[start, stop)`` of this part's slices when the run is split (``num_parts`` > 1).
    outputs : dict
        Output path of each component (``""`` for the result), or ``{}`` without ``output``.
    intensity : dict or None
        The prior's intensity map bound to this volume (``{"lo": ..., "hi": ...}``), if it needs one.
    settings, settings_hash : dict, str
        What determines the result, and its SHA-256 (the checkpoint key).
    uncertainty_calibration : dict or None
        With ``samples`` > 1 and a prior that stores a calibration for this sampler and operator
        (:func:`medrecon.uncertainty.select_calibration`): ``applied`` (False with
        ``calibration=False``), the ``factor`` the std component is multiplied by, and the stored
        entry it came from.  Applied when the output is assembled (checkpoints hold the raw std),
        so it is not part of the settings hash.
    """

    sampler: dict
    prior: str | None
    prior_fingerprint: str | None
    steps: int | None
    steps_requested: int | None
    seed: int
    amp: bool
    devices: list
    batch_size: int
    samples: int
    antithetic: bool
    draw_batch: int
    mode: str
    n_slices: int
    slice_shape: list
    components: list
    num_parts: int
    part_id: int
    part: list | None
    output: str | None
    outputs: dict
    overwrite: bool
    resume: bool
    checkpoint_every_s: float
    like: str | None
    operator: dict
    measurement_sha256: str
    measurement_source: str | None
    recommended: dict | None
    prior_scale: dict | None
    intensity: dict | None
    prior_fit: bool
    settings: dict
    settings_hash: str
    uncertainty_calibration: dict | None = None
    version: int = PLAN_VERSION
    live: Live | None = field(default=None, compare=False, repr=False)

    @property
    def volume_mode(self) -> bool:
        """Whether the whole volume goes to the sampler in one call."""
        return self.mode != "slices"

    @property
    def slices(self) -> range:
        """This run's slices: all of them, or the part's block."""
        return range(self.n_slices) if self.part is None else range(*self.part)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON types (without :attr:`live`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "live"}

    def to_json(self, indent: int | None = 2) -> str:
        """The plan's JSON (``medrecon reconstruct --dry-run`` prints it)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunPlan:
        """A plan from :meth:`to_dict` (no live objects: it describes a run, it cannot execute one)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"live"}
        if not isinstance(d, dict) or set(d) - names or {"settings_hash", "sampler", "mode"} - set(d):
            raise InputError("not a medrecon run plan (keys differ from RunPlan's)")
        return cls(**{k: _jsonable(v) for k, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        """A plan from :meth:`to_json`."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise InputError(f"not a medrecon run plan: invalid JSON ({exc})") from None
        return cls.from_dict(d)


def _jsonable(x):
    """``x`` as it comes back from JSON (tuples become lists, numpy scalars numbers), so a plan
    equals its round trip."""
    return json.loads(json.dumps(x, sort_keys=True, default=json_default))


def plan(
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
    calibration: bool = True,
) -> RunPlan:
    """Resolve a run: the arguments of :func:`medrecon.reconstruct` (which is
    ``execute(plan(...))``) into a :class:`RunPlan`.  Raises one sentence for any argument that
    cannot work, before any work (and nothing is written)."""
    from medrecon.engine.checks import (
        check_auto_tuning,
        check_measurement,
        check_output,
        check_parts,
        check_prior_fit,
        check_prior_modality,
        check_samples,
        check_volume_geometry,
        component_names,
        component_path,
        part_slices,
        pixel_size,
    )
    from medrecon.engine.inputs import as_measurement, as_prior, as_sampler, resolve_devices, with_recommended
    from medrecon.engine.settings import run_settings, settings_hash

    m = as_measurement(measurement)
    batch_size = positive_int("batch_size", batch_size)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or int(steps) < 1):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if steps is not None and int(steps) > MAX_STEPS:
        raise InputError(f"steps={int(steps)} is more than the {MAX_STEPS} any sampler needs (a prior's samplers "
                         "run at most its schedule length, iterative solvers converge in hundreds); ask for fewer")
    if prior_scale not in ("auto", "native"):
        raise InputError(f"prior_scale must be 'auto' or 'native', got {prior_scale!r}")
    if resume and output is None:
        raise InputError("resume needs output= (the checkpoints live next to the output)")
    num_parts, part_id = check_parts(num_parts, part_id, output)
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
    if not isinstance(calibration, (bool, np.bool_)):
        raise InputError(f"calibration must be true or false, got {calibration!r}")
    steps_requested = None if steps is None else int(steps)
    smp = as_sampler(sampler, params, m)
    rec = None
    if smp.needs_prior:
        prior_obj, prior_name = as_prior(prior, smp)
        check_prior_modality(prior_obj, prior_name, m)
        prior_cfg = getattr(prior_obj, "config", None)  # (before rescaling: its stored calibration)
        if recommended and isinstance(sampler, str):
            smp, steps, rec = with_recommended(smp, prior_obj, steps, params, m)
    else:
        prior_obj, prior_name, prior_cfg = None, None, None  # classical, tv: a prior given is not used (nor loaded)
    devs = resolve_devices(device, devices)
    out_path = None
    if output is not None:
        from medrecon.io.atomic import check_target

        out_path = Path(os.fspath(output).rstrip("/\\"))
        check_target(out_path, overwrite)
        check_output(out_path, {"measurement": m.origin, "measurement's source": (m.provenance or {}).get("source")},
                     like)

    op = m.operator()
    check_auto_tuning(smp, params, op)
    volume_mode_3d = not op.per_slice
    volume_mode = volume_mode_3d or not smp.per_slice
    check_measurement(m, op, volume_mode_3d)
    if volume_mode and not volume_mode_3d:
        check_volume_geometry(m, smp)
    if num_parts > 1 and volume_mode:
        what = "the operator is 3D" if volume_mode_3d else f"sampler {smp.name!r} couples all slices"
        raise InputError(f"{what}: it cannot be split into parts; run it as one job (num_parts=1)")
    comps = component_names(op)
    if samples > 1:
        check_samples(samples, smp, op, comps, volume_mode)
        comps = ("mean", "std")  # each slice holds the draws' mean and standard deviation
    if out_path is not None:
        for name in comps[1:]:
            check_target(component_path(out_path, name), overwrite)
    scale = None
    if prior_obj is not None:
        from medrecon.priors.rescaled import RescaledPrior, scale_for

        scale = scale_for(prior_obj, pixel_size(m), prior_scale)
        if scale is not None:  # run the prior at its own pixel size (medrecon.priors.rescaled)
            prior_obj = RescaledPrior(prior_obj, scale["factor"])
        check_prior_fit(prior_obj, m, op, rescaled=scale is not None)
        prior_obj = bind_intensity(prior_obj, m, op, devs[0], batch_size)

    eff_steps = smp.resolve_steps(steps, prior_obj)  # capped at the prior's schedule length
    unc = uncertainty_calibration(prior_cfg, smp.name, op.name, eff_steps, samples, antithetic, calibration) \
        if samples > 1 else None
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
    if num_parts > z:
        raise InputError(f"num_parts={num_parts} is more than the {z} slice(s) of the measurement")
    mine = part_slices(z, num_parts, part_id)

    from medrecon.engine.prior_fit import applies

    outputs = {}
    if out_path is not None:
        outputs = {name: str(component_path(out_path, name)) for name in comps[1:]}
        outputs[""] = str(out_path)
    return RunPlan(
        sampler=_jsonable(smp.spec()),
        prior=prior_name,
        prior_fingerprint=settings["prior"],
        steps=eff_steps,
        steps_requested=steps_requested,
        seed=int(seed),
        amp=bool(amp),
        devices=[str(d) for d in devs],
        batch_size=batch_size,
        samples=samples,
        antithetic=bool(antithetic),
        draw_batch=draw_batch,
        mode="volume3d" if volume_mode_3d else "volume" if volume_mode else "slices",
        n_slices=z,
        slice_shape=[int(s) for s in slice_shape],
        components=list(comps),
        num_parts=num_parts,
        part_id=part_id,
        part=[mine.start, mine.stop] if num_parts > 1 else None,
        output=None if out_path is None else str(out_path),
        outputs=outputs,
        overwrite=bool(overwrite),
        resume=bool(resume),
        checkpoint_every_s=checkpoint_every_s,
        like=os.fspath(like) if isinstance(like, (str, os.PathLike)) else (None if like is None else
                                                                              type(like).__name__),
        operator=_jsonable(m.operator_spec),
        measurement_sha256=settings["measurement_sha256"],
        measurement_source=(m.provenance or {}).get("source"),
        recommended=None if rec is None else _jsonable(rec.as_meta()),
        prior_scale=None if scale is None else _jsonable(scale),
        intensity=intensity_binding(prior_obj),
        prior_fit=applies(smp, prior_obj, component_names(op), volume_mode),
        settings=_jsonable(settings),
        settings_hash=settings_hash(settings),
        uncertainty_calibration=None if unc is None else _jsonable(unc),
        live=Live(measurement=m, operator=op, sampler=smp, prior=prior_obj, devices=devs, like=like,
                  recommendation=rec, progress=progress),
    )


def uncertainty_calibration(cfg, sampler: str, operator: str, steps, samples: int, antithetic: bool,
                            apply: bool) -> dict | None:
    """The stored calibration of the std component this run uses (config.json
    ``uncertainty_calibration``, :func:`medrecon.uncertainty.select_calibration`): ``applied``
    (``apply``), the ``factor`` for this run's draws (:func:`medrecon.uncertainty.run_factor`) and the
    stored entry; None when the prior stores none for ``sampler`` with ``operator``."""
    from medrecon.uncertainty import run_factor, select_calibration

    entry = select_calibration(cfg, sampler, operator, steps)
    if entry is None:
        return None
    return {"applied": bool(apply), "factor": run_factor(entry, samples, antithetic), "stored": entry}


def intensity_binding(prior) -> dict | None:
    """The prior's intensity map as bound to the volume (``{"lo", "hi"}``), or None when it is fixed."""
    bound = getattr(prior, "bound_intensity", None)
    return None if bound is None else _jsonable({"lo": bound[0], "hi": bound[1]})


def bind_intensity(prior, m, op, dev, batch_size: int):
    """MR priors map intensities with the volume's percentiles, ultrasound priors with its RF scale
    (intensity kinds in ``BOUND_KINDS``): bind them once for the whole volume (from its classical
    reconstruction; its first component for a component operator), so that batches do not see
    different maps.  A prior already bound (or with a fixed map) is returned as it is."""
    from medrecon.engine.checks import component_names
    from medrecon.engine.workers import same_device
    from medrecon.priors.model import BOUND_KINDS

    cfg = getattr(prior, "config", None)
    if not (isinstance(cfg, dict) and (cfg.get("intensity") or {}).get("kind") in BOUND_KINDS):
        return prior
    if getattr(prior, "bound_intensity", None) is not None:
        return prior
    import torch

    cop = op if same_device(op, dev) else copy.deepcopy(op).to(dev)
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
