"""Many studies on many devices or machines: :func:`reconstruct_many`, in-process or on Ray.

The unit of work is a **task**: one study (a measurement file) or one *part* of a study,
a contiguous block of its slices (:func:`medrecon.engine.part_slices`).  Each task is one
call of :func:`medrecon.reconstruct` with ``num_parts``/``part_id``; the parts of a study
meet in its ``OUT.partial/`` folder and the one that finishes last writes ``OUT``
(see :mod:`medrecon.engine.checkpoint`).  Results are therefore written per study, exactly
as one unsplit run would write them, whoever computes which part.

Two executors run the same tasks:

* in-process (default): the tasks one after another on ``device``/``devices``;
* Ray (``use_ray=True``, the ``medrecon[ray]`` extra): one actor per GPU (``gpus_per_worker``,
  default 1 when the cluster has GPUs) or per ``cpus_per_worker`` CPUs, each loading the
  prior once and taking tasks from a pool as it finishes the previous one.  ``address``
  joins a running cluster (``"auto"``, ``"ray://head:10001"``); without it a local Ray
  instance is started (and stopped at the end).  On a cluster every machine must see the
  measurement and output paths at the same place (a shared filesystem) and have medrecon
  and its plugins installed.

A task whose output already exists is skipped (``overwrite`` recomputes it), and every task
resumes its own finished slices, so running the same command again after a crash, a
pre-empted node or a Ctrl-C continues where it stopped.  A study that fails (bad file,
wrong prior) is reported and the others go on.

Example::

    from medrecon.engine.distributed import reconstruct_many
    report = reconstruct_many(["a.h5", "b.h5"], "dds", "ct-default", output_dir="recon/",
                              parts_per_study=4, use_ray=True, steps=50)
    # [{"measurement": "a.h5", "output": "recon/a.nii.gz", "part": 0, "status": "done", ...}, ...]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medrecon.errors import InputError, MedreconError, positive_int

__all__ = ["Task", "plan_tasks", "reconstruct_many", "output_name"]

_MEAS_SUFFIXES = (".h5", ".hdf5", ".mat", ".dat", ".nii.gz", ".nii")


@dataclass(frozen=True)
class Task:
    """One unit of work: part ``part_id`` of ``num_parts`` of one study."""

    measurement: str
    output: str
    part_id: int = 0
    num_parts: int = 1


def output_name(measurement: str | os.PathLike, suffix: str = ".nii.gz") -> str:
    """``scan_07.h5`` -> ``scan_07.nii.gz``: the measurement's name without its extension, plus
    ``suffix`` (``"/"`` for a DICOM folder)."""
    name = Path(os.fspath(measurement).rstrip("/\\")).name
    for ext in _MEAS_SUFFIXES:
        if name.lower().endswith(ext) and len(name) > len(ext):
            name = name[: -len(ext)]
            break
    return name + suffix


def plan_tasks(measurements: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
               parts_per_study: int = 1, suffix: str = ".nii.gz") -> list[Task]:
    """The tasks for ``measurements``: outputs ``output_dir/<name><suffix>``, each study cut
    into ``parts_per_study`` parts, ordered study by study (so the parts of the first study
    run side by side and it finishes first).  Two measurements with the same output name are
    refused."""
    if not measurements:
        raise InputError("no measurements given")
    parts = positive_int("parts_per_study", parts_per_study)
    out_dir = Path(os.fspath(output_dir))
    seen: dict[str, str] = {}
    tasks = []
    for meas in measurements:
        meas = os.fspath(meas)
        if not os.path.exists(meas):
            raise InputError(f"no such measurement file: {meas!r}")
        out = str(out_dir / output_name(meas, suffix))
        if out in seen:
            raise InputError(f"{seen[out]!r} and {meas!r} would both be written to {out!r}; rename one")
        seen[out] = meas
        tasks.extend(Task(meas, out, k, parts) for k in range(parts))
    return tasks


def run_task(task: Task, sampler, prior, options: dict[str, Any]) -> dict[str, Any]:
    """Run one task with :func:`medrecon.reconstruct`; never raises a medrecon error: the
    report says ``done`` (this task wrote the output), ``part done`` (its slices are finished,
    another part writes the output), ``exists`` (skipped) or ``failed`` with the sentence."""
    from medrecon.engine.execute import reconstruct

    rep: dict[str, Any] = {**asdict(task), "status": "", "seconds": 0.0, "host": _host()}
    opts = dict(options)
    overwrite = bool(opts.pop("overwrite", False))
    if os.path.exists(task.output) and not overwrite:
        rep["status"] = "exists"
        return rep
    t0 = time.perf_counter()
    try:
        vol = reconstruct(task.measurement, sampler, prior, output=task.output, num_parts=task.num_parts,
                          part_id=task.part_id, resume=task.num_parts == 1, overwrite=overwrite,
                          progress=False, **opts)
    except MedreconError as exc:
        rep.update(status="failed", error=str(exc))
    else:
        rep["status"] = "done" if vol is not None else "part done"
    rep["seconds"] = round(time.perf_counter() - t0, 3)
    return rep


def reconstruct_many(
    measurements: Sequence[str | os.PathLike],
    sampler: str = "dds",
    prior: Any = None,
    *,
    output_dir: str | os.PathLike,
    parts_per_study: int = 1,
    suffix: str = ".nii.gz",
    use_ray: bool = False,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: int = 1,
    overwrite: bool = False,
    on_task: Callable[[dict[str, Any], int, int], None] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Reconstruct many studies, each to ``output_dir/<name><suffix>``; see the module docstring.

    ``options`` go to :func:`medrecon.reconstruct` (``steps``, ``params``, ``device``,
    ``devices``, ``batch_size``, ``seed``, ``amp``, ...; ``device``/``devices`` are chosen per
    actor on Ray).  ``on_task(report, n_finished, n_tasks)`` is called as each task ends.
    Returns one report per task (see :func:`run_task`), in the order the tasks finished.
    """
    from medrecon.samplers import sampler_class

    tasks = plan_tasks(measurements, output_dir, parts_per_study=parts_per_study, suffix=suffix)
    cls = sampler_class(sampler) if isinstance(sampler, str) else type(sampler)
    if getattr(cls, "needs_prior", False) and prior is None:
        raise InputError(f"sampler {getattr(cls, 'name', sampler)!r} needs a diffusion prior: pass prior= "
                         "(--prior NAME|PATH)")
    for key in ("output", "num_parts", "part_id", "resume", "progress"):
        if key in options:
            raise InputError(f"{key}= is set per task by reconstruct_many; do not pass it")
    loaded = prior
    if isinstance(prior, (str, os.PathLike)):
        from medrecon.priors.model import load_prior

        loaded = load_prior(prior)  # an unknown name fails here, once, with one sentence
        prior = os.fspath(prior)
    Path(os.fspath(output_dir)).mkdir(parents=True, exist_ok=True)
    options = dict(options, overwrite=overwrite)
    if use_ray:  # actors load the prior by name from their own disk (or get the object)
        return _run_on_ray(tasks, sampler, prior, options, address, workers, gpus_per_worker,
                           cpus_per_worker, on_task)
    if workers not in (None, 1) or gpus_per_worker is not None:
        raise InputError("workers= and gpus_per_worker= need use_ray=True (--ray); in-process runs use "
                         "devices= for several devices")
    reports = []
    for task in tasks:
        reports.append(run_task(task, sampler, loaded, options))
        if on_task is not None:
            on_task(reports[-1], len(reports), len(tasks))
    return reports


