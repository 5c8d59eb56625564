"""``medrecon reconstruct`` and ``medrecon reconstruct-many``.

::

    medrecon reconstruct MEAS.h5 --sampler dds --prior ct-default --steps 50 --output recon.nii.gz
    medrecon reconstruct-many a.h5 b.h5 --sampler tv --output-dir results/
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer

from medrecon.cli.volumes_cmd import apply_max_memory, max_memory_option


def _warning_printer(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    typer.echo(f"medrecon: warning: {message}", err=True)


def _line_progress(every_s: float = 10.0):
    """Progress for logs (stderr not a terminal): one line at most every ``every_s`` seconds and at the end."""
    import time

    t0 = time.monotonic()
    state = {"t0": t0, "last": t0}

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - state["last"] >= every_s:
            state["last"] = now
            typer.echo(f"medrecon: {done}/{total} slices done ({now - state['t0']:.0f} s)", err=True)

    return cb


class _EchoHandler:
    """Show the engine's notes (logger ``medrecon``, INFO: e.g. the settings a prior recommended)
    on stderr as ``medrecon: ...`` lines while the command runs."""

    def __enter__(self):
        import logging

        class H(logging.Handler):
            def emit(self, record):
                typer.echo(f"medrecon: {record.getMessage()}", err=True)

        self.log, self.h = logging.getLogger("medrecon"), H(logging.INFO)
        self.level = self.log.level
        self.log.addHandler(self.h)
        if self.log.getEffectiveLevel() > logging.INFO:
            self.log.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.log.removeHandler(self.h)
        self.log.setLevel(self.level)
        return False


CACHE_HELP = ("Feature caching (dds, dps, reddiff): a full network pass every N steps, shallow passes with the "
              "cached deep feature in between; 0 = off (the default). Shorthand for -p cache_interval=N.")


def with_cache_interval(params: dict, n: int | None) -> dict:
    """``params`` with ``cache_interval`` = ``n`` (``--cache-interval``; None: as given); an
    :class:`~medrecon.errors.InputError` when ``-p cache_interval`` says otherwise."""
    if n is None:
        return params
    from medrecon.errors import InputError

    if "cache_interval" in params and str(params["cache_interval"]) != str(n):
        raise InputError(f"--cache-interval {n} and -p cache_interval={params['cache_interval']} disagree; give one")
    return {**params, "cache_interval": n}


def register(app: typer.Typer) -> None:
    from medrecon.cli.import_cmd import ImporterOptionsHelp

    @app.command("reconstruct", cls=ImporterOptionsHelp)  # --help lists the importers' --import-option names
    def reconstruct_cmd(
        measurement: Path = typer.Argument(..., help="Measurement file (.h5), or a raw file an installed importer reads."),
        output: Path = typer.Option(..., "--output", "-o",
                                    help="OUT.nii.gz (NIfTI), OUT_DIR/ (a derived DICOM series) or "
                                         "dicomweb://HOST/PATH (the derived series stored with STOW-RS)."),
        prior: str = typer.Option(None, "--prior", help="Prior name (ct-default, mr-default) or folder; "
                                  "needed by dds, dps, reddiff."),
        sampler: str = typer.Option("dds", "--sampler", "-s", help="classical, tv, dds, dps, reddiff, ..."),
        steps: int = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the prior's recommended "
                                  "count for the sampler, else the sampler's own)."),
        param: list[str] = typer.Option(None, "--param", "-p", help="Sampler parameter key=value (repeatable)."),
        cache_interval: int = typer.Option(None, "--cache-interval", help=CACHE_HELP),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (cuda when available)."),
        devices: str = typer.Option(None, "--devices",
                                    help="Several devices sharing the slice batches, e.g. cuda:0,cuda:1."),
        batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per sampler call (memory)."),
        seed: int = typer.Option(0, "--seed", help="Seed; slice k is seeded from (seed, k)."),
        samples: int = typer.Option(1, "--samples", min=1,
                                    help="Posterior draws per slice (dds, dps, reddiff): writes their mean, and "
                                         "their standard deviation to OUT.std.nii.gz (or OUT.std/)."),
        antithetic: bool = typer.Option(False, "--antithetic",
                                        help="With an even --samples: draws in antithetic pairs (the second of "
                                             "each on the negated noise of the first); their mean is much closer "
                                             "to the posterior mean."),
        draw_batch: int = typer.Option(1, "--draw-batch", min=1,
                                       help="With --samples: N draws run side by side in one batch of "
                                            "batch-size x N images (the same draws up to rounding; meant for a "
                                            "GPU that a few slices leave idle; N times the memory)."),
        amp: bool = typer.Option(False, "--amp", help="bf16 autocast of the prior network on CUDA."),
        no_calibration: bool = typer.Option(False, "--no-calibration",
                                            help="With --samples: write the draws' raw spread, without the std "
                                                 "calibration factor the prior stores (docs/uncertainty.md)."),
        no_recommended: bool = typer.Option(False, "--no-recommended",
                                            help="Ignore the settings the prior recommends for the sampler (its "
                                                 "config's 'recommended' section); use the sampler's defaults."),
        prior_scale: str = typer.Option("auto", "--prior-scale",
                                        help="auto: run the prior at its own pixel size when the data's pixels are "
                                             ">= 1.25x finer (detail from the data); native: at the data's grid."),
        resume: bool = typer.Option(False, "--resume", help="Continue a killed run from OUT.partial/."),
        like: Path = typer.Option(None, "--like", help="DICOM folder whose patient/study tags a DICOM output keeps."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        import_option: list[str] = typer.Option(None, "--import-option",
                                                help="Option key=value for a raw-data importer (repeatable); "
                                                     "`medrecon import --list-options` lists them."),
        max_memory: str = max_memory_option(),
        num_parts: int = typer.Option(1, "--num-parts", min=1,
                                      help="Split the slices into N contiguous parts (job arrays); see --part-id."),
        part_id: int = typer.Option(0, "--part-id", min=0,
                                    help="The part this job computes (0..N-1); the part that finishes the "
                                         "volume writes --output."),
        png: Path = typer.Option(None, "--png", help="Also write a figure: the middle slice of the classical "
                                                     "reconstruction, the result and (with --samples) the std."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (notes such as the prior's "
                                   "recommended settings are still printed)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Resolve every decision of the run and print the "
                                     "plan as JSON (sampler with the prior's recommendations, effective steps, "
                                     "devices, parts, outputs, settings hash); compute and write nothing."),
        stop_after: int = typer.Option(None, "--stop-after", hidden=True,
                                       help="Testing: stop after N slices, keeping the checkpoints."),
    ) -> None:
        """Reconstruct a volume from a measurement with a sampler and (for dds, dps, reddiff) a diffusion prior."""
        from medrecon.cli.params import parse_params
        from medrecon.errors import InputError

        apply_max_memory(max_memory)
        params = with_cache_interval(parse_params(param), cache_interval)
        if not measurement.exists():  # cheap checks first: no torch import yet
            raise InputError(f"no such measurement file: {str(measurement)!r}")
        from medrecon.io.registry import output_format

        web = output_format(output) == "dicomweb"  # a DICOMweb server: the run keeps the volume, then stores it
        if web:
            from medrecon.io.dicomweb import check_store_target

            if num_parts > 1 or resume or samples > 1:
                raise InputError("a dicomweb:// output takes one whole run of one draw: write --num-parts, --resume "
                                 "or --samples runs to a local file, then store it with medrecon convert")
            check_store_target(output)  # reachable, credentials accepted: before any work
        if like is not None and not like.exists():
            raise InputError(f"--like {str(like)!r} does not exist")
        if png is not None and png.suffix.lower() != ".png":
            raise InputError(f"--png needs a .png file name, got {str(png)!r}")
        if png is not None:  # an existing figure needs --overwrite; parents are created, as for --output
            from medrecon.io.atomic import check_target

            check_target(png, overwrite)
        from medrecon.samplers import sampler_class

        cls = sampler_class(sampler)  # unknown names fail here, with a suggestion
        if getattr(cls, "needs_prior", False) and prior is None:
            raise InputError(f"sampler {sampler!r} needs a diffusion prior: pass --prior NAME|PATH "
                             "(e.g. --prior ct-default), or use --sampler classical or tv")
        from medrecon.engine import execute, load_input, partial_path, plan

        old = warnings.showwarning
        warnings.showwarning = _warning_printer
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        try:
            m = load_input(measurement, **parse_params(import_option))
            try:
                with _EchoHandler():
                    run = plan(
                        m, sampler, prior, steps=steps, params=params, device=device, devices=devices,
                        batch_size=batch_size, seed=seed, amp=amp, output=None if web else output, resume=resume,
                        progress=False if quiet else (True if sys.stderr.isatty() else _line_progress()),
                        overwrite=overwrite,
                        like=str(like) if like is not None else None, num_parts=num_parts, part_id=part_id,
                        samples=samples, antithetic=antithetic, draw_batch=draw_batch,
                        recommended=not no_recommended, prior_scale=prior_scale, calibration=not no_calibration,
                    )
                    if dry_run:
                        typer.echo(run.to_json())
                        return
                    vol = execute(run, _stop_after=stop_after)
            except KeyboardInterrupt as exc:
                from medrecon.processes import Terminated

                term = isinstance(exc, Terminated)
                typer.echo(f"medrecon: {'terminated' if term else 'interrupted'}; finished slices are kept in "
                           f"{partial_path(output)}; continue with the same command and --resume", err=True)
                raise SystemExit(143 if term else 130) from None
        finally:
            warnings.showwarning = old
        if vol is None:  # a part that did not finish the volume
            from medrecon.engine import part_slices

            z = int(m.volume_shape[0]) if len(m.volume_shape) == 3 else int(m.y.shape[0])
            r = part_slices(z, num_parts, part_id)
            typer.echo(f"part {part_id} of {num_parts}: slices {r.start}..{r.stop - 1} finished in "
                       f"{partial_path(output)}; the part that finishes last writes {os.fspath(output)}")
            return
        if web:
            from medrecon.io.dicomweb import store_volume

            desc = f"{vol.meta.get('series_description') or ''} medrecon {sampler}".strip()[:64]
            output = store_volume(vol, output, like=like, description=desc)  # the stored series' URL
        info = vol.meta.get("reconstruction", {})
        resumed = info.get("resumed_slices", 0)
        extra = (f", {resumed} resumed ({'' if info.get('resumed_bit_identical') else 'not '}bit-identical to an "
                 "uninterrupted run)") if resumed else ""
        mean = (f" (mean of {samples} draws{', antithetic pairs' if antithetic else ''})" if samples > 1 else "")
        rec, shown = info.get("recommended"), ""
        if rec:
            from medrecon.priors.recommended import Recommendation

            shown = f" ({Recommendation(sampler, rec['params'], rec['steps']).describe()} recommended by the prior)"
        typer.echo(f"wrote {os.fspath(output)}: {vol.shape[0]} slice(s) {vol.shape[1]}x{vol.shape[2]}, "
                   f"sampler {sampler}{shown}{mean}, {info.get('steps')} steps, {info.get('seconds', 0):.1f} s{extra}")
        if getattr(vol, "components", None):
            from medrecon.engine.checks import component_path

            for name in vol.components:
                what = (f"the standard deviation of the {samples} draws" if samples > 1 and name == "std"
                        else f"the {name} component")
                cal = info.get("uncertainty_calibration") if name == "std" else None
                if cal:
                    what += (f", times the prior's calibration factor {cal['factor']:.3g}" if cal["applied"] else
                             f", raw (the prior's calibration factor {cal['factor']:.3g} was not applied)")
                typer.echo(f"wrote {os.fspath(component_path(output, name))}: {what}")
        if png is not None:
            from medrecon.figures import reconstruction_figure

            shown = reconstruction_figure(m, vol, png)
            typer.echo(f"wrote figure {os.fspath(png)}: slice {shown['slice']}, {', '.join(shown['panels'])}")

    @app.command("reconstruct-many")
    def reconstruct_many_cmd(
        measurements: list[Path] = typer.Argument(..., help="Measurement files (.h5) or raw files an installed "
                                                             "importer reads."),
        output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder for the results, one per study."),
        prior: str = typer.Option(None, "--prior", help="Prior name or folder (dds, dps, reddiff)."),
        sampler: str = typer.Option("dds", "--sampler", "-s", help="classical, tv, dds, dps, reddiff, ..."),
        steps: int = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the prior's recommended "
                                  "count for the sampler, else the sampler's own)."),
        param: list[str] = typer.Option(None, "--param", "-p", help="Sampler parameter key=value (repeatable)."),
        cache_interval: int = typer.Option(None, "--cache-interval", help=CACHE_HELP),
        parts: int = typer.Option(1, "--parts-per-study", min=1,
                                  help="Cut each study into N slice blocks, run as separate tasks."),
        dicom: bool = typer.Option(False, "--dicom", help="Write each result as a derived DICOM series folder."),
        use_ray: bool = typer.Option(False, "--ray", help="Run the tasks on Ray (pip install 'medrecon[ray]')."),
        address: str = typer.Option(None, "--address", help="Ray cluster to join (auto, ray://head:10001); "
                                                            "default: a local Ray instance."),
        workers: int = typer.Option(None, "--workers", min=1,
                                    help="Ray actors (default: one per GPU, else one per --cpus-per-worker CPUs)."),
        gpus_per_worker: float = typer.Option(None, "--gpus-per-worker", min=0.0,
                                              help="GPUs per Ray actor (default 1 when the cluster has GPUs)."),
        cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", min=1, help="CPUs (torch threads) per actor."),
        device: str = typer.Option("auto", "--device", help="In-process runs: cpu, cuda, cuda:N or auto."),
        batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Slices per sampler call (memory)."),
        seed: int = typer.Option(0, "--seed", help="Seed; slice k of every study is seeded from (seed, k)."),
        amp: bool = typer.Option(False, "--amp", help="bf16 autocast of the prior network on CUDA."),
        no_recommended: bool = typer.Option(False, "--no-recommended",
                                            help="Ignore the settings the prior recommends for the sampler."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute studies whose output exists."),
    ) -> None:
        """Reconstruct many studies (one output each), in-process or on a Ray cluster; rerun to continue."""
        from medrecon.cli.params import parse_params
        from medrecon.engine.distributed import reconstruct_many

        params = with_cache_interval(parse_params(param), cache_interval)
        opts = {"steps": steps, "params": params, "batch_size": batch_size, "seed": seed, "amp": amp,
                "recommended": not no_recommended}
        if not use_ray:
            opts["device"] = device
        t0 = __import__("time").monotonic()

        def report(rep, n, total):
            where = f" part {rep['part_id']}/{rep['num_parts']}" if rep["num_parts"] > 1 else ""
            msg = f"[{n}/{total}] {rep['measurement']}{where}: {rep['status']}"
            if rep["status"] == "failed":
                msg += f": {rep.get('error')}"
            elif rep["status"] != "exists":
                msg += f" ({rep['seconds']:.1f} s on {rep['host']})"
            if rep["status"] == "done":
                msg += f" -> {rep['output']}"
            typer.echo(msg, err=rep["status"] == "failed")

        old = warnings.showwarning
        warnings.showwarning = _warning_printer
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        try:
            reports = reconstruct_many([os.fspath(p) for p in measurements], sampler, prior, output_dir=output_dir,
                                       parts_per_study=parts, suffix="/" if dicom else ".nii.gz",
                                       use_ray=use_ray, address=address, workers=workers,
                                       gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                       overwrite=overwrite, on_task=report, **opts)
        finally:
            warnings.showwarning = old
        failed = sorted({r["measurement"] for r in reports if r["status"] == "failed"})
        n = len({r["measurement"] for r in reports})
        typer.echo(f"{n - len(failed)} of {n} studies reconstructed in {output_dir} "
                   f"({__import__('time').monotonic() - t0:.0f} s)" + (f"; failed: {', '.join(failed)}" if failed else ""))
        if failed:
            raise SystemExit(1)
