"""A finished run's result: its metadata record and the files it is written to.

:func:`result_meta` is the ``meta`` of the returned Volume: the measurement's reference metadata
(patient / study tags for a derived DICOM series), its units and modality, and
``meta["reconstruction"]``, the record of how the result was made (sampler spec, prior and its
fingerprint, effective steps, seed, operator, measurement SHA-256, timings, and what the engine
decided or measured on the way: the prior's recommendations, its scale, per-slice tuned weights,
prior-fit scores).  :func:`write_output` writes one Volume atomically (NIfTI or a DICOM folder).

**How each slice was made.**  A slice's bits depend, beyond the settings, on the batch it ran in
(its members, hence the batch shape and its position: the network's convolutions and matrix
products and torch's reductions pick other kernels and summation orders for another shape), on the
device, the CPU thread count and the torch build (docs/engine.md, "Seeding and determinism").
:func:`made_record` is that record for one batch; :func:`resume_statement` compares the records of
all slices of a resumed run with what an uninterrupted run of this plan gives each slice, and says
whether the result is bit for bit that run's (``resumed_bit_identical``) and why
(``resumed_reason``).  The records of finished slices persist with the checkpoint where it keeps
them (``Checkpoint.record_made`` / ``made``); a slice without a record counts as not identical.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = ["result_meta", "write_output", "kernel_signature", "made_record", "resume_statement"]


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
    if plan.uncertainty_calibration:  # the std component's stored calibration (medrecon.uncertainty)
        rec["uncertainty_calibration"] = copy.deepcopy(plan.uncertainty_calibration)
    if plan.live.recommendation is not None:
        rec["recommended"] = plan.live.recommendation.as_meta()
    if plan.prior_scale:  # the prior ran at its own pixel size (medrecon.priors.rescaled)
        rec["prior_scale"] = plan.settings["prior_scale"]
    if resumed and not plan.volume_mode:  # whether the finished slices taken over give the uninterrupted result
        rec.update(resume_statement(plan, records.get("made") or {}))
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


# --------------------------------------------------------------------------- how slices were made
def kernel_signature(dev) -> dict[str, Any]:
    """What besides the settings and the batch decides a slice's bits on device ``dev``: the device
    kind (and GPU model), the CPU's kernel family and the intra-op thread count of the calling thread,
    and the torch and medrecon builds."""
    import torch

    import medrecon

    sig: dict[str, Any] = {"device": dev.type}
    if dev.type == "cpu":
        sig["threads"] = int(torch.get_num_threads())
        sig["cpu"] = str(torch.backends.cpu.get_cpu_capability())
    elif dev.type == "cuda":
        sig["gpu"] = torch.cuda.get_device_name(dev)
    sig["torch"] = torch.__version__
    sig["medrecon"] = medrecon.__version__
    return sig


def made_record(dev, plan, idx) -> dict[str, Any]:
    """How the slices ``idx`` (one sampler batch, in order) were made on ``dev`` under ``plan``."""
    g = max(1, min(int(plan.draw_batch), int(plan.samples)))
    return {"batch": [int(k) for k in idx], "draw_batch": g, **kernel_signature(dev)}


def _spans(ks) -> str:
    """``"slice 2"``, ``"slices 0-3, 7"``: the slices ``ks`` in ranges."""
    ks = sorted(ks)
    out, start = [], None
    for i, k in enumerate(ks):
        if start is None:
            start = k
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ("slice " if len(ks) == 1 else "slices ") + ", ".join(out[:4]) + (", ..." if len(out) > 4 else "")


def _was(ks) -> str:
    return "was" if len(ks) == 1 else "were"


_WHAT = {"device": "on {0} rather than {1}", "gpu": "on a {0} rather than a {1}",
         "threads": "with {0} CPU threads rather than {1}", "cpu": "with {0} CPU kernels rather than {1}",
         "torch": "with torch {0} rather than {1}", "medrecon": "with medrecon {0} rather than {1}",
         "draw_batch": "with {0} draws side by side rather than {1}"}


def resume_statement(plan, made: dict) -> dict[str, Any]:
    """``{"resumed_bit_identical": bool, "resumed_reason": sentence}`` for a run that took finished
    slices over (resume, or the other parts' slices of a split run): true when every slice of the
    result was made (``made``: slice index -> :func:`made_record`) in the batch an uninterrupted,
    unsplit run of this plan gives it (consecutive slices ``batch_size`` at a time from slice 0), with
    this run's draw batching, on the CPU with this run's kernel signature (:func:`kernel_signature`)."""
    z, b = int(plan.n_slices), int(plan.batch_size)
    g = max(1, min(int(plan.draw_batch), int(plan.samples)))
    refs = {tuple(sorted(kernel_signature(d).items())) for d in plan.live.devices}

    def no(reason: str) -> dict[str, Any]:
        return {"resumed_bit_identical": False, "resumed_reason": reason}

    if len(refs) > 1:
        return no("this run's workers are on devices that round differently, so no run of it is reproducible "
                  "bit for bit")
    ref = dict(next(iter(refs)), draw_batch=g)
    if ref["device"] != "cpu":
        return no(f"bit-identity is established on the CPU only; on {ref['device']} the result equals an "
                  "uninterrupted run's up to floating-point rounding")
    missing = [k for k in range(z) if not isinstance(made.get(k), dict)]
    if missing:
        return no(f"there is no record of how {_spans(missing)} {_was(missing)} made")
    for key, what in _WHAT.items():
        other = [k for k in range(z) if made[k].get(key) != ref.get(key)]
        if other:
            was = made[other[0]].get(key)
            return no(f"{_spans(other)} {_was(other)} made {what.format(was, ref.get(key))}, which can round "
                      "differently")
    moved = [k for k in range(z) if made[k].get("batch") != list(range(k // b * b, min(k // b * b + b, z)))]
    if moved:
        sizes = sorted({len(made[k]["batch"]) for k in moved})
        return no(f"{_spans(moved)} ran in other batches (of {', '.join(map(str, sizes))} slices) than an "
                  f"uninterrupted run with batch size {b} gives them, and rounding depends on the batch")
    return {"resumed_bit_identical": True,
            "resumed_reason": f"every slice ran in the batch an uninterrupted run with batch size {b} gives it, "
                              f"on the CPU with {ref['threads']} threads and the same torch build"}
