"""``medrecon plugins list`` and ``medrecon plugins check NAME | --all``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    plugins = typer.Typer(help="List installed plugins and check operators against the contract.",
                          no_args_is_help=True)
    app.add_typer(plugins, name="plugins")

    @plugins.command("list")
    def list_(
        no_import: bool = typer.Option(False, "--no-import",
                                       help="Read metadata only; do not import plugins to check them."),
    ) -> None:
        """Show every plugin: name, group, distribution, version and import status."""
        from rich.console import Console
        from rich.table import Table

        from medrecon import registry

        table = Table(title="medrecon plugins")
        for col in ("name", "group", "distribution", "version", "status"):
            table.add_column(col)
        infos = registry.discover()
        names: dict[tuple[str, str], int] = {}
        for i in infos:
            names[(i.group, i.name)] = names.get((i.group, i.name), 0) + 1
        for i in infos:
            if names[(i.group, i.name)] > 1:
                st = "error: name claimed by two distributions"
            else:
                st = "not imported" if no_import else registry.status(i)
            style = "red" if st.startswith("error") else None
            table.add_row(i.name, i.group, i.distribution, i.version, st, style=style)
        Console(width=160).print(table)

    @plugins.command("check")
    def check(
        name: str = typer.Argument(None, help="Operator name (ct.parallel) or module:Class; omit with --all."),
        all_: bool = typer.Option(False, "--all", help="Check the example() of every installed operator."),
        param: list[str] = typer.Option(None, "--param", "-p",
                                        help="Operator parameter key=value (repeatable); default: its example()."),
        device: str = typer.Option("cpu", help="Device to build the operator on (cpu, cuda, cuda:N)."),
    ) -> None:
        """Run the conformance kit on operator NAME (its example() unless --param is given), or on
        every installed operator with --all; exit 1 if any check fails."""
        from medrecon.cli.params import parse_params
        from medrecon.devices import resolve_device
        from medrecon.errors import InputError
        from medrecon.operators import get_operator, operator_class
        from medrecon.testing import check_installed, check_operator, check_operator_class, summary_table

        if all_ == (name is not None):
            raise InputError("give an operator NAME or --all (not both)")
        if all_ and param:
            raise InputError("--param applies to one operator NAME, not to --all")
        params = parse_params(param)
        dev = resolve_device(device)
        if all_:
            reports = check_installed(device=dev)
            for r in reports:
                if not r.passed:
                    typer.echo(r.table() + "\n")
            typer.echo(summary_table(reports))
            raise typer.Exit(0 if all(r.passed for r in reports) else 1)
        if params:
            report = check_operator(get_operator(name, **params).to(dev))
        else:
            report = check_operator_class(operator_class(name), device=dev, label=name)
        typer.echo(report.table())
        raise typer.Exit(0 if report.passed else 1)
