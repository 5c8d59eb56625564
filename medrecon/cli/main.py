"""Entry point of the ``medrecon`` command.

Errors a user can cause are :class:`medrecon.errors.MedreconError`; they are
printed as one sentence on stderr, without a traceback, and the process exits
with status 2.  ``MEDRECON_DEBUG=1`` shows the traceback instead.  Usage errors
(a missing argument, ``--steps abc``) are one sentence with exit status 2 too.
Ctrl-C exits with 130, SIGTERM with 143 (a run keeps its finished slices).
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
    for mod in ("volumes_cmd", "priors_cmd", "reconstruct_cmd", "evaluate_cmd", "import_cmd", "data_cmd",
                "uncertainty_cmd"):
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
        rc = app(args=argv, standalone_mode=False)
    except MedreconError as exc:
        if os.environ.get("MEDRECON_DEBUG"):
            raise
        fail(str(exc))
    except KeyboardInterrupt as exc:
        typer.echo("medrecon: " + ("terminated" if isinstance(exc, Terminated) else "interrupted"), err=True)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
    except Exception as exc:
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        # the command-line parser's own errors (click's UsageError and kin): one sentence too
        if type(exc).__name__ == "Abort":  # pragma: no cover - Ctrl-C at a prompt
            sys.exit(130)
        if not str(exc.format_message()).strip():  # `medrecon` alone: the help was printed
            sys.exit(exc.exit_code)
        fail(_usage_sentence(exc, argv if argv is not None else sys.argv[1:]))
    sys.exit(rc if isinstance(rc, int) else 0)  # as click's standalone mode: always SystemExit


def _usage_sentence(exc, argv: list[str]) -> str:
    """A parser error as one line, pointing at the command's ``--help``."""
    msg = " ".join(str(exc.format_message()).split())
    cmd = [a for a in argv[:2] if not a.startswith("-")]
    known = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    cmd = cmd[:1] if cmd[:1] and cmd[0] in known else []
    if len(cmd) == 1 and cmd[0] in {g.name for g in app.registered_groups} and len(argv) > 1:
        cmd.append(argv[1])
    return f"{msg.rstrip('.')} (see: medrecon {' '.join(cmd + ['--help'])})"


if __name__ == "__main__":  # pragma: no cover
    main()
