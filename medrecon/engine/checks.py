"""The checks a run passes before any work, and the small facts they rest on.

Each check raises one sentence (:class:`~medrecon.errors.InputError`) naming what is wrong and
what to do, or warns (:class:`PriorMismatchWarning`).  Also here: an operator's image components
and where each is written (:func:`component_names`, :func:`component_path`), and how a run is split
into parts (:func:`part_slices`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np

from medrecon.errors import InputError, MedreconError, positive_int

__all__ = ["validate_measurement", "PriorMismatchWarning", "component_names", "component_path", "image_shape", "check_measurement",
           "pixel_size", "check_prior_fit", "check_prior_modality", "guess_modality", "part_slices", "check_parts", "check_samples",
           "check_volume_geometry"]


class PriorMismatchWarning(UserWarning):
    """The measurement's grid or pixel size is far from what the prior was trained on."""


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


def image_shape(op) -> tuple[int, ...]:
    """The shape of one component image (the domain without its component axis)."""
    dshape = tuple(op.domain_shape)
    return dshape[1:] if component_names(op) else dshape


def validate_measurement(m):
    """A measurement a run can use: its operator builds from the stored spec and ``y`` fits it
    (finite, shaped as the operator measures, consistent with ``volume_shape``).  Returns the
    operator; a one-sentence :class:`InputError` otherwise."""
    op = m.operator()
    check_measurement(m, op, not op.per_slice)
    return op


def check_measurement(m, op, volume_mode_3d: bool) -> None:
    y = m.y
    if y.dtype.kind == "c":
        finite = np.all(np.isfinite(y.real)) and np.all(np.isfinite(y.imag))
    else:
        finite = np.all(np.isfinite(y))
    if not finite:
        raise InputError("the measurement y holds NaN or infinite values; fix or re-import the data")
    rshape, dshape = tuple(op.range_shape), image_shape(op)
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
    if op.slice_varying and op.n_slices != y.shape[0]:
        raise InputError(f"operator {op.name!r} holds per-slice parameters for {op.n_slices} slice(s), but the "
                         f"measurement has {y.shape[0]} slices of y")
    if len(vshape) == 3:
        if vshape[0] != y.shape[0]:
            raise InputError(f"the measurement has {y.shape[0]} slices of y but its volume has {vshape[0]} slices")
        if tuple(vshape[1:]) != dshape:
            raise InputError(f"operator {op.name!r} reconstructs slices shaped {dshape}, but the measurement's "
                             f"volume slices are {tuple(vshape[1:])}")


def pixel_size(m) -> float | None:
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
    px = pixel_size(m)
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


def check_prior_modality(prior, name, m) -> None:
    """Refuse a prior trained on another modality than the measurement's (an MR k-space measurement
    with a CT prior): the operator's family (``mri.*`` -> MR) decides, else the source's modality.
    Nothing is checked when either side is unknown (a plugin's own operator, a prior without
    ``modality``)."""
    cfg = getattr(prior, "config", None)
    trained = str(cfg.get("modality") or "").upper() if isinstance(cfg, dict) else ""
    trained = {"MRI": "MR", "ULTRASOUND": "US"}.get(trained, trained)
    op_name = str(m.operator_spec.get("name", ""))
    data = _FAMILY.get(op_name.split(".", 1)[0].lower()) or guess_modality(m)
    if trained and data and trained != data:
        raise InputError(f"the prior {name!r} was trained on {trained} images but the measurement is {data} "
                         f"(operator {op_name}); use a {data} prior, or a prior-free sampler such as tv")


_FAMILY = {"ct": "CT", "mri": "MR", "mr": "MR", "us": "US", "ultrasound": "US"}


def guess_modality(m) -> str | None:
    ref = m.reference_meta or {}
    if ref.get("modality"):
        return ref["modality"]
    name = str(m.operator_spec.get("name", ""))
    return _FAMILY.get(name.split(".", 1)[0].lower())


def part_slices(n_slices: int, num_parts: int, part_id: int) -> range:
    """The slices of part ``part_id`` of ``num_parts``: contiguous blocks whose sizes differ by
    at most one, larger blocks first (as ``numpy.array_split``).  10 slices in 3 parts:
    ``range(0, 4)``, ``range(4, 7)``, ``range(7, 10)``."""
    base, extra = divmod(int(n_slices), int(num_parts))
    start = part_id * base + min(part_id, extra)
    return range(start, start + base + (1 if part_id < extra else 0))


def check_parts(num_parts, part_id, output) -> tuple[int, int]:
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

def check_auto_tuning(smp, params: dict | None, op) -> None:
    """Auto-tuning asked for by name (``params`` sets the sampler's tunable weight to ``"auto"``)
    of a measurement the operator cannot split into held-out folds (too few views or lines;
    cone beam): an :class:`InputError` naming the number to give instead.  Left at its default,
    the same weight falls back to the sampler's fixed value and says so in the output's
    metadata (:mod:`medrecon.samplers.autotune`)."""
    from medrecon.samplers.autotune import N_FOLDS

    tunable = getattr(smp, "tunable", None)
    value = (params or {}).get(tunable[0]) if tunable else None
    if not (isinstance(value, str) and value.strip().lower() == "auto"):
        return
    if op.holdout_folds(N_FOLDS) is not None:
        return
    name, _, fallback = tunable
    raise InputError(f"{smp.name} {name}=auto chooses the weight by holding out part of the measurement, but this "
                     f"{op.name} measurement cannot be split into {N_FOLDS} held-out folds (too few views or lines, or "
                     f"an operator that cannot hold out data); give a number instead, e.g. --param {name}={fallback:g}")


def check_samples(samples: int, smp, op, comps, volume_mode: bool) -> None:
    """``samples`` > 1 needs a stochastic (diffusion) sampler on a plain image: one clear sentence
    otherwise.  Volume samplers (``dds3d``, ``mbir3d``) draw the whole volume once per draw."""
    if not smp.needs_prior:
        raise InputError(f"sampler {smp.name!r} is deterministic: {samples} samples would all be the same; "
                         "use samples=1 (or a diffusion sampler: dds, dps, reddiff, dds3d, mbir3d)")
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


def check_output(out: Path, sources: dict[str, str | os.PathLike | None], like=None) -> str:
    """Before any work: the output's format can be told from its name, it does not alias an input,
    and a ``like`` series (DICOM output) can be read.  ``sources`` names the inputs (e.g.
    ``{"measurement": path}``).  Returns the format (``"nifti"`` or ``"dicom"``); one-sentence
    :class:`InputError` otherwise."""
    from medrecon.io.atomic import check_outputs
    from medrecon.io.registry import output_format

    fmt = output_format(out)

    check_outputs({"": out}, {**sources, "--like series": like}, overwrite=True)  # existence: check_target
    if fmt == "dicom" and isinstance(like, (str, os.PathLike)):
        from medrecon.io.dicom.write import meta_from_like

        meta_from_like(like)  # a one-sentence error now, not after the run
    return fmt
