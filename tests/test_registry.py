"""Plugin discovery: metadata only, broken plugins isolated, duplicate names refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from medrecon import registry
from medrecon.errors import PluginError


def _fake_distribution(root, name, version, entry_points: str, module_src: dict[str, str] | None = None):
    """Write a real (unpacked) distribution to ``root``: a .dist-info with entry points, and modules."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for mod, src in (module_src or {}).items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def extra_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield tmp_path
    registry.refresh()


def test_first_party_plugins_are_discovered():
    names = {(i.group, i.name) for i in registry.discover()}
    assert ("medrecon.operators", "template.scale") in names
    assert ("medrecon.operators", "ct.parallel") in names
    assert ("medrecon.samplers", "dds") in names


def test_discovery_imports_neither_plugins_nor_torch():
    code = (
        "import sys, medrecon.registry as r; infos = r.discover();"
        "assert infos; bad = [m for m in ('torch', 'medrecon_template', 'medrecon_ct') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_broken_plugin_is_reported_by_name_and_others_still_work(extra_path):
    _fake_distribution(
        extra_path, "medrecon-broken", "9.9",
        """
        [medrecon.operators]
        broken.op = broken_mod:Nope
        """,
        {"broken_mod": "raise RuntimeError('this plugin is broken on purpose')\n"},
    )
    info = registry.lookup("medrecon.operators", "broken.op")
    assert info.distribution == "medrecon-broken"
    with pytest.raises(PluginError, match=r"'broken.op' from medrecon-broken 9.9 failed to import"):
        info.load()
    assert registry.status(info).startswith("error: RuntimeError")
    import medrecon

    assert medrecon.get_operator("template.scale", shape=[2, 2]).domain_shape == (2, 2)


def test_two_distributions_claiming_one_name_is_an_error_naming_both(extra_path):
    for dist in ("medrecon-one", "medrecon-two"):
        _fake_distribution(extra_path, dist, "1.0", "[medrecon.samplers]\nsame.name = x:y\n")
    with pytest.raises(PluginError) as err:
        registry.lookup("medrecon.samplers", "same.name")
    assert "medrecon-one" in str(err.value) and "medrecon-two" in str(err.value)


def test_unknown_name_suggests_closest():
    with pytest.raises(PluginError, match="did you mean 'template.scale'"):
        registry.lookup("medrecon.operators", "template.scael")


def test_entry_point_that_is_not_an_operator_is_refused(extra_path):
    _fake_distribution(extra_path, "medrecon-odd", "0.1", "[medrecon.operators]\nodd.op = odd_mod:thing\n",
                       {"odd_mod": "thing = 42\n"})
    import medrecon

    with pytest.raises(PluginError, match="does not name a medrecon Operator"):
        medrecon.get_operator("odd.op")
