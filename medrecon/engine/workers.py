"""The work itself: workers on devices, slice batches, posterior draws, volume runs, progress.

* **Workers.**  One per device entry, each with its own copy of the operator and the prior on its
  device (the caller's objects are never modified); several workers take batches from a shared
  queue (threads; one batch per worker on its device at a time, so the batch size sets the peak
  memory).
* **Batches.**  :func:`run_batch` reconstructs a list of slices in one sampler call, with slice
  ``k``'s generator seeded from ``(seed, k)`` (draw ``d``: ``(seed, k, d)``), so a slice's random
  numbers do not depend on its batch (its last bits can: docs/engine.md, "Seeding and
  determinism").  With several draws it returns their mean and standard deviation.
* **Volumes.**  :func:`run_volume` runs a sampler that couples all slices (or a 3D operator) in one
  call and hands its step-boundary state to the checkpoint (:class:`VolumeSaver`).
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from medrecon import stopping
from medrecon.errors import MedreconError

__all__ = ["RunStopped", "Worker", "make_workers", "RunProgress", "run_batch", "run_slices", "run_volume",
           "VolumeSaver", "same_device"]


class RunStopped(MedreconError):
    """The run stopped early as asked (``_stop_after``); its checkpoints are kept for ``resume``."""


def prior_copy(prior, dev, amp: bool, share: bool):
    """The prior for one worker: its own copy on ``dev`` (the original is never modified)."""
    import torch

    from medrecon.priors.rescaled import RescaledPrior

    if prior is None:
        return None
    if isinstance(prior, RescaledPrior):  # the wrapped prior is what holds weights and settings
        return RescaledPrior(prior_copy(prior.base, dev, amp, same_device(prior.base, dev)), prior.factor)
    if isinstance(prior, torch.nn.Module):
        p = copy.copy(prior) if share else copy.deepcopy(prior)
        if not share:
            p = p.to(dev)
    else:
        p = copy.copy(prior) if share else copy.deepcopy(prior)
    if hasattr(p, "autocast"):
        p.autocast = bool(amp)
    return p


def same_device(obj, dev) -> bool:
    d = getattr(obj, "device", None)
    if d is None:
        import torch

        if isinstance(obj, torch.nn.Module):
            t = next(iter(list(obj.parameters()) + list(obj.buffers())), None)
            d = t.device if t is not None else None
    if d is None:
        return dev.type == "cpu"
    return str(d) == str(dev) or (d.type == dev.type == "cpu")


class Worker:
    def __init__(self, index: int, dev, op, prior):
        self.index, self.dev, self.op, self.prior = index, dev, op, prior


def make_workers(devs, op, prior, amp: bool) -> list[Worker]:
    workers = []
    for i, dev in enumerate(devs):
        if i == 0:
            w_op = op.to(dev)
            share = same_device(prior, dev) if prior is not None else True
        else:
            w_op = copy.deepcopy(op).to(dev)
            share = False
        workers.append(Worker(i, dev, w_op, prior_copy(prior, dev, amp, share)))
    return workers


class RunProgress:
    """Rich progress bars on stderr (slices overall, steps per worker), or a user callback."""

    def __init__(self, mode, total_slices: int, done: int, n_workers: int, label: str):
        self.cb: Callable[[int, int], None] | None = mode if callable(mode) else None
        self.total = total_slices
        self.done = done
        self.lock = threading.Lock()
        self.rich = None
        if mode is True:
            from medrecon.progress import make_bar

            self.rich = make_bar(elapsed=True)
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


def to_image(x, what: str) -> np.ndarray:
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


def run_batch(w: Worker, plan, idx: list[int], cb, records: dict | None = None) -> np.ndarray:
    """The slices ``idx`` reconstructed on worker ``w`` as ``plan`` says (its sampler, steps, seed,
    draws): ``(B, *image)``; with ``samples`` > 1,
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
    from medrecon.uncertainty import DrawMoments

    sampler, m, steps, seed = plan.live.sampler, plan.live.measurement, plan.steps, plan.seed
    samples, antithetic, draw_batch = plan.samples, plan.antithetic, plan.draw_batch
    y = torch.from_numpy(np.ascontiguousarray(m.y[idx])).to(w.dev)
    what = f"slices {idx[0]}..{idx[-1]}" if len(idx) > 1 else f"slice {idx[0]}"
    B, image = len(idx), tuple(w.op.domain_shape)
    g = max(1, min(int(draw_batch), samples))
    groups = [list(range(d0, min(d0 + g, samples))) for d0 in range(0, samples, g)]
    ops = {n: w.op.for_slices(idx * n) for n in {len(ds) for ds in groups}}
    moments = DrawMoments(antithetic=antithetic)  # the one home of the std component (medrecon.uncertainty)
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
        out = to_image(x, what)
        if out.shape != (len(ds) * B, *image):
            raise MedreconError(f"sampler {sampler.name!r} returned shape {out.shape}, expected "
                                f"{(len(ds) * B, *image)}")
        if samples == 1:
            return out
        for draw in out.reshape(len(ds), B, *image):
            moments.add(draw)
    # antithetic pairs: their mean is nearly exact (no degree of freedom spent on it), so the
    # spread about it is divided by N, which is unbiased where the sampler is linear in its noise
    mean, std = moments.result()
    return np.stack([mean, std], axis=1).astype(np.float32)

