"""``medrecon evaluate``: a reconstruction scored against a reference, or ultrasound regions.

::

    medrecon evaluate recon.nii.gz --reference truth.nii.gz --json metrics.json --png figure.png
    medrecon evaluate dehazed.nii.gz --classical das.nii.gz --target 22.8,1.8,1 --background 22.8,1.8,2,4 \
        --dynamic-range 60 --png bmode.png          # ultrasound: gCNR, KS, speckle size, B-mode figure
"""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from medrecon.cli.reconstruct_cmd import _warning_printer
from medrecon.cli.volumes_cmd import allow_uneven_option


def _parse_window(text: str | None):
    from medrecon.errors import InputError

    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--window expects two numbers lo,hi (e.g. -1000,1000), got {text!r}") from None
    if not hi > lo:
        raise InputError(f"--window needs lo < hi, got {text!r}")
    return lo, hi


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        recon: Path = typer.Argument(..., help="Reconstruction (NIfTI or DICOM folder)."),
        reference: Path = typer.Option(None, "--reference", "-r",
                                       help="Reference volume (ground truth); needed for PSNR/SSIM, optional "
                                            "with regions."),
        window: str = typer.Option(None, "--window",
                                   help="lo,hi in physical units (default: -1000,1000 HU for CT, "
                                        "else the reference's min,max); values are clipped to it and "
                                        "the data range is its width."),
        json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON."),
        png: Path = typer.Option(None, "--png", help="Write a comparison figure (PNG); with regions a B-mode "
                                                     "figure (before, after, haze)."),
        classical: Path = typer.Option(None, "--classical",
                                       help="A classical reconstruction (volume, or a measurement .h5 / raw .mat "
                                            "to run the classical sampler on) to score and show alongside; with "
                                            "regions the 'before' image (KS before vs after)."),
        target: list[str] = typer.Option(None, "--target",
                                         help="Ultrasound target region z,x,r (depth, lateral, radius; mm unless "
                                              "--px); repeatable."),
        background: list[str] = typer.Option(None, "--background",
                                             help="Background region z,x,r or annulus z,x,r_in,r_out; one per "
                                                  "target or one for all; repeatable."),
        regions: Path = typer.Option(None, "--regions",
                                     help='JSON file with "targets" and "backgrounds": lists of z,x,r / '
                                          'z,x,r_in,r_out, and "units" (mm or px); see docs/ultrasound.md.'),
        px: bool = typer.Option(False, "--px", help="Regions are in pixels (row, column, radius), not mm."),
        haze: Path = typer.Option(None, "--haze", help="A haze estimate (volume) shown in the B-mode figure."),
        dynamic_range: float = typer.Option(60.0, "--dynamic-range",
                                            help="B-mode dynamic range in dB (figure, reference comparison)."),
        image: str = typer.Option("rf", "--image", help="What the volumes hold: rf (envelope taken along depth) "
                                                        "or envelope."),
        frame: int = typer.Option(0, "--frame", help="Frame shown in the B-mode figure."),
        bmode: bool = typer.Option(False, "--bmode", help="Ultrasound B-mode evaluation even without regions "
                                                          "(e.g. only the --png figure)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json / --png."),
        resample_reference: bool = typer.Option(
            False, "--resample-reference",
            help="When the reference lies on another grid than the reconstruction (a run of simulate --slices, "
                 "--resample or --pixel-size), resample it onto the reconstruction's grid first: slices matched "
                 "by position, area averaging where the reconstruction's pixels are larger; recorded in --json."),
        allow_uneven: bool = allow_uneven_option(),
        uncertainty: bool = typer.Option(False, "--uncertainty",
                                         help="Check the reconstruction's std component (written next to it by "
                                              "--samples N) against the reference: coverage at 1/2/3 std, the "
                                              "calibration curve, std-|error| correlation; --png draws mean, "
                                              "|error|, std and the curve (docs/uncertainty.md)."),
    ) -> None:
        """PSNR and SSIM against a reference, or (with regions) ultrasound gCNR, KS and speckle size; a figure."""
        from medrecon.errors import InputError

        us_mode = bool(bmode or target or background or regions or haze)
        if uncertainty:
            if us_mode or classical is not None:
                raise InputError("--uncertainty checks the std component against --reference; it does not take "
                                 "regions, --bmode or --classical")
            if reference is None:
                raise InputError("--uncertainty needs --reference REF (the ground truth to check the std against)")
        for p, what in ((recon, "reconstruction"), (reference, "reference"), (classical, "classical"),
                        (regions, "regions"), (haze, "haze")):
            if p is not None and not p.exists():
                raise InputError(f"no such {what} file or folder: {str(p)!r}")
        if not us_mode and reference is None:
            raise InputError("give --reference REF for PSNR/SSIM, or ultrasound regions (--target and "
                             "--background, or --regions FILE) for gCNR, or --bmode --png FILE for a B-mode figure")
        if resample_reference and (us_mode or reference is None):
            raise InputError("--resample-reference resamples --reference for PSNR/SSIM or --uncertainty; it does "
                             "not apply to regions or --bmode")
        if us_mode and window is not None:
            raise InputError("--window sets the PSNR/SSIM window; with regions use --dynamic-range")
        from medrecon.io.atomic import check_outputs

        check_outputs({"--json": json_out, "--png": png}, {"reconstruction": recon, "reference": reference,
                      "classical": classical, "regions file": regions, "haze": haze}, overwrite)
        if png is not None and png.suffix.lower() != ".png":
            raise InputError(f"--png needs a .png file name, got {str(png)!r}")
        old = warnings.showwarning
        warnings.showwarning = _warning_printer
        try:
            if uncertainty:
                _evaluate_uncertainty(recon, reference, _parse_window(window), json_out, png, resample_reference)
            elif us_mode:
                _evaluate_regions(recon, reference, classical, haze, target, background, regions, px,
                                  dynamic_range, image, frame, json_out, png)
            else:
                _evaluate_reference(recon, reference, _parse_window(window), classical, json_out, png,
                                    resample_reference, allow_uneven)
        finally:
            warnings.showwarning = old
        for what, p in (("metrics", json_out), ("figure", png)):
            if p is not None:
                typer.echo(f"wrote {what} {p}")


