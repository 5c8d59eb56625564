"""``medrecon data list / verify / fetch``: the data set manifests (see medrecon.datasets)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Data set manifests: list, verify checksums, fetch.", no_args_is_help=True)

_ROOT_HELP = "Data root holding one folder per data set (default $MEDRECON_DATA, else ../shared/data)."
_MAN_HELP = "Extra folder of manifest JSON files (searched before the shipped ones)."


@data_app.command("list")
def list_cmd(
    root: Path = typer.Option(None, "--root", help=_ROOT_HELP),
    manifests: Path = typer.Option(None, "--manifests", help=_MAN_HELP),
) -> None:
    """Table of the known data sets and whether each is present under the data root."""
    from medrecon.datasets import default_root, list_manifests, presence

    root_ = root if root is not None else default_root()
    rows = []
    for m in list_manifests(manifests):
        n = len(m["files"])
        size = sum(f["bytes"] for f in m["files"]) / 1e6
        lic = str(m["licence"]) + (" [local only]" if m.get("local_evaluation_only") else "")
        rows.append((m["name"], str(m["modality"]), lic, f"{n} ({size:.1f} MB)", presence(m, root_)))
    head = ("name", "modality", "licence", "files", "present")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    typer.echo(f"(data root: {root_})")


@data_app.command("verify")
def verify_cmd(
    name: str = typer.Argument(..., help="Data set name (see medrecon data list)."),
    root: Path = typer.Option(None, "--root", help=_ROOT_HELP),
    manifests: Path = typer.Option(None, "--manifests", help=_MAN_HELP),
) -> None:
    """Check the sha256 of every file of a data set; exit 1 listing missing or changed files."""
    from medrecon.datasets import verify

    r = verify(name, root, manifests)
    n = len(r["ok"]) + len(r["missing"]) + len(r["mismatch"])
    for path in r["missing"]:
        typer.echo(f"MISSING   {path}")
    for path, why in r["mismatch"]:
        typer.echo(f"MISMATCH  {path}: {why}")
    if r["extra"]:
        typer.echo(f"({len(r['extra'])} file(s) not in the manifest ignored: {', '.join(r['extra'][:5])}"
                   f"{' ...' if len(r['extra']) > 5 else ''})")
    if r["missing"] or r["mismatch"]:
        typer.echo(f"{name}: FAILED, {len(r['missing'])} missing and {len(r['mismatch'])} mismatched of {n} "
                   f"file(s) in {r['folder']}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{name}: OK, {n} file(s) match their sha256 in {r['folder']}")


@data_app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="Data set name (see medrecon data list)."),
    dest: Path = typer.Option(..., "--dest", help="Folder to download into (files go to DEST/NAME)."),
    manifests: Path = typer.Option(None, "--manifests", help=_MAN_HELP),
) -> None:
    """Download a data set through pooch, checking every file's sha256."""
    from medrecon.datasets import fetch

    out = fetch(name, dest, manifests)
    typer.echo(f"{name}: fetched into {out} (sha256 verified)")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