# ============================================================================ Ray
class _Worker:
    """A Ray actor: one device, the prior loaded once, tasks run one at a time."""

    def __init__(self, sampler, prior, options: dict[str, Any], device: str, threads: int):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        if isinstance(prior, (str, os.PathLike)):
            from medrecon.priors.model import load_prior

            prior = load_prior(prior)
        self.sampler, self.prior = sampler, prior
        self.options = dict(options, device=device)
        self.options.pop("devices", None)

    def run(self, task: Task) -> dict[str, Any]:
        return run_task(task, self.sampler, self.prior, self.options)


def _run_on_ray(tasks, sampler, prior, options, address, workers, gpus_per_worker, cpus_per_worker,
                on_task) -> list[dict[str, Any]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise InputError("use_ray needs Ray: pip install 'medrecon[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kw["address"] = address
        try:
            ray.init(**kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot start or reach the Ray cluster{f' at {address!r}' if address else ''}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        res = ray.cluster_resources()
        n_gpu = int(res.get("GPU", 0))
        gpus = float(gpus_per_worker) if gpus_per_worker is not None else (1.0 if n_gpu else 0.0)
        if gpus > 0 and n_gpu == 0:
            raise InputError("gpus_per_worker > 0 but the Ray cluster has no GPUs")
        cpus = max(1, int(cpus_per_worker))
        if workers is None:
            workers = int(n_gpu // gpus) if gpus > 0 else int(res.get("CPU", 1) // cpus)
        workers = max(1, min(int(workers), len(tasks)))
        device = "cuda" if gpus > 0 else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
        actor_cls = ray.remote(num_gpus=gpus, num_cpus=cpus)(_Worker)
        actors = [actor_cls.remote(sampler, prior, options, device, cpus) for _ in range(workers)]
        pool = ActorPool(actors)
        reports = []
        for rep in pool.map_unordered(lambda a, t: a.run.remote(t), tasks):
            reports.append(rep)
            if on_task is not None:
                on_task(rep, len(reports), len(tasks))
        return reports
    finally:
        if started:
            ray.shutdown()


def _host() -> str:
    import socket

    return socket.gethostname()
