"""A finished run's result: its metadata record and the files it is written to.

:func:`result_meta` is the ``meta`` of the returned Volume: the measurement's reference metadata
(patient / study tags for a derived DICOM series), its units and modality, and
``meta["reconstruction"]``, the record of how the result was made (sampler spec, prior and its
fingerprint, effective steps, seed, operator, measurement SHA-256, timings, and what the engine
decided or measured on the way: the prior's recommendations, its scale, per-slice tuned weights,
prior-fit scores).  :func:`write_output` writes one Volume atomically (NIfTI or a DICOM folder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["result_meta", "write_output"]


def result_meta(plan, records: dict, resumed: int, seconds: float) -> dict[str, Any]:
    """The result's metadata: ``plan`` (:class:`~medrecon.engine.plan.RunPlan`, with its live
    measurement and sampler), ``records`` gathered while running (``auto_tuned``, ``prior_fit``),
    ``resumed`` slices taken from checkpoints, wall time ``seconds``."""
    import medrecon
    from medrecon.engine.checks import guess_modality

    m, smp = plan.live.measurement, plan.live.sampler
    meta = dict(copy.deepcopy(m.reference_meta) if m.reference_meta else {})
    meta["units"] = m.units
    if not meta.get("modality"):
        meta["modality"] = guess_modality(m)
    rec: dict[str, Any] = {
        "sampler": smp.spec(),
        "prior": plan.prior,
        "prior_fingerprint": plan.prior_fingerprint,
        "steps": plan.steps,
        "seed": plan.seed,
        "amp": plan.amp,
        "operator": m.operator_spec,
        "measurement_sha256": plan.measurement_sha256,
        "measurement_source": plan.measurement_source,
        "resumed_slices": int(resumed),
        "seconds": round(seconds, 3),
        "medrecon_version": medrecon.__version__,
    }
    if plan.steps_requested is not None and plan.steps is not None and plan.steps_requested != plan.steps:
        rec["steps_requested"] = plan.steps_requested  # capped at the prior's schedule length
    if plan.samples > 1:
        rec["samples"] = plan.samples
    if plan.antithetic:
        rec["antithetic"] = True
    if plan.live.recommendation is not None:
        rec["recommended"] = plan.live.recommendation.as_meta()
    if plan.prior_scale:  # the prior ran at its own pixel size (medrecon.priors.rescaled)
        rec["prior_scale"] = plan.settings["prior_scale"]
    if records.get("auto_tuned"):  # weights chosen per slice from the data (resumed slices are not listed)
        rec["auto_tuned"] = records["auto_tuned"]
    if records.get("prior_fit"):
        from medrecon.engine.prior_fit import summarise

        rec["prior_fit"] = summarise(records["prior_fit"])
    comps = plan.components
    if comps and plan.samples == 1:
        meta["component"] = comps[0]
    if comps:
        rec["components"] = {name: plan.outputs.get(name) if k else None for k, name in enumerate(comps)}
    meta["reconstruction"] = rec
    return meta


def write_output(vol, out_path: Path, overwrite: bool, like, sampler_name: str) -> None:
    """Write ``vol`` to ``out_path`` atomically: NIfTI by extension, otherwise a derived DICOM
    series (tags from ``like`` or the volume's meta; description ``"<source> medrecon <sampler>"``)."""
    from medrecon.io import save_volume, volume_format

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