class VolumeSaver:
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


def run_volume(w: Worker, plan, result: np.ndarray, ck, prog: RunProgress,
               stop_after_steps: int | None = None) -> None:
    """The whole volume in one sampler call on worker ``w`` (``plan.mode`` ``volume`` or
    ``volume3d``), into ``result``; a ``resumable`` sampler's step-boundary state goes to the
    checkpoint ``ck`` (:class:`VolumeSaver`) and a resumed run continues from it.  With ``samples``
    > 1: one call per draw, on the streams :func:`run_batch` gives a slice's draws (``(seed, k, d)``,
    or antithetic pairs), summarised by :class:`~medrecon.uncertainty.DrawMoments` into
    ``result[:, 0]`` (mean) and ``result[:, 1]`` (std); a stopped run then starts the volume again."""
    import torch

    from medrecon.samplers import slice_generators
    from medrecon.samplers.admm_tvz import volume_slices
    from medrecon.uncertainty import DrawMoments

    smp, m, steps, seed, z = plan.live.sampler, plan.live.measurement, plan.steps, plan.seed, plan.n_slices
    volume_mode_3d = plan.mode == "volume3d"
    y = np.ascontiguousarray(m.y)
    if volume_mode_3d:
        if y.shape == tuple(w.op.range_shape):
            y = y[None]
        # one volume: a sampler that draws per axial slice (dds3d, mbir3d) gets slice k's generator
        # for slice k, as with a per-slice operator; others (tv dims=3, classical) one generator
        nz = volume_slices(w.op) if smp.generators_per_axial_slice else None
        gens = slice_generators(seed, range(nz) if nz is not None else [0])
    else:
        gens = slice_generators(seed, range(z))
    kw: dict[str, Any] = {}
    saver = None
    if ck is not None and smp.resumable and plan.samples == 1:  # (several draws: a resume starts again)
        saver = VolumeSaver(ck, plan.checkpoint_every_s, stop_after_steps)
        kw["checkpoint"] = saver
        if plan.resume:
            state = ck.load_volume_state(w.dev)
            if state is not None:
                kw["resume_state"] = state
        else:
            ck.clear_volume_state()
    op = w.op if volume_mode_3d else w.op.for_slices(range(z))  # the operator for all slices, in order
    idx = list(range(len(gens)))  # the streams' slice indices (0 .. n-1)
    moments = DrawMoments(antithetic=plan.antithetic)  # several draws: as run_batch, one home of the std
    for d in range(plan.samples):
        if d:  # draw d: streams (seed, k, d), or antithetic pairs (seed, k, d // 2), negated for odd d
            gens = slice_generators(seed, idx, d // 2, antithetic=d % 2 == 1) if plan.antithetic else \
                slice_generators(seed, idx, d)
        try:
            x = smp.sample(torch.from_numpy(y).to(w.dev), op, w.prior, steps=steps, generators=gens,
                           progress=prog.step_callback(0), **kw)
        except BaseException:
            if saver is not None:
                saver.flush()  # a stop, Ctrl-C or an error: keep the last finished step for --resume
            raise
        out = to_image(x, "the volume")
        if volume_mode_3d:
            out = out.reshape(out.shape[1:]) if out.shape[0] == 1 else out
        want = result.shape if plan.samples == 1 else (result.shape[0], *result.shape[2:])
        if out.shape != want:
            raise MedreconError(f"sampler {smp.name!r} returned shape {out.shape}, expected {want}")
        if plan.samples == 1:
            result[:] = out
        else:
            moments.add(out)
    if plan.samples > 1:
        result[:] = np.stack(moments.result(), axis=1)
    if ck is not None:
        for k in range(z):
            ck.save(k, result[k])
        ck.clear_volume_state()
    prog.slices_done(z)


def wait_for_workers(done: list[threading.Event]) -> None:
    """Wait until every worker thread has set its ``done`` event; an interrupt propagates.

    The main thread waits on the events the workers set as their last act, never on
    ``Thread.join``: a KeyboardInterrupt that lands inside ``join`` on CPython 3.11 can mark a
    thread that is still running as stopped (``threading._wait_for_tstate_lock`` releases its
    lock), and the process would then exit under a worker that is running torch code ("terminate
    called without an active exception", SIGABRT instead of exit status 130)."""
    for ev in done:
        while not ev.wait(0.2):
            pass


def wait_for_stopping_workers(threads: list[threading.Thread], done: list[threading.Event]) -> None:
    """After ``stop`` was set: wait until every started worker has set its ``done`` event, whatever
    further interrupts arrive (they stop within one iteration, :mod:`medrecon.stopping`).  A
    thread whose ``start`` an interrupt cut short before it began never sets it: one that has
    not begun (no ``ident``) within a second is not waited for."""
    give_up = time.monotonic() + 1.0
    pending = list(zip(threads, done, strict=True))
    while pending:
        try:
            pending = [(t, ev) for t, ev in pending
                       if not ev.is_set() and (t.ident is not None or time.monotonic() < give_up)]
            if pending:
                pending[0][1].wait(0.05)
        except BaseException:  # noqa: BLE001 - a repeated Ctrl-C / SIGTERM: keep waiting
            continue


def run_slices(workers: list[Worker], plan, todo: list[int], result: np.ndarray, ck, prog: RunProgress,
               stop_after: int | None = None, records: dict | None = None) -> None:
    """The slices ``todo`` in batches of ``plan.batch_size`` on ``workers`` (a shared queue when
    there are several), each finished batch into ``result`` and the checkpoint ``ck``, and how it
    was made (:func:`~medrecon.engine.output.made_record`) into ``records["made"]`` and the
    checkpoint (where it keeps such records).
    ``stop_after`` (tests): stop with :class:`RunStopped` once that many slices are done."""
    from medrecon.engine.output import made_record

    batches = [todo[i:i + plan.batch_size] for i in range(0, len(todo), plan.batch_size)]
    stop = threading.Event()
    counter = {"n": 0}
    lock = threading.Lock()
    keep_made = ck.record_made if ck is not None else None  # how each batch was made (resume statement)

    def finish(w, idx, out):
        for j, k in enumerate(idx):
            result[k] = out[j]
            if ck is not None:
                ck.save(k, out[j])
        made = made_record(w.dev, plan, idx)  # in the worker's thread: its thread count
        with lock:
            if records is not None:
                records.setdefault("made", {}).update(dict.fromkeys(idx, made))
            if keep_made is not None:
                keep_made(made)
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
            finish(w, idx, run_batch(w, plan, idx, prog.step_callback(0), records))
    else:
        q: queue.Queue = queue.Queue()
        for b in batches:
            q.put(b)
        errors: list[BaseException] = []

        done = [threading.Event() for _ in workers]

        def loop(w, ev):
            try:
                work(w)
            finally:
                ev.set()  # the main thread waits on this, not on join (wait_for_workers)

        def work(w):
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
                    # an interrupt stops the worker at its next iteration (sampler step, solver
                    # iteration, weight candidate), not at the end of the batch: medrecon.stopping
                    with stopping.stoppable(stop):
                        out = run_batch(w, plan, idx, cb, records)
                    finish(w, idx, out)
                except stopping.Stopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    errors.append(exc)
                    stop.set()
                    return

        threads = [threading.Thread(target=loop, args=(w, ev), name=f"medrecon-worker-{w.index}", daemon=True)
                   for w, ev in zip(workers, done, strict=True)]
        try:  # the starts too: an interrupt between two starts must still stop the started workers
            for t in threads:
                t.start()
            wait_for_workers(done)
        except BaseException:  # Ctrl-C / SIGTERM in the main thread: the workers stop at their next step
            stop.set()
            wait_for_stopping_workers(threads, done)
            raise
        if errors:
            raise errors[0]
    if stop.is_set() and stop_after is not None and counter["n"] < len(todo):
        raise RunStopped(f"run stopped after {counter['n']} slice(s) as asked; continue it with resume=True (--resume)")
