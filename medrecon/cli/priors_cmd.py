"""``medrecon train-prior``, ``sample-prior``, ``prepare-slices``, ``evaluate-prior``, ``blend-priors``, ``prior-info``.

``python -m medrecon.cli.priors_cmd ...`` runs the train-prior command alone (:func:`train_main`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train-prior")
    def train_prior_cmd(
        data: list[str] = typer.Option(None, "--data", help="Training data: .npy slice stack (with .json sidecar), "
                                       "DICOM folder or NIfTI file (repeatable)."),
        manifest: Path = typer.Option(None, "--manifest", help="File listing training data paths."),
        val_data: list[str] = typer.Option(None, "--val-data", help="Held-out data for the validation loss "
                                           "(default: 10% of the training slices held back)."),
        modality: str = typer.Option(None, "--modality", help="ct, mr or us (default: from the data)."),
        size: int = typer.Option(None, "--size", help="Slice size S (needed for volumes; stacks are resampled)."),
        output: Path = typer.Option(..., "--output", "-o", help="Prior folder to write."),
        steps: int = typer.Option(10000, "--steps", help="Total training steps."),
        batch_size: int = typer.Option(32, "--batch-size"),
        lr: float = typer.Option(2e-4, "--lr"),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoint."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an OUTPUT that already holds a "
                                       "prior or checkpoint."),
        init_from: str = typer.Option(None, "--init-from", help="Start from this prior's weights (name or folder; "
                                      "same network preset, size and modality): fine-tuning, new optimiser."),
        seed: int = typer.Option(0, "--seed"),
        max_minutes: float = typer.Option(None, "--max-minutes", help="Wall-clock cap: stop cleanly and save."),
        patch: int = typer.Option(None, "--patch", help="Train on random NxN patches (the CPU path)."),
        channels: str = typer.Option("small", "--channels", help="Network preset: tiny, xs, small, medium."),
        schedule: str = typer.Option("linear", "--schedule", help="linear or cosine."),
        prediction: str = typer.Option("epsilon", "--prediction", help="epsilon or v."),
        val_every: int = typer.Option(500, "--val-every"),
        ckpt_every: int = typer.Option(1000, "--ckpt-every"),
        log_every: int = typer.Option(50, "--log-every"),
        immiscible: bool = typer.Option(False, "--immiscible", help="Immiscible noise assignment (needs scipy)."),
        rotate: float = typer.Option(0.0, "--rotate", help="Augmentation: rotate half of each batch by up to this "
                                     "many degrees (0: off; small data sets)."),
        zoom: float = typer.Option(0.0, "--zoom", help="Augmentation: scale half of each batch by up to 1 +- ZOOM "
                                   "(0: off)."),
        n_samples: int = typer.Option(16, "--samples", help="Unconditional samples in samples.png (0: none)."),
        sample_steps: int = typer.Option(50, "--sample-steps", help="DDIM steps for samples.png."),
        ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA decay of the saved weights."),
        warmup: int = typer.Option(200, "--warmup", help="Linear learning-rate warm-up steps."),
        no_bf16: bool = typer.Option(False, "--no-bf16", help="Disable bf16 autocast on CUDA."),
    ) -> None:
        """Train a diffusion prior on 2D slices and write it as a prior folder."""
        from medrecon.errors import InputError
        from medrecon.priors.data import read_manifest
        from medrecon.priors.train import train_prior

        paths = list(data or [])
        if manifest is not None:
            paths += read_manifest(manifest)
        if not paths:
            raise InputError("give training data with --data PATH (repeatable) or --manifest FILE")
        if modality is not None and modality not in ("ct", "mr", "us"):
            raise InputError(f"--modality must be ct, mr or us, got {modality!r}")
        report = train_prior(
            paths, output, modality=modality, size=size, val_data=list(val_data or []) or None, steps=steps,
            batch_size=batch_size, lr=lr, device=device, resume=resume, overwrite=overwrite, init_from=init_from, seed=seed,
            max_minutes=max_minutes,
            patch=patch, channels=channels, schedule=schedule, prediction=prediction, val_every=val_every,
            ckpt_every=ckpt_every, log_every=log_every, immiscible=immiscible, n_samples=n_samples,
            rotate_deg=rotate, zoom=zoom,
            ema_decay=ema_decay, warmup=warmup, bf16=not no_bf16, sample_steps=sample_steps,
        )
        typer.echo(f"prior written to {output} ({report['steps']} steps, {report['stopped_by']}, "
                   f"val loss {report['val_losses'][-1]['mean']:.4f}, {report['train_seconds']:.0f} s)")

    @app.command("sample-prior")
    def sample_prior_cmd(
        prior: str = typer.Argument(..., help="Prior name (ct-default) or folder."),
        n: int = typer.Option(16, "--n", help="Number of samples."),
        steps: int = typer.Option(50, "--steps", help="Sampler steps."),
        sampler: str = typer.Option("ddim", "--sampler", help="ddim or dpmpp2m."),
        eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0: deterministic)."),
        size: int = typer.Option(None, "--size", help="Image size (default: the prior's)."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        cache_interval: int = typer.Option(0, "--cache-interval", help="Feature caching: a full network pass every "
                                           "N steps, shallow passes with the cached deep feature in between (0: off)."),
        output: Path = typer.Option(Path("samples.png"), "--output", "-o", help="PNG grid to write."),
        npy: Path = typer.Option(None, "--npy", help="Also save the samples (physical units) as .npy."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output / --npy."),
    ) -> None:
        """Draw unconditional samples from a prior into a PNG grid."""
        from medrecon.errors import InputError
        from medrecon.io.atomic import check_outputs
        from medrecon.priors.model import load_prior
        from medrecon.priors.sample import check_sample_args, sample_prior, save_grid

        # before the prior is loaded: a bad option fails at once
        check_sample_args(n, sampler, eta, size=size, cache_interval=cache_interval, steps=steps)
        if output.suffix.lower() != ".png":
            raise InputError(f"--output is a PNG grid: give a .png file name, got {str(output)!r}")
        if npy is not None and npy.suffix.lower() != ".npy":
            raise InputError(f"--npy needs a .npy file name, got {str(npy)!r}")
        check_outputs({"--output": output, "--npy": npy}, {"prior": prior if Path(prior).exists() else None},
                      overwrite)
        p = load_prior(prior, device=device)
        imgs = sample_prior(p, n=n, steps=steps, sampler=sampler, seed=seed, size=size, eta=eta,
                            cache_interval=cache_interval)
        save_grid(imgs, output, title=f"{prior} {sampler} {steps} steps")
        if npy is not None:
            import numpy as np

            from medrecon.io.atomic import write_bytes_atomic
            from medrecon.priors.intensity import bound_kinds

            phys = imgs if p.config["intensity"]["kind"] in bound_kinds() else p.from_net(imgs)
            arr = phys[:, 0].numpy().astype(np.float32)
            write_bytes_atomic(npy, lambda f: np.save(f, arr))
        typer.echo(f"wrote {output}")

    @app.command("prepare-slices")
    def prepare_cmd(
        source: str = typer.Argument(..., help="DICOM folder or NIfTI file."),
        output: Path = typer.Option(..., "--output", "-o"),
        size: int = typer.Option(256, "--size"),
        holdout: str = typer.Option(None, "--holdout", help="Contiguous z block a:b held out."),
        modality: str = typer.Option(None, "--modality"),
        pixel_size: float = typer.Option(None, "--pixel-size"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace stacks already in --output."),
    ) -> None:
        """Write train/holdout slice stacks (.npy float16 + .json) from one volume."""
        from medrecon.priors.prepare import prepare_slices

        summary = prepare_slices(source, output, size, holdout, modality, pixel_size, overwrite=overwrite)
        typer.echo(json.dumps(summary, indent=1))

    @app.command("evaluate-prior")
    def evaluate_cmd(
        prior: str = typer.Argument(..., help="Prior name or folder."),
        holdout: Path = typer.Option(..., "--holdout", help="Held-out .npy slice stack."),
        train: Path = typer.Option(None, "--train", help="Training .npy stack (chooses the Gaussian width)."),
        output: Path = typer.Option(Path("prior_quality"), "--output", "-o", help="Folder for JSON + PNG."),
        device: str = typer.Option("auto", "--device"),
        max_slices: int = typer.Option(None, "--max-slices"),
    ) -> None:
        """Denoising MSE at t = 100/300/500 and prior-vs-Gaussian PSNR at t = 300 on held-out slices."""
        from medrecon.priors.evaluate import evaluate_prior

        res = evaluate_prior(prior, holdout, train, output, device=device, max_slices=max_slices)
        ev = res["evidence"]
        typer.echo(f"t=300: noisy {ev['psnr_noisy_db']:.2f} dB, Gaussian {ev['psnr_gaussian_db']:.2f} dB, "
                   f"prior {ev['psnr_prior_db']:.2f} dB; wrote {output}")

    @app.command("blend-priors")
    def blend_cmd(
        priors: list[str] = typer.Argument(..., help="Two or more priors (names or folders) fine-tuned from a "
                                           "common one, e.g. ct-default and a fine-tune of it."),
        weight: list[float] = typer.Option(..., "--weight", "-w", help="Weight of each prior, in order "
                                           "(repeatable; >= 0, summing to 1)."),
        output: Path = typer.Option(..., "--output", "-o", help="Prior folder to write."),
        val_data: list[str] = typer.Option(None, "--val-data", help="Slice stacks to measure the blend's "
                                           "fit_reference on (repeatable; default: none recorded)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output."),
    ) -> None:
        """Average the weights of priors fine-tuned from a common one (WiSE-FT) into a new prior."""
        from medrecon.priors.blend import blend_priors

        cfg = blend_priors(priors, weight, output, val_data=list(val_data or []) or None, overwrite=overwrite)
        parts = ", ".join(f"{r['weight']:g} x {r['prior']}" for r in cfg["training"]["blend"])
        typer.echo(f"prior written to {output} ({parts})")

    @app.command("prior-info")
    def info_cmd(prior: str = typer.Argument(..., help="Prior name or folder.")) -> None:
        """Print a prior's config.json."""
        from medrecon.priors.model import load_prior

        p = load_prior(prior)
        typer.echo(json.dumps(p.config, indent=1))


def train_main(argv: list[str] | None = None) -> None:
    """The train-prior command alone (same options), importing none of the other command
    modules (for a bare GPU machine running from source); ``argv`` defaults to ``sys.argv[1:]``."""
    from medrecon.errors import MedreconError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    try:
        app(args=["train-prior", *(sys.argv[1:] if argv is None else argv)], standalone_mode=True)
    except MedreconError as exc:
        if os.environ.get("MEDRECON_DEBUG"):
            raise
        print(f"medrecon: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    train_main()
