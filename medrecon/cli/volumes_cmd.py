"""``medrecon info``, ``medrecon convert`` and ``medrecon simulate``.

Imports of numpy-heavy and torch-using modules happen inside the commands so
that ``medrecon --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import warnings
from pathlib import Path

import typer

#: help of ``--max-memory``, shared by the commands that read files
MAX_MEMORY_HELP = ("Most memory one file read may take, e.g. 8G or 512M (default: $MEDRECON_MAX_MEMORY, else "
                   "half the available memory); larger files are refused before they are read.")


#: help of ``--allow-uneven``, shared by the commands that read volumes
ALLOW_UNEVEN_HELP = ("Read a DICOM series whose slices are unevenly spaced (a missing slice, variable spacing) "
                     "resampled to even spacing at the median step (linear interpolation in position; the first "
                     "slice keeps its place; a warning names the steps) instead of refusing it.")


def allow_uneven_option():
    """The ``--allow-uneven`` flag (see :func:`medrecon.io.load_volume`)."""
    return typer.Option(False, "--allow-uneven", help=ALLOW_UNEVEN_HELP)


def max_memory_option():
    """The ``--max-memory SIZE`` option (see :mod:`medrecon.io.budget`)."""
    return typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP)


def apply_max_memory(size: str | None) -> None:
    """Set the budget of this process and its workers from ``--max-memory`` (None: unchanged)."""
    if size is not None:
        from medrecon.io.budget import set_max_memory

        set_max_memory(size)


@contextlib.contextmanager
def _warnings_as_lines():
    """Show warnings raised inside (geometry notes) as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
                    continue
                msg = str(w.message).splitlines()[0]
                if msg not in seen:
                    seen.add(msg)
                    typer.echo(f"medrecon: warning: {msg}", err=True)


def _fmt(v, nd=4) -> str:
    return ", ".join(f"{float(x):.{nd}g}" for x in v)