def _evaluate_uncertainty(recon, reference, win, json_out, png, resample_reference=False) -> None:
    from medrecon.calibration import evaluate_uncertainty

    res = evaluate_uncertainty(recon, reference, window=win, json_path=json_out, png=png, overwrite=True,
                               resample_reference=resample_reference)
    lo, hi = res["window"]
    o = res["overall"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    cal = res.get("uncertainty_calibration")
    how = ("raw spread of the draws" if not cal or not cal.get("applied")
           else f"std calibrated by the prior's factor {cal['factor']:.3g}")
    typer.echo(f"window [{lo:g}, {hi:g}]; {res['shape'][0]} slice(s), {o['pixels']} pixels; {how}")
    typer.echo("coverage at 1 / 2 / 3 std: " + " / ".join(pct(o["coverage"][k]) for k in ("1", "2", "3"))
               + " (nominal 68.3 / 95.4 / 99.7 %)")
    if res.get("expected_exact"):
        e = res["expected_exact"]
        typer.echo(f"an exact sampler with these {res['samples']} draws gives "
                   + " / ".join(pct(e[k]) for k in ("1", "2", "3")))
    typer.echo(f"std vs |error|: Pearson {num(o['pearson'])}, Spearman {num(o['spearman'])}; "
               f"mean std {num(o['mean_std'])}, RMSE {num(o['rmse'])} {res.get('units') or ''}".rstrip())
    n = len(res["per_slice"])
    if 1 < n <= 16:
        for k, sl in enumerate(res["per_slice"]):
            typer.echo(f"  slice {k:3d}: coverage at 2 std {pct(sl['coverage']['2'])}, "
                       f"Spearman {num(sl['spearman'])}")


def _evaluate_reference(recon, reference, win, classical, json_out, png, resample_reference=False,
                        allow_uneven=False) -> None:
    from medrecon.evaluation import evaluate

    res = evaluate(recon, reference, window=win, classical=classical, json_path=json_out, png=png,
                   overwrite=True,  # checked by the command before any work
                   resample_reference=resample_reference, allow_uneven=allow_uneven)
    if res.get("reference_resampled"):
        r = res["reference_resampled"]
        typer.echo(f"reference resampled from {'x'.join(map(str, r['from_shape']))} to the reconstruction's grid "
                   f"{'x'.join(map(str, r['to_shape']))} (" + ", ".join(f"{a}: {m}" for a, m in r["method"].items())
                   + ")")
    lo, hi = res["window"]

    def fmt(v):
        return "inf" if v is None else f"{v:.2f}"

    typer.echo(f"window [{lo:g}, {hi:g}] (data range {hi - lo:g}); {res['shape'][0]} slice(s)")
    typer.echo(f"reconstruction: PSNR {fmt(res['psnr'])} dB, SSIM {res['ssim']:.4f}")
    if "classical" in res:
        c = res["classical"]
        typer.echo(f"classical:      PSNR {fmt(c['psnr'])} dB, SSIM {c['ssim']:.4f}")
    if res.get("prior_fit"):
        f = res["prior_fit"]
        judged = (f"above {f['warn_above']:g} the study was unlike the prior's training data"
                  if f.get("warn_above") else "no threshold is calibrated for this modality")
        typer.echo(f"prior fit:      {f['score']:.2f} (recorded by the reconstruction; {judged})")
    n = len(res["psnr_per_slice"])
    if 1 < n <= 16:
        for k, (p, s) in enumerate(zip(res["psnr_per_slice"], res["ssim_per_slice"], strict=True)):
            typer.echo(f"  slice {k:3d}: PSNR {fmt(p)} dB, SSIM {s:.4f}")


def _region_metric_set():
    """The installed metric set (entry-point group ``medrecon.metrics``) that scores regions
    (``evaluate_regions`` and ``read_regions_file``; today the ultrasound plugin's ``us.regions``)."""
    from medrecon import registry
    from medrecon.errors import InputError

    found = {name: m for name, m in registry.find_metrics().items()
             if callable(getattr(m, "evaluate_regions", None)) and callable(getattr(m, "read_regions_file", None))}
    if not found:
        raise InputError("region metrics (--target, --background, --regions, --bmode) come from a plugin that "
                         "registers them in medrecon.metrics (e.g. medrecon-ultrasound); none is installed")
    if len(found) > 1:
        raise InputError(f"several plugins register region metrics ({', '.join(sorted(found))}); "
                         "uninstall all but one")
    return next(iter(found.values()))


def _evaluate_regions(recon, reference, classical, haze, target, background, regions, px, dynamic_range,
                      image, frame, json_out, png) -> None:
    from medrecon.errors import InputError

    metric_set = _region_metric_set()
    evaluate_regions, read_regions_file = metric_set.evaluate_regions, metric_set.read_regions_file
    targets, backgrounds = list(target or []), list(background or [])
    units = "px" if px else "mm"
    if regions is not None:
        t, b, file_units = read_regions_file(regions)
        if file_units is not None:
            if file_units not in ("mm", "px"):
                raise InputError(f"'units' in {str(regions)!r} must be mm or px, got {file_units!r}")
            if (target or background) and file_units != units:
                raise InputError(f"the regions file is in {file_units} but --target/--background are in {units}")
            units = file_units
        targets, backgrounds = targets + t, backgrounds + b
    res = evaluate_regions(recon, targets=targets, backgrounds=backgrounds, classical=classical, haze=haze,
                           reference=reference, units=units, dynamic_range_db=dynamic_range, image=image,
                           frame=frame, json_path=json_out, png=png)

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    dz, dx = res["spacing_mm"]
    typer.echo(f"{res['frames']} frame(s) {res['shape'][1]}x{res['shape'][2]}, pixel {dz:.4g} x {dx:.4g} mm "
               f"(depth x lateral); regions in {units}; gCNR on the envelope")
    if res["regions"]:
        typer.echo(f"{'region':<8} {'image':<7} {'gCNR':>6}  {'speckle axial x lateral (mm)':>28}")
    for k, reg in enumerate(res["regions"]):
        for name in ("before", "after"):
            if name in res:
                g = res[name]["gcnr"][k]
                sp = res[name]["speckle_mm"][k]
                typer.echo(f"{reg['name']:<8} {name:<7} {g['mean']:6.3f}  {f(sp['axial']):>13} x {f(sp['lateral'])}")
                if res["frames"] > 1:
                    typer.echo("  per frame: " + ", ".join(f"{v:.3f}" for v in g["per_frame"]))
        if "ks" in res:
            ks = res["ks"][k]
            typer.echo(f"{reg['name']:<8} KS before vs after: target {ks['target']['mean']:.3f}, "
                       f"background {ks['background']['mean']:.3f}")
    if "reference_comparison" in res:
        rc = res["reference_comparison"]
        typer.echo(f"against the reference ({rc['on']}): PSNR {f(rc['psnr'])} dB, SSIM {rc['ssim']:.4f}")
