"""Entry point of the ``medrecon`` command.

Errors a user can cause are :class:`medrecon.errors.MedreconError`; they are
printed as one sentence on stderr, without a traceback, and the process exits
with status 2.  ``MEDRECON_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from medrecon.errors import MedreconError

app = typer.Typer(
    name="medrecon",
    help="Reconstruct medical images from scanner measurements with diffusion priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each command module defines register(app); imports stay light (no torch at import).
    from medrecon.cli import plugins_cmd

    plugins_cmd.register(app)
    for mod in ("volumes_cmd", "priors_cmd", "reconstruct_cmd", "import_cmd", "data_cmd"):
        try:
            module = __import__(f"medrecon.cli.{mod}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"medrecon.cli.{mod}":
                raise
            continue
        module.register(app)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        import medrecon

        typer.echo(f"medrecon {medrecon.__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def fail(message: str) -> None:
    """Print one sentence on stderr and exit with status 2."""
    typer.echo(f"medrecon: error: {message}", err=True)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors exit 2 with one sentence."""
    from medrecon.processes import Terminated, sigterm_as_interrupt

    _register()
    sigterm_as_interrupt()
    try:
        app(args=argv, standalone_mode=True)
    except MedreconError as exc:
        if os.environ.get("MEDRECON_DEBUG"):
            raise
        fail(str(exc))
    except KeyboardInterrupt as exc:
        typer.echo("medrecon: " + ("terminated" if isinstance(exc, Terminated) else "interrupted"), err=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)


if __name__ == "__main__":  # pragma: no cover
    main()
