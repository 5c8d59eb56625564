"""The wheels carry what the packages need: every data file inside a package folder (shipped priors,
the sample, manifests) is matched by its pyproject's package-data, and every distribution has the
README its metadata points to.  (.ci/wheels.sh builds, installs and smoke-tests the real wheels.)"""

from __future__ import annotations

import glob
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = [".", "plugins/ct", "plugins/mri", "plugins/ultrasound", "plugins/template"]


def _tracked(folder: Path) -> list[str]:
    try:
        p = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=folder,
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if p.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in p.stdout.split("\0") if f and (folder / f).is_file()]


@pytest.mark.parametrize("project", PROJECTS)
def test_package_data_covers_every_data_file(project):
    folder = ROOT / project
    conf = tomllib.loads((folder / "pyproject.toml").read_text())
    tool = conf.get("tool", {}).get("setuptools", {})
    includes = tool.get("packages", {}).get("find", {}).get("include", [])
    tops = {pat.rstrip("*") for pat in includes}
    assert tops, f"{project}: no packages.find include"
    patterns = tool.get("package-data", {})
    covered: set[str] = set()
    for package, pats in patterns.items():
        base = folder / package.replace(".", "/")
        for pat in pats:
            covered |= {os.path.relpath(f, folder) for f in glob.glob(str(base / pat), recursive=True)
                        if os.path.isfile(f)}
    data = [f for f in _tracked(folder)
            if f.split("/")[0] in tops and not f.endswith(".py") and "__pycache__" not in f]
    missing = sorted(set(data) - covered)
    assert missing == [], f"{project}: files in the package that its wheel would leave out: {missing}"


def test_the_core_wheel_lists_the_shipped_priors_and_the_sample():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pats = conf["tool"]["setuptools"]["package-data"]["medrecon"]
    files = {os.path.relpath(f, ROOT / "medrecon") for p in pats
             for f in glob.glob(str(ROOT / "medrecon" / p), recursive=True)}
    for need in ("data/ct_sample.nii.gz", "priors/shipped/ct-default/weights.safetensors",
                 "priors/shipped/ct-default/config.json", "priors/shipped/mr-default/weights.safetensors"):
        assert need in files


@pytest.mark.parametrize("project", PROJECTS)
def test_every_distribution_has_its_readme(project):
    conf = tomllib.loads((ROOT / project / "pyproject.toml").read_text())["project"]
    readme = conf.get("readme")
    assert readme, f"{project}: no readme (twine check --strict fails without a long description)"
    assert (ROOT / project / readme).is_file()


def test_the_cli_reference_of_the_docs_site_lists_every_command():
    """tools/mkdocs_hooks.py generates docs' cli.md from the CLI itself: every visible command and
    subcommand with its options, as --help prints them."""
    import importlib.util

    import typer

    from medrecon.cli import main as cli

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    text = hooks.cli_markdown()
    root = typer.main.get_command(cli.app)
    ctx = typer.Context(root, info_name="medrecon")
    names = [n for n in root.list_commands(ctx) if not root.get_command(ctx, n).hidden]
    assert len(names) >= 10
    for name in names:
        assert f"`medrecon {name}`" in text, name
    for sub in ("plugins list", "plugins check", "data verify"):
        assert f"`medrecon {sub}`" in text
    assert "`-o, --output <path>`" in text and "--sampler" in text and "[default: dds]" in text