def _volume_lines(vol) -> list[str]:
    import numpy as np

    m = vol.meta
    z, y, x = vol.shape
    dz, dy, dx = vol.spacing
    lines = [
        f"volume: {z} slices x {y} rows x {x} columns (Z, Y, X)",
        f"voxel size: dz={dz:.4g} dy={dy:.4g} dx={dx:.4g} mm",
        f"modality: {m.get('modality') or '?'}   units: {m.get('units') or '?'}",
        f"values: min {float(vol.data.min()):.6g}, max {float(vol.data.max()):.6g}, "
        f"mean {float(vol.data.mean(dtype=np.float64)):.6g}",
        "affine (voxel i=column, j=row, k=slice -> RAS+ mm):",
    ]
    lines += ["  [" + "  ".join(f"{v:10.4f}" for v in row) + "]" for row in vol.affine]
    for key, label in (("series_uid", "series UID"), ("series_description", "series description"),
                       ("transfer_syntax", "transfer syntax"), ("gantry_tilt_deg", "gantry tilt (deg)"),
                       ("source_format", "format")):
        if m.get(key) not in (None, "", 0.0):
            lines.append(f"{label}: {m[key]}")
    r = m.get("resampled_slices")
    if isinstance(r, dict):  # --allow-uneven: what the series was before it was made even
        lines.append(f"slices resampled (--allow-uneven): {r.get('from_n')} read ({r.get('steps')}) -> "
                     f"{r.get('to_n')} at {r.get('to_spacing_mm')} mm")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        path: Path = typer.Argument(..., help="A DICOM folder or file, a NIfTI file, a measurement .h5 file, or "
                                    "dicomweb://HOST/PATH?study=UID&series=UID."),
        series: str = typer.Option(None, "--series", "-s", help="Series index, UID or description."),
        allow_uneven: bool = allow_uneven_option(),
        max_memory: str = max_memory_option(),
    ) -> None:
        """Describe a volume, the series in a DICOM folder, or a measurement file."""
        apply_max_memory(max_memory)
        from medrecon.errors import FileFormatError
        from medrecon.io import load_volume, volume_format
        from medrecon.io.webclient import is_dicomweb_url

        if not path.exists() and not is_dicomweb_url(path):  # a dicomweb:// URL: read below
            raise FileFormatError(f"no such file or folder: {str(path)!r}")
        fmt = volume_format(path)
        if fmt == "measurement":
            from medrecon.measurement import load_measurement

            m = load_measurement(path)
            typer.echo(f"measurement: {path}")
            typer.echo(f"y: shape {tuple(m.y.shape)}, dtype {m.y.dtype}")
            typer.echo(f"operator: {m.operator_spec.get('name')} {m.operator_spec.get('params', {})}")
            typer.echo(f"noise std: {m.noise_std:.6g} (absolute)")
            typer.echo(f"volume shape (Z, Y, X): {m.volume_shape}   units: {m.units or '?'}")
            for k, v in m.provenance.items():
                typer.echo(f"provenance.{k}: {v}")
            from medrecon.engine.checks import validate_measurement

            validate_measurement(m)  # described above; a file no run can use exits 2 with the reason
            return
        with _warnings_as_lines():
            if fmt == "dicom":
                from medrecon.io.dicom import scan_series

                found = scan_series(path)
                if len(found) > 1 and series is None:
                    typer.echo(f"{path}: {len(found)} series (choose one with --series INDEX|UID|DESCRIPTION)")
                    typer.echo(f"{'#':>3}  {'modality':8}  {'slices':>6}  {'matrix':>9}  description / UID")
                    for i, s in enumerate(found):
                        typer.echo(f"{i:>3}  {s.modality or '?':8}  {s.n_slices:>6}  "
                                   f"{s.rows}x{s.columns:<5}  {s.description or '(none)'} / {s.key}")
                    return
                from medrecon.io.dicom import UnevenSpacingError

                try:
                    vol = load_volume(path, series=series, allow_uneven=allow_uneven)
                except UnevenSpacingError as exc:  # described, not refused: info is how one finds out
                    info = found[0] if len(found) == 1 else None
                    typer.echo(f"{path}")
                    if info is not None:
                        typer.echo(f"series: {info.summary()}")
                    typer.echo(f"geometry: {exc}")
                    return
            else:
                vol = load_volume(path, series=series)
        typer.echo(vol.meta["source"] if vol.meta.get("source_format") == "dicomweb" else f"{path}")
        for line in _volume_lines(vol):
            typer.echo(line)

    @app.command("convert")
    def convert(
        input: Path = typer.Argument(..., help="DICOM folder / file or NIfTI file to read."),
        output: Path = typer.Argument(..., help="*.nii / *.nii.gz, or a folder name for a derived DICOM series."),
        series: str = typer.Option(None, "--series", "-s", help="Series index, UID or description."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        like: Path = typer.Option(None, "--like",
                                  help="DICOM folder whose patient / study tags a DICOM output keeps."),
        allow_uneven: bool = allow_uneven_option(),
        max_memory: str = max_memory_option(),
    ) -> None:
        """Convert between DICOM series and NIfTI (geometry and values preserved)."""
        apply_max_memory(max_memory)
        from medrecon.io import load_volume, save_volume
        from medrecon.io.atomic import check_outputs

        check_outputs({"": output}, {"input": input, "--like series": like}, overwrite)  # before reading
        with _warnings_as_lines():
            vol = load_volume(input, series=series, allow_uneven=allow_uneven)
            out = save_volume(vol, output, overwrite=overwrite, like=like)
        z, y, x = vol.shape
        typer.echo(f"wrote {out} ({z} x {y} x {x}, {vol.meta.get('units') or 'no units'})")

    @app.command("simulate")
    def simulate(
        operator: str = typer.Argument(..., help="Operator name, e.g. ct.parallel or mri.cartesian."),
        input: Path = typer.Option(..., "--input", "-i", help="Volume: DICOM folder or NIfTI file."),
        output: Path = typer.Option(..., "--output", "-o", help="Measurement file to write (.h5)."),
        param: list[str] = typer.Option(None, "--param", "-p",
                                        help="Operator parameter key=value (repeatable); the image "
                                             "shape is taken from the volume."),
        noise: float = typer.Option(0.0, "--noise",
                                    help="White Gaussian noise (complex for complex y) with std = NOISE x "
                                         "RMS of the clean measurement A x (e.g. 0.01 = 1 percent)."),
        absolute: bool = typer.Option(False, "--absolute-noise",
                                      help="Read --noise as an absolute std in the units of y instead."),
        relative: bool = typer.Option(False, "--relative-noise", hidden=True,
                                      help="Accepted for old scripts: relative is the default."),
        resample: str = typer.Option(None, "--resample",
                                     help="Resample each slice in-plane to NYxNX first (same field of "
                                          "view; area averaging when shrinking)."),
        pixel_size: float = typer.Option(None, "--pixel-size",
                                         help="Resample each slice in-plane to about this pixel size (mm) "
                                              "first (same field of view)."),
        seed: int = typer.Option(0, "--seed", help="Noise seed (slice k uses (seed, k))."),
        slices: str = typer.Option(None, "--slices", help="Slice range a:b (k axis, end excluded)."),
        series: str = typer.Option(None, "--series", "-s", help="Series index, UID or description."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        batch_size: int = typer.Option(16, "--batch-size", help="Slices per operator call."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        allow_uneven: bool = allow_uneven_option(),
        max_memory: str = max_memory_option(),
    ) -> None:
        """Simulate y = A x (+ noise) for each slice of a volume (or the whole volume, 3D operators) and write a measurement file."""
        apply_max_memory(max_memory)
        from medrecon.cli.params import parse_params
        from medrecon.errors import InputError
        from medrecon.io import load_volume
        from medrecon.io.atomic import check_target
        from medrecon.measurement import save_measurement
        from medrecon.simulation import simulate as _simulate

        if output.suffix.lower() not in (".h5", ".hdf5"):
            raise InputError(f"the measurement output must end in .h5, got {str(output)!r}")
        check_target(output, overwrite)
        params = parse_params(param)
        if absolute and relative:
            raise InputError("--absolute-noise and --relative-noise contradict each other; give one")
        if resample is not None and pixel_size is not None:
            raise InputError("give one of --resample NYxNX and --pixel-size MM, not both")
        with _warnings_as_lines():
            vol = load_volume(input, series=series, allow_uneven=allow_uneven)
        if resample is not None or pixel_size is not None:
            from medrecon.simulation import resample_inplane

            old_shape = vol.shape
            vol = resample_inplane(vol, shape=resample, pixel_size=pixel_size)
            _, dy, dx = vol.spacing
            typer.echo(f"resampled slices {old_shape[1]}x{old_shape[2]} -> {vol.shape[1]}x{vol.shape[2]} "
                       f"({dy:.4g} x {dx:.4g} mm pixels)")
        command = "medrecon " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        m = _simulate(vol, operator, params, noise_std=noise, seed=seed, relative=not absolute,
                      slices=slices, batch_size=batch_size, device=device, command=command)
        save_measurement(m, output, overwrite=overwrite)
        typer.echo(f"wrote {output}: y {tuple(m.y.shape)} {m.y.dtype}, operator {operator}, "
                   f"noise std {m.noise_std:.4g}")
