"""``medrecon calibrate-uncertainty``: measure and store a prior's std calibration factor per sampler.

::

    medrecon calibrate-uncertainty my-ct-prior --data heldout1.nii.gz --data heldout2.nii.gz \
        --operator ct.parallel --param n_views=8 --noise 0.01 --samples 8 --check other.nii.gz

Reconstructs simulated measurements of the held-out volumes with ``--samples`` draws for each
sampler (default: those the prior recommends for the operator), measures the factor that makes
the 2-std coverage 95.4 % (:func:`medrecon.calibration.calibrate_uncertainty`) and writes it into
the prior folder's config.json (section ``uncertainty_calibration``; the prior's fingerprint and
weights verification are unchanged).  ``medrecon reconstruct --samples N`` then multiplies the
std component by it; ``--no-calibration`` shows the raw spread.  See docs/uncertainty.md.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("calibrate-uncertainty")
    def calibrate_uncertainty_cmd(
        prior: Path = typer.Argument(..., help="Prior folder to calibrate (its config.json is updated; a shipped "
                                               "prior is never modified: copy it first)."),
        data: list[str] = typer.Option(None, "--data", help="Held-out reference volume (NIfTI or DICOM folder, "
                                                            "physical units) to calibrate on; repeatable."),
        operator: str = typer.Option(..., "--operator", help="Operator to simulate and reconstruct with, e.g. "
                                                             "ct.parallel or mri.sense."),
        param: list[str] = typer.Option(None, "--param", "-p", help="Operator parameter key=value (repeatable)."),
        noise: float = typer.Option(0.01, "--noise", help="Noise std as a fraction of the RMS of the clean "
                                                          "measurement (0.01 = 1 percent)."),
        sampler: list[str] = typer.Option(None, "--sampler", help="Sampler to calibrate (repeatable; default: "
                                                                  "those the prior recommends for the operator)."),
        samples: int = typer.Option(8, "--samples", help="Draws per slice (at least 2; even for antithetic pairs)."),
        independent: bool = typer.Option(False, "--independent", help="Independent draws instead of antithetic "
                                                                      "pairs."),
        steps: int = typer.Option(None, "--steps", help="Sampler steps (default: the prior's recommendation)."),
        slices: int = typer.Option(2, "--slices", help="Slices per volume, evenly spaced (0: all)."),
        check: list[str] = typer.Option(None, "--check", help="Other held-out volume to check the factor on "
                                                              "(repeatable)."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        batch_size: int = typer.Option(8, "--batch-size", help="Slices per sampler call."),
        json_out: Path = typer.Option(None, "--json", help="Also write what was stored as JSON."),
        overwrite_calibration: bool = typer.Option(False, "--overwrite-calibration",
                                                   help="Replace a stored calibration of the same sampler, "
                                                        "operator and steps."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print, but write nothing into the "
                                                              "prior."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json."),
    ) -> None:
        """Measure the std calibration factor of a prior's samplers on held-out volumes and store it."""
        from medrecon.calibration import calibrate_uncertainty
        from medrecon.cli.params import parse_params
        from medrecon.errors import InputError
        from medrecon.io.atomic import check_outputs

        if samples < 2:
            raise InputError(f"calibration needs at least two draws per slice (a spread), got --samples {samples}")
        for p in [*(data or []), *(check or [])]:
            if not Path(p).exists():
                raise InputError(f"no such reference volume: {p!r}")
        check_outputs({"--json": json_out}, {"prior": prior, **{f"--data {d}": d for d in data or []}}, overwrite)
        res = calibrate_uncertainty(prior, data, operator=operator, params=parse_params(param), noise=noise,
                                    samplers=sampler or None, samples=samples, antithetic=not independent,
                                    steps=steps, slices=slices or None, check=check, seed=seed, device=device,
                                    batch_size=batch_size, overwrite=overwrite_calibration, write=not dry_run,
                                    log=lambda msg: typer.echo(msg, err=True))
        for name, e in res.items():
            cov = e["coverage_raw"]
            line = (f"{name}: factor {e['factor']:.3f}; 2-std coverage {100 * cov['2']:.1f} % raw, "
                    f"{100 * e['coverage_calibrated_2']:.1f} % calibrated ({e['measured_on']['pixels']} pixels)")
            if "checked_on" in e:
                c = e["checked_on"]
                line += (f"; check set: {100 * c['coverage_raw']['2']:.1f} % raw, "
                         f"{100 * c['coverage_calibrated']['2']:.1f} % calibrated")
            typer.echo(line)
        if json_out is not None:
            from medrecon.calibration import write_json

            write_json(json_out, res)
            typer.echo(f"wrote {json_out}")
        typer.echo("dry run: nothing was written into the prior" if dry_run else
                   f"stored in {prior / 'config.json'} (uncertainty_calibration)")
