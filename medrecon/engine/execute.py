"""Carry out a run plan; ``reconstruct`` is ``execute(plan(...))``.

``reconstruct(measurement, sampler, prior, ...)`` is the public entry point (also
``medrecon.reconstruct``): :func:`medrecon.engine.plan.plan` resolves every decision into a
:class:`~medrecon.engine.plan.RunPlan`, :func:`execute` carries it out and decides nothing.
See ``docs/engine.md`` for the full story; in short:

* **Batching.**  For a 2D (per-slice) sampler and operator, the slices of ``y``
  (axis 0) that are not done yet are cut into batches of ``batch_size`` slices;
  each batch is one ``sampler.sample`` call.  Only one batch per worker is on a
  device at a time, so peak device memory is set by the batch size, not by the
  number of slices.  A volume sampler (``sampler.per_slice`` false, e.g. ``tv`` with
  ``dims=3``) or a 3D operator gets the whole volume in one call.
* **Seeding.**  Slice ``k`` gets its own CPU generator seeded from ``(seed, k)``
  (:func:`medrecon.samplers.slice_generators`, numpy ``SeedSequence([seed, k])``), and
  samplers draw every random number of a slice from its generator.  A slice's random
  numbers therefore do not depend on the batch size, on the batch it lands in, on the
  number of devices, or on being resumed; its last bits can (the network's kernels and
  torch's reductions round differently for another batch shape): the same plan with the
  same batch size on the same CPU and thread count gives the same bits, and a resumed run
  records whether it is bit for bit the uninterrupted one (``resumed_bit_identical``,
  docs/engine.md "Seeding and determinism").
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

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.engine.plan import RunPlan, plan
from medrecon.errors import InputError

log = logging.getLogger("medrecon")

__all__ = ["reconstruct", "execute"]


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
    calibration: bool = True,
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
        Slices per sampler call; sets the peak memory.  The result depends on it only through
        floating-point rounding (bit for bit the same for the same batch size on the same CPU
        and thread count; docs/engine.md, "Seeding and determinism").
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
        Posterior draws per slice (diffusion samplers; a volume sampler draws the volume N times): the result is
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
    calibration : bool
        With ``samples`` > 1: multiply the ``std`` component by the factor the prior stores for
        this sampler and operator (config.json ``uncertainty_calibration``, written by
        ``medrecon calibrate-uncertainty``; docs/uncertainty.md), adjusted to this run's number
        of draws (:func:`medrecon.uncertainty.run_factor`).  What was applied is kept in
        ``vol.meta["reconstruction"]["uncertainty_calibration"]``.  False: the draws' raw spread
        (the factor is recorded as not applied).

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
    return execute(plan(measurement, sampler, prior, steps=steps, params=params, device=device, devices=devices,
                        batch_size=batch_size, seed=seed, amp=amp, output=output, resume=resume, progress=progress,
                        overwrite=overwrite, like=like, checkpoint_every_s=checkpoint_every_s, num_parts=num_parts,
                        part_id=part_id, samples=samples, antithetic=antithetic, draw_batch=draw_batch,
                        recommended=recommended, prior_scale=prior_scale, calibration=calibration),
                   _stop_after=_stop_after, _stop_after_steps=_stop_after_steps)


def execute(plan: RunPlan, *, _stop_after: int | None = None, _stop_after_steps: int | None = None):
    """Carry out ``plan`` (:func:`medrecon.engine.plan.plan`): compute the slices not done yet (of
    the part's block when the run is split), assemble the result and write it.  Returns the
    result Volume, or None for a part that did not write the output.  ``_stop_after`` (slices)
    and ``_stop_after_steps`` (volume samplers) stop the run early (tests of resume)."""
    if not isinstance(plan, RunPlan):
        raise InputError(f"execute needs a RunPlan (from medrecon.plan), got {type(plan).__name__}")
    if plan.live is None:
        raise InputError("this plan describes a run but holds no measurement, sampler or prior (it was read "
                         "from JSON); make it with medrecon.plan(...) to execute it")
    ck = None
    created = False
    rec = plan.live.recommendation
    if plan.output is not None:
        from medrecon.engine.checkpoint import Checkpoint, partial_path
        from medrecon.io.atomic import remove_stale_temps

        for path in plan.outputs.values():  # left by a final write that was killed half-way
            remove_stale_temps(Path(path))
        created = plan.num_parts == 1 and (plan.overwrite or not partial_path(Path(plan.output)).exists())
        try:
            ck = Checkpoint.open(partial_path(Path(plan.output)), plan.settings, plan.settings_hash,
                                 plan.n_slices, tuple(plan.slice_shape), resume=plan.resume,
                                 discard=plan.overwrite, shared=plan.num_parts > 1, part=plan.part_id)
        except InputError as exc:
            if rec is None or "different settings" not in str(exc):
                raise
            raise InputError(f"{str(exc).rstrip('.')}; this run took {rec.describe()} from the prior's recommended "
                             "settings: if the partial run used other values, pass them explicitly or turn "
                             "the recommendation off (recommended=False, CLI --no-recommended)") from None
        ck.acquire()
    if rec is not None:
        log.info("%s: %s recommended by the prior (%s); values you set win, and recommended=False "
                 "(CLI --no-recommended) turns this off", plan.live.sampler.name, rec.describe(), rec.source())
    try:
        return _run(plan, ck, _stop_after, _stop_after_steps)
    except Exception as exc:
        from medrecon.engine.workers import RunStopped

        if ck is not None and not isinstance(exc, RunStopped):  # a stop as asked keeps its work silently
            _after_failure(ck, created)
        raise
    finally:
        if ck is not None:
            ck.release()


def _after_failure(ck, created: bool) -> None:
    """A run that failed (not stopped or interrupted): remove the checkpoint folder it created when
    it holds no finished work, so the next plain run is not blocked; otherwise keep it and say so."""
    from medrecon.engine.checkpoint import VOLUME_STATE

    n = len(ck.done())
    if created and n == 0 and not (ck.folder / VOLUME_STATE).exists():
        ck.release()
        ck.remove()
        return
    if n:
        log.warning("%d finished slice(s) are kept in %s; rerun with --resume (resume=True) to continue, or "
                    "--overwrite to start again", n, ck.folder)


def _run(plan: RunPlan, ck, stop_after, stop_after_steps):
    from medrecon.engine.output import result_meta, write_output
    from medrecon.engine.workers import RunProgress, make_workers, run_slices, run_volume
    from medrecon.volume import Volume

    live = plan.live
    m, smp, devs = live.measurement, live.sampler, live.devices
    z = plan.n_slices
    result = np.zeros((z, *plan.slice_shape), dtype=np.float32)
    done = set(ck.done()) if ck is not None else set()
    for k in done:
        result[k] = ck.load(k)
    todo = [k for k in plan.slices if k not in done]

    t0 = time.perf_counter()
    records: dict = {"prior_fit": {}} if plan.prior_fit else {}
    if todo:
        n_resumed = len(plan.slices) - len(todo)
        label = f"{smp.name}" + (f" ({n_resumed} resumed)" if n_resumed else "")
        if plan.part is not None:
            label = f"part {plan.part[0]}..{plan.part[1] - 1}: {label}"
        with RunProgress(live.progress, len(plan.slices), n_resumed, 1 if plan.volume_mode else len(devs),
                         label) as prog:
            workers = make_workers(devs[:1] if plan.volume_mode else devs, live.operator, live.prior, plan.amp)
            if plan.volume_mode:
                if len(devs) > 1:
                    warnings.warn(f"sampler {smp.name!r} couples all slices; it runs on {devs[0]} only",
                                  stacklevel=3)
                run_volume(workers[0], plan, result, ck, prog, stop_after_steps)
            else:
                run_slices(workers, plan, todo, result, ck, prog, stop_after, records)
    elapsed = time.perf_counter() - t0
    if plan.part is not None:  # a part: write the output only when every slice is finished, exactly once
        computed = set(todo)
        if len(ck.done()) < z or not ck.claim_assembly():
            return None
        for k in range(z):
            if k not in computed and k not in done:
                result[k] = ck.load(k)  # finished by another part meanwhile
        done = set(range(z)) - computed

    if done and not plan.volume_mode:  # how the slices taken over were made, for the resume statement
        records["made"] = {**(ck.made() if ck is not None else {}), **records.get("made", {})}
    meta = result_meta(plan, records, len(done), elapsed)
    comps = plan.components
    unc = plan.uncertainty_calibration
    if unc and unc["applied"] and "std" in comps:  # checkpoints keep the raw spread; the output is calibrated
        result[:, comps.index("std")] *= np.float32(unc["factor"])
    vol = Volume(result[:, 0] if comps else result, np.asarray(m.affine, dtype=np.float64), meta)
    import copy

    extra = {name: Volume(result[:, k], vol.affine, dict(copy.deepcopy(meta), component=name))
             for k, name in enumerate(comps) if k}
    if plan.output is not None:
        for name, v in extra.items():
            write_output(v, Path(plan.outputs[name]), plan.overwrite, live.like, f"{smp.name} {name}")
        write_output(vol, Path(plan.output), plan.overwrite, live.like, smp.name)
        ck.remove()
    if comps:
        vol.components = extra  # the further components (Volume each), by name
    return vol
