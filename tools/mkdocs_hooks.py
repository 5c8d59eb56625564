"""mkdocs hooks of the documentation site (``mkdocs.yml``: ``hooks: [tools/mkdocs_hooks.py]``).

* ``cli.md`` is generated at every build from the ``medrecon`` command itself: each command's
  usage, description and option table come from the same click objects that ``--help`` prints
  (``get_help_record``), so the reference cannot drift from the CLI.  Nothing is written to
  ``docs/``.
* Repository files the guides link to outside ``docs/`` (the plugins' READMEs, benchmark figures)
  are carried into the site under ``repo/<path>`` and the links rewritten to them, so the same
  markdown works on the repository host and in the site.
* Sphinx roles in docstrings (``:class:`~medrecon.Volume```) are shown as plain code.

``python tools/mkdocs_hooks.py`` prints the CLI reference (a check without mkdocs).
"""

from __future__ import annotations

import html
import inspect
import posixpath
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: site folder for repository files outside docs/
REPO_DIR = "repo"
#: inline links and images: ``](target#anchor "title")``
_LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<rest>[^)]*)\)")

_origin: dict[str, Path] = {}  # src_uri of a carried-in file -> its path in the repository


# ------------------------------------------------------------------ CLI reference
def _cell(text: str, code: bool = False) -> str:
    """One table cell: on one line, ``|`` escaped; plain text also HTML- and ``*``-escaped."""
    text = " ".join(str(text).split())
    if not code:
        text = html.escape(text, quote=False).replace("*", "\\*")
    return text.replace("|", "\\|")


def _usage(cmd, path: str, params) -> str:
    parts = [path, "[OPTIONS]"]
    for p in params:
        if p.param_type_name == "argument":
            name = (p.name or "").upper() + ("..." if p.nargs == -1 else "")
            parts.append(name if p.required else f"[{name}]")
    if hasattr(cmd, "list_commands"):
        parts.append("COMMAND [ARGS]...")
    return " ".join(parts)


def _command(cmd, ctx, path: str, depth: int, out: list[str]) -> None:
    import typer

    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
    out += [f"{'#' * min(depth, 6)} `{path}`", ""]
    if cmd.help:
        out += [inspect.cleandoc(cmd.help), ""]
    out += ["```", _usage(cmd, path, params), "```", ""]
    rows = [rec for p in params if (rec := p.get_help_record(ctx)) is not None]
    if rows:
        out += ["| argument / option | description |", "|---|---|"]
        out += [f"| `{_cell(opts, code=True)}` | {_cell(text)} |" for opts, text in rows]
        out.append("")
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                _command(sub, typer.Context(sub, info_name=name, parent=ctx), f"{path} {name}", depth + 1, out)


def cli_markdown() -> str:
    """The CLI reference as markdown, from the installed ``medrecon`` command (every command,
    group and subcommand; hidden ones left out)."""
    import typer

    from medrecon.cli import main as cli

    if not (cli.app.registered_commands or cli.app.registered_groups):
        cli._register()
    root = typer.main.get_command(cli.app)
    out = ["# Command-line reference", "",
           "Generated from the `medrecon` command itself when the site is built (the same text as each "
           "command's `--help`). Errors a user can cause print one sentence and exit with status 2.", ""]
    _command(root, typer.Context(root, info_name="medrecon"), "medrecon", 2, out)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ mkdocs hooks
def _targets(markdown: str, folder: Path):
    for m in _LINK.finditer(markdown):
        t = m.group("target")
        if "://" in t or t.startswith(("/", "mailto:")):
            continue
        yield (folder / t).resolve()


def on_files(files, config):
    from mkdocs.structure.files import File

    docs = Path(config["docs_dir"]).resolve()
    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    queue = [f for f in files.documentation_pages() if f.abs_src_path]
    seen: set[Path] = set()
    for readme in sorted(ROOT.glob("plugins/*/README.md")):  # the nav lists every plugin's README
        queue.append(_carry(files, config, readme))
        seen.add(readme)
    while queue:
        page = queue.pop()
        src = Path(page.abs_src_path).resolve()
        for target in _targets(src.read_text(encoding="utf-8"), src.parent):
            if target in seen or docs in target.parents or ROOT not in target.parents or not target.is_file():
                continue
            seen.add(target)
            new = _carry(files, config, target)
            if new.is_documentation_page():
                queue.append(new)
    return files


def _carry(files, config, target: Path):
    """Add the repository file ``target`` to the site as ``repo/<its path>``."""
    from mkdocs.structure.files import File

    new = File.generated(config, f"{REPO_DIR}/{target.relative_to(ROOT).as_posix()}", abs_src_path=str(target))
    files.append(new)
    _origin[new.src_uri] = target
    return new


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    src_uri = page.file.src_uri
    here = _origin.get(src_uri)
    if here is None:
        if page.file.abs_src_path is None:  # generated (cli.md)
            return markdown
        here = Path(page.file.abs_src_path).resolve()
    base = posixpath.dirname(src_uri)

    def rewrite(m: re.Match) -> str:
        t = m.group("target")
        if "://" in t or t.startswith(("/", "mailto:")):
            return m.group(0)
        target = (here.parent / t).resolve()
        if docs in target.parents:
            uri = target.relative_to(docs).as_posix()
        elif ROOT in target.parents and f"{REPO_DIR}/{target.relative_to(ROOT).as_posix()}" in _origin:
            uri = f"{REPO_DIR}/{target.relative_to(ROOT).as_posix()}"
        else:
            return m.group(0)
        return f"]({posixpath.relpath(uri, base or '.')}{m.group('rest')})"

    return _LINK.sub(rewrite, markdown)


#: a Sphinx role left in a docstring as mkdocstrings renders it: ``:class:`~a.b.C``` -> ``:class:<code>~a.b.C</code>``
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~)?([^<]*)</code>")


def on_page_content(html_text, page, config, files):
    """The docstrings write cross-references as Sphinx roles (``:func:`medrecon.simulate```): show
    them as code, ``~a.b.C`` as ``C``, without the role prefix."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                     html_text)


if __name__ == "__main__":
    print(cli_markdown(), end="")
