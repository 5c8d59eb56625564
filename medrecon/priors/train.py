"""Train a :class:`~medrecon.priors.DiffusionPrior` on 2D slices (``medrecon train-prior``).

The whole slice stack is moved to the device once; augmentation (left-right flips, small
shifts by reflect padding and random cropping, or random N x N patches) is done there on
tensors, so the data pipeline is a few indexing operations per step.

Loss: MSE between the network output and epsilon (or v), t uniform on 0..T-1.  AdamW with a
short linear warm-up, gradient clipping at 1, EMA weights (the ones that are saved), bf16
autocast on CUDA.  Validation: MSE on held-out slices at fixed timesteps with fixed noise
(seeded independently of the training seed), so numbers compare across runs.

Checkpoints (``OUTPUT/checkpoint/state.safetensors`` + ``state.json``: model, EMA,
optimizer moments, step, generator state, losses) are written every ``ckpt_every`` steps,
at the wall-clock cap and at the end; ``resume=True`` continues from them.  No pickle
(:mod:`medrecon.priors.train_checkpoint`).  A NaN or infinite loss (checked at every logged
loss and checkpoint) or weight (at every checkpoint) stops training with one sentence: the
last finite checkpoint is kept and no prior is written.  Training data holding NaN or
infinity are refused before OUTPUT is made (:mod:`medrecon.priors.data`).
Augmentation: :mod:`medrecon.priors.augment`.

Outputs in OUTPUT: ``config.json`` + ``weights.safetensors`` (the prior, EMA, float16),
``train_report.json``, ``samples.png`` and ``checkpoint/``.  config.json also records
``fit_reference``: the saved prior's denoising loss on (up to 16) validation slices, the
reference of the prior-fit diagnostic (:mod:`medrecon.priors.fit`).

Only numpy, torch, monai, safetensors (and matplotlib for the PNG, rich for a bar on a TTY)
are imported when training from ``.npy`` stacks: no pydicom, nibabel or scipy.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrecon.errors import InputError
from medrecon.io.atomic import write_text_atomic
from medrecon.priors.augment import augment_batch, immiscible_assign
from medrecon.priors.lineage import check_resume_data, init_weights
from medrecon.priors.train_checkpoint import load_checkpoint, save_checkpoint, stop_if_nonfinite
from medrecon.progress import make_bar, stderr_is_tty

VAL_TIMESTEPS = (50, 100, 250, 500, 750)
VAL_SEED = 20240601
MAX_VAL_SLICES = 32


class _Progress:
    """A rich progress bar on a TTY; plain log lines every ``log_every`` steps otherwise."""

    def __init__(self, total: int, start: int, log_every: int, enabled: bool | None):
        self.total, self.log_every = total, log_every
        tty = stderr_is_tty()
        self.use_bar = tty if enabled is None else (enabled and tty)
        self.quiet = enabled is False
        self._bar = None
        if self.use_bar:
            self._bar = make_bar("train", info=True, stderr=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif not self.quiet and (step % self.log_every == 0 or step == self.total):
            print(f"[train-prior] step {step}/{self.total} {info}", file=sys.stderr, flush=True)

    def log(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.console.print(msg)
        elif not self.quiet:
            print(f"[train-prior] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@torch.no_grad()
def validation_loss(net_fn, x_val: torch.Tensor, abar: torch.Tensor, prediction: str, batch: int) -> dict:
    """MSE at each of VAL_TIMESTEPS on fixed noise (seed VAL_SEED, drawn on the CPU); returns {t: mse, 'mean': ...}."""
    g = torch.Generator().manual_seed(VAL_SEED)
    out = {}
    for t in VAL_TIMESTEPS:
        noise = torch.randn(x_val.shape, generator=g).to(x_val.device)
        a = abar[t].float()
        tot, n = 0.0, 0
        for i in range(0, x_val.shape[0], batch):
            x0, e = x_val[i:i + batch], noise[i:i + batch]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * e
            target = e if prediction == "epsilon" else a.sqrt() * e - (1 - a).sqrt() * x0
            pred = net_fn(xt, torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long))
            tot += F.mse_loss(pred.float(), target, reduction="sum").item()
            n += target.numel()
        out[str(t)] = tot / n
    out["mean"] = float(np.mean([out[str(t)] for t in VAL_TIMESTEPS]))
    return out


def _record_fit_reference(out: Path, x_val: torch.Tensor, dev) -> dict:
    """Add ``fit_reference`` (:func:`medrecon.priors.fit.record_fit_reference`) to ``out/config.json``:
    the saved prior (float16 EMA weights, as users load it) on the validation slices."""
    from medrecon.priors.fit import record_fit_reference

    return record_fit_reference(out, x_val, dev)


def _usable_slices(x: torch.Tensor) -> torch.Tensor:
    """The training slices that vary (a constant slice, e.g. all air, teaches nothing); an
    :class:`InputError` when none does, a warning when some were dropped."""
    flat = x.reshape(x.shape[0], -1)
    ok = torch.isfinite(flat).all(1) & (flat.std(1) > 1e-6)
    if not bool(ok.any()):
        raise InputError(f"none of the {x.shape[0]} training slices is usable (each is constant or not finite); "
                         "check the data and its intensity window")
    if not bool(ok.all()):
        warnings.warn(f"{int((~ok).sum())} of {x.shape[0]} training slices are constant or not finite and were "
                      "left out", stacklevel=3)
    return x[ok]


def train_prior(
    data,
    output,
    *,
    modality: str | None = None,
    size: int | None = None,
    val_data=None,
    steps: int = 10000,
    batch_size: int = 32,
    lr: float = 2e-4,
    weight_decay: float = 1e-4,
    device: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    init_from=None,
    seed: int = 0,
    max_minutes: float | None = None,
    patch: int | None = None,
    channels: str = "small",
    schedule: str = "linear",
    prediction: str = "epsilon",
    val_every: int = 500,
    ckpt_every: int = 1000,
    log_every: int = 50,
    ema_decay: float = 0.999,
    warmup: int = 200,
    shift: int = 8,
    rotate_deg: float = 0.0,
    zoom: float = 0.0,
    immiscible: bool = False,
    bf16: bool = True,
    weights_dtype: str = "float16",
    n_samples: int = 16,
    sample_steps: int = 50,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train a prior and write it to ``output``; returns the training report (also ``train_report.json``).

    data : list of paths (.npy slice stacks with .json sidecars, DICOM folders, NIfTI files).
    val_data : held-out paths (same kinds); default: a fixed 10% of the training slices
        (at most 32) are held back from training for validation.
    size : slice size S (volumes are resampled to S x S; stacks of another size are resampled).
    patch : train on random patch x patch crops (the CPU path); the prior still applies to any grid.
    rotate_deg, zoom : augmentation for small data sets (:func:`rotate_zoom`): half of each batch
        rotated by up to ``rotate_deg`` degrees and scaled by up to ``1 +- zoom``; 0 (default): off.
    channels : network preset name (see :data:`medrecon.priors.model.PRESETS`).
    max_minutes : wall-clock cap; training stops cleanly, saving, and records the steps done.
    resume : continue from ``output/checkpoint`` (steps is the total target).
    overwrite : start afresh in an ``output`` that already holds a prior or a checkpoint
        (without it, or ``resume``, such an ``output`` is refused: nothing is replaced by accident).
    init_from : a prior (name or folder) whose weights start the network and its EMA (fine-tuning
        with a fresh optimiser and warm-up); its network, size and modality must be those
        this run builds.  The report records it.
    """
    from medrecon.devices import resolve_device
    from medrecon.priors.data import load_sources
    from medrecon.priors.model import PRESETS, DiffusionPrior, count_parameters, default_config

    t_start = time.time()
    if isinstance(data, str | os.PathLike):
        data = [data]
    if channels not in PRESETS:
        raise InputError(f"unknown --channels preset {channels!r}; use one of {', '.join(PRESETS)}")
    if steps < 0 or batch_size < 1:
        raise InputError("steps must be >= 0 and batch size >= 1")
    if not (lr > 0 and np.isfinite(lr)) or not (0 <= ema_decay <= 1):
        raise InputError(f"--lr must be a finite number > 0 and --ema-decay 0..1, got {lr} and {ema_decay}")
    if not (0 <= rotate_deg <= 180) or not (0 <= zoom < 1):
        raise InputError(f"--rotate must be 0..180 degrees and --zoom 0..<1, got {rotate_deg} and {zoom}")
    dev = resolve_device(device)
    out = Path(output)
    ckpt_dir = out / "checkpoint"
    if resume and overwrite:
        raise InputError("--resume continues the checkpoint in the output folder and --overwrite starts afresh "
                         "over it; give one of them")
    held = [n for n in ("config.json", "checkpoint") if (out / n).exists()]
    if held and not (resume or overwrite):
        raise InputError(f"{str(out)!r} already holds a {'prior' if 'config.json' in held else 'training checkpoint'}"
                         f"; pass --resume to continue its training or --overwrite to start again over it")

    train_stack, prov = load_sources([str(p) for p in data], size, modality)
    modality = train_stack.modality
    size = train_stack.size
    x_all = torch.from_numpy(train_stack.to_net())[:, None]
    x_all = _usable_slices(x_all)
    if val_data:
        val_stack, val_prov = load_sources([str(p) for p in val_data], size, modality)
        x_val = torch.from_numpy(val_stack.to_net())[:, None]
        x_train = x_all
        val_source = "val_data"
    else:
        n = x_all.shape[0]
        k = max(1, min(MAX_VAL_SLICES, n // 10)) if n > 1 else 0
        val_idx = torch.linspace(0, n - 1, k).round().long() if k else torch.zeros(0, dtype=torch.long)
        mask = torch.ones(n, dtype=torch.bool)
        mask[val_idx] = False
        x_train, x_val = x_all[mask], x_all[val_idx]
        val_prov, val_source = [], "training slices held back"
        if x_val.shape[0] == 0:
            x_train, x_val = x_all, x_all
    if x_val.shape[0] > MAX_VAL_SLICES:
        x_val = x_val[torch.linspace(0, x_val.shape[0] - 1, MAX_VAL_SLICES).round().long()]
    if patch is not None:
        if patch > size:
            raise InputError(f"--patch {patch} is larger than the slices ({size})")
        c = (size - patch) // 2
        x_val = x_val[..., c:c + patch, c:c + patch]
    x_train = x_train.to(dev)
    x_val = x_val.to(dev)

    cfg = default_config(modality, size, train_stack.pixel_size_mm, preset=channels, schedule=schedule,
                         prediction=prediction)
    if modality == "mr":
        cfg["intensity"].pop("lo", None)
        cfg["intensity"].pop("hi", None)
    if modality == "us":  # the data's companding constant and scale percentile (sidecar)
        inten = train_stack.meta.get("intensity") or {}
        cfg["intensity"].update({k: inten[k] for k in ("mu", "p_scale") if k in inten})
    torch.manual_seed(seed)
    prior = DiffusionPrior(cfg).to(dev)
    net = prior.net
    lineage = init_weights(net, cfg, init_from) if init_from is not None and not resume else None
    ema = DiffusionPrior(cfg).net.to(dev)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    abar = prior.alphas_cumprod.float()
    T = prior.num_timesteps
    m = prior.downsample_factor
    if (patch or size) % m:
        raise InputError(f"training size {patch or size} must be a multiple of {m} for this network")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    gen = torch.Generator(device=dev).manual_seed(seed)
    use_ac = bf16 and dev.type == "cuda"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    losses: list[list[float]] = []  # [step, loss] every log_every steps (mean over the interval)
    val_losses: list[dict] = []
    step = 0
    prev_seconds = 0.0
    if resume:
        check_resume_data(ckpt_dir, prov)
        meta = load_checkpoint(ckpt_dir, net, ema, opt, gen, dev)
        lineage = meta.get("init_from")
        step = int(meta["step"])
        losses = meta.get("losses", [])
        val_losses = meta.get("val_losses", [])
        prev_seconds = float(meta.get("train_seconds", 0.0))
    out.mkdir(parents=True, exist_ok=True)  # only once the data and the options are known to be usable
    if overwrite and ckpt_dir.exists():  # a later --resume must not find the replaced run's checkpoint
        shutil.rmtree(ckpt_dir)

    def ema_fn(x, t):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_ac):
            return ema(x, t)

    data_sha = [p["sha256"] for p in prov]
    common_state = {"config": cfg, "seed": seed, "data": prov, "batch_size": batch_size, "lr": lr,
                    "patch": patch, "channels": channels, "init_from": lineage}
    bar = _Progress(steps, step, log_every, progress)
    bar.log(f"{modality.upper()} prior {channels} ({count_parameters(net) / 1e6:.2f}M params), "
            f"{x_train.shape[0]} train / {x_val.shape[0]} val slices at {size}x{size}"
            f"{f' (patches {patch})' if patch else ''}, {train_stack.pixel_size_mm:.3g} mm, device {dev}, "
            f"start step {step}, target {steps}")
    deadline = None if max_minutes is None else time.time() + 60.0 * max_minutes
    stopped_by = "steps"
    run_t0 = time.time()
    first_step = step
    acc, acc_n = 0.0, 0
    net.train()

    def checkpoint():  # only finite states: a NaN loss or weight stops here, keeping the last checkpoint
        stop_if_nonfinite(acc, {"network": net, "EMA network": ema}, step, ckpt_dir)
        st = dict(common_state, losses=losses, val_losses=val_losses,
                  train_seconds=prev_seconds + time.time() - run_t0)
        save_checkpoint(ckpt_dir, net, ema, opt, step, gen, st)

    import signal
    import threading

    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):  # a killed job (SIGTERM) saves like Ctrl-C
            raise KeyboardInterrupt

        old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        while step < steps:
            if deadline is not None and time.time() >= deadline:
                stopped_by = "max_minutes"
                break
            idx = torch.randint(0, x_train.shape[0], (batch_size,), generator=gen, device=dev)
            x0 = augment_batch(x_train[idx], gen, patch, shift, rotate_deg, zoom)
            noise = torch.randn(x0.shape, generator=gen, device=dev)
            if immiscible:
                noise = immiscible_assign(x0, noise)
            t = torch.randint(0, T, (batch_size,), generator=gen, device=dev)
            a = abar[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_ac):
                pred = net(xt, t)
            loss = F.mse_loss(pred.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                d = min(ema_decay, (1 + step) / (10 + step))
                ep, npar = list(ema.parameters()), list(net.parameters())
                torch._foreach_lerp_(ep, npar, 1 - d)
                for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
                    be.copy_(bn)
            step += 1
            acc += loss.detach()
            acc_n += 1
            if step % log_every == 0 or step == steps:
                stop_if_nonfinite(acc, {}, step, ckpt_dir)
                lv = float(acc) / acc_n
                losses.append([step, lv])
                acc, acc_n = 0.0, 0
                rate = (step - first_step) / max(1e-9, time.time() - run_t0)
                bar.update(step, f"loss {lv:.4f} {rate:.1f} it/s")
            elif bar.use_bar:
                bar.update(step, bar._bar.tasks[0].fields.get("info", "") if bar._bar else "")
            if val_every and step % val_every == 0:
                v = validation_loss(ema_fn, x_val, abar, prediction, max(batch_size, 32))
                val_losses.append({"step": step, **v})
                bar.log(f"step {step}: val loss (EMA) {v['mean']:.4f}")
            if ckpt_every and step % ckpt_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        stopped_by = "interrupted"
        bar.log("interrupted: saving a checkpoint")
    finally:
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    loop_seconds = time.time() - run_t0
    if acc_n:
        losses.append([step, float(acc) / acc_n])
    checkpoint()
    try:  # Ctrl-C or SIGTERM from here on stops the run as before; the checkpoint above holds it all
        ema.eval()
        if not val_losses or val_losses[-1]["step"] != step:
            v = validation_loss(ema_fn, x_val, abar, prediction, max(batch_size, 32))
            val_losses.append({"step": step, **v})
        train_seconds = prev_seconds + time.time() - run_t0
        final = DiffusionPrior(cfg, net=ema)
        training_info = {"steps": step, "target_steps": steps, "stopped_by": stopped_by, "batch_size": batch_size,
                         "patch": patch, "lr": lr, "seed": seed, "ema_decay": ema_decay, "immiscible": immiscible,
                         "augment": {"flip": True, "shift": shift, "rotate_deg": rotate_deg, "zoom": zoom},
                         "data_sha256": data_sha, "init_from": lineage, "final_val_loss": val_losses[-1]["mean"],
                         "train_seconds": round(train_seconds, 1), "device": str(dev)}
        final.config["training"] = training_info
        final.save(out, dtype=weights_dtype)
        fit_ref = _record_fit_reference(out, x_val, dev) if x_val.shape[0] else None

        samples_png = None
        if n_samples:
            from medrecon.priors.sample import sample_prior, save_grid

            p2 = DiffusionPrior.load(out, device=dev)
            p2.autocast = bf16
            if modality in ("mr", "us"):
                p2 = p2.with_intensity(float(np.median(train_stack.lo)), float(np.median(train_stack.hi)))
            imgs = sample_prior(p2, n=n_samples, steps=sample_steps, sampler="ddim", seed=seed,
                                size=size if dev.type == "cuda" else min(size, 128))
            samples_png = str(save_grid(imgs, out / "samples.png",
                                        title=f"{modality.upper()} prior, {step} steps, DDIM {sample_steps}"))

        report = {
            "modality": modality, "size": size, "pixel_size_mm": train_stack.pixel_size_mm, "patch": patch,
            "channels": channels, "parameters": count_parameters(net), "steps": step, "target_steps": steps,
            "stopped_by": stopped_by, "seed": seed, "batch_size": batch_size, "lr": lr,
            "data": prov, "val_data": val_prov, "val_source": val_source,
            "val_slices": int(x_val.shape[0]), "val_timesteps": list(VAL_TIMESTEPS), "val_seed": VAL_SEED,
            "train_slices": int(x_train.shape[0]), "losses": losses, "val_losses": val_losses,
            "train_seconds": round(train_seconds, 1), "wall_seconds_this_run": round(time.time() - t_start, 1),
            "steps_per_second_this_run": round((step - first_step) / max(1e-9, loop_seconds), 3),
            "loop_seconds_this_run": round(loop_seconds, 1),
            "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "python": platform.python_version(), "bf16_autocast": use_ac,
            "resumed": bool(resume), "init_from": None if init_from is None else str(init_from), "samples_png": samples_png, "prior": str(out),
            "fit_reference": fit_ref,
        }
        try:
            import monai

            report["monai"] = monai.__version__
        except ImportError:  # pragma: no cover
            pass
        write_text_atomic(out / "train_report.json", json.dumps(report, indent=1) + "\n")
        return report
    except KeyboardInterrupt:
        print(f"[train-prior] stopped while writing the prior; the checkpoint at step {step} is saved in "
              f"{ckpt_dir}: rerun with --resume --steps {step} to write the prior from it", file=sys.stderr, flush=True)
        raise

