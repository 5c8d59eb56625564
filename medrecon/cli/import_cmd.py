"""``medrecon import``: turn a raw scanner file into a measurement file through an importer.

::

    medrecon import gre_kspace_lin_cha_col.npy --output gre.h5
    medrecon import file_brain.h5 --output brain12.h5 --import-option slice=12
    medrecon reconstruct gre.h5 --sampler sense --output gre.nii.gz

Any installed importer (group ``medrecon.importers``: ``ct.dxchange``, ``mri.kspace``, ...)
that recognises the file reads it; ``--import-option key=value`` options go to it.  The
measurement file is written atomically and holds everything needed to reconstruct.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand

from medrecon.cli.volumes_cmd import apply_max_memory, max_memory_option


class ImporterOptionsHelp(TyperCommand):
    """A command whose ``--help`` ends with every installed importer's ``--import-option`` names
    and defaults, computed only when the help is shown (the CLI's start stays light)."""

    @property
    def epilog(self) -> str:
        return "Importer options (--import-option key=value): " + "; ".join(
            f"{name}: {shown}" for name, shown in _importer_options())

    @epilog.setter
    def epilog(self, value) -> None:  # set by click's constructor; the text is computed when shown
        pass


def register(app: typer.Typer) -> None:
    @app.command("import", cls=ImporterOptionsHelp)
    def import_cmd(
        raw: Path = typer.Argument(None, help="Raw scanner file (k-space .h5/.npy, projections .h5, ...).",
                                   show_default=False),
        output: Path = typer.Option(None, "--output", "-o", help="Measurement file to write (.h5); required."),
        import_option: list[str] = typer.Option(None, "--import-option",
                                                help="Option key=value for the importer (repeatable); "
                                                     "--list-options shows each importer's."),
        list_options: bool = typer.Option(False, "--list-options",
                                          help="List the installed importers and their options, then exit."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        max_memory: str = max_memory_option(),
    ) -> None:
        """Import a raw scanner file as a measurement file (y + operator spec + geometry)."""
        from medrecon.cli.params import parse_params
        from medrecon.errors import InputError

        apply_max_memory(max_memory)
        if list_options:
            _list_options()
            return
        if raw is None or output is None:
            raise InputError("give the raw file and --output MEAS.h5 (or --list-options to see the importers' "
                             "options)")

        if not raw.exists():
            raise InputError(f"no such file: {str(raw)!r}")
        from medrecon.engine import load_input
        from medrecon.engine.checks import validate_measurement
        from medrecon.io.atomic import check_outputs
        from medrecon.measurement import is_measurement_file, save_measurement

        check_outputs({"--output": output}, {"raw file": raw}, overwrite)
        options = parse_params(import_option)
        if options and raw.is_file() and is_measurement_file(raw):
            raise InputError(f"{str(raw)!r} is already a measurement file: --import-option applies to raw files "
                             "that an importer reads")
        m = load_input(raw, **options)
        validate_measurement(m)  # written only if a run can use it
        m.provenance.setdefault("command", "medrecon import")
        save_measurement(m, output, overwrite=overwrite)
        op = m.operator_spec.get("name")
        typer.echo(f"wrote {output}: y {tuple(m.y.shape)} {m.y.dtype}, operator {op}, "
                   f"volume {tuple(m.volume_shape)}, importer {m.provenance.get('importer', '-')}")


def _importer_options() -> list[tuple[str, str]]:
    """``(importer name, "option=default, ...")`` for every installed importer."""
    from medrecon.engine.inputs import importer_options, importers

    out = []
    for name, imp in importers():
        opts = importer_options(imp)
        out.append((name, "any keyword" if opts is None else
                    ", ".join(f"{k}={v!r}" for k, v in opts.items()) or "none"))
    return out


def _list_options() -> None:
    """One line per installed importer: its name and ``option=default`` list."""
    for name, shown in _importer_options():
        typer.echo(f"{name}: {shown}")
