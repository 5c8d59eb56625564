"""Plugin discovery: metadata only, broken plugins isolated, duplicate names refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
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


# ------------------------------------------------------------------ metric sets and intensity kinds
_FAKE_METRICS = '''
import json
from pathlib import Path

class FakeRegions:
    """A metric set: scores regions by counting them."""
    modality = "FAKE"

    @staticmethod
    def read_regions_file(path):
        d = json.loads(Path(path).read_text())
        return d["targets"], d.get("backgrounds", []), d.get("units")

    @staticmethod
    def evaluate_regions(recon, *, targets, backgrounds, json_path=None, **options):
        out = {"metric": "fake", "frames": 1, "shape": [1, 4, 4], "spacing_mm": [1.0, 1.0], "regions": [],
               "targets": [list(map(float, str(t).split(","))) for t in targets], "units": options["units"]}
        if json_path is not None:
            Path(json_path).write_text(json.dumps(out))
        return out

    @staticmethod
    def display(panels, *, std, spacing, title, path, dpi):
        Path(path).write_text(title)
        return ["fake " + name for name in panels]
'''


def _only_metric_sets_of(monkeypatch, distribution):
    """Hide every other distribution's metric sets (the ultrasound plugin's us.regions included)."""
    scan = registry._scan

    def only():
        return tuple(i for i in scan() if i.group != registry.METRICS or i.distribution == distribution)

    only.cache_clear = scan.cache_clear
    monkeypatch.setattr(registry, "_scan", only)


def test_a_registered_metric_set_is_found_by_evaluate(extra_path, monkeypatch, capsys):
    from medrecon.cli.main import main
    from medrecon.io import save_volume
    from medrecon.volume import Volume

    _fake_distribution(extra_path, "medrecon-fakemetric", "1.0",
                       "[medrecon.metrics]\nfake.regions = fake_metric_mod:FakeRegions\n",
                       {"fake_metric_mod": _FAKE_METRICS})
    _only_metric_sets_of(monkeypatch, "medrecon-fakemetric")
    assert registry.metric("fake.regions").modality == "FAKE"
    assert list(registry.find_metrics("fake")) == ["fake.regions"] and registry.find_metrics("CT") == {}
    save_volume(Volume(np.zeros((1, 4, 4), np.float32)), extra_path / "r.nii.gz")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(extra_path / "r.nii.gz"), "--target", "1,2,3", "--background", "1,2,4,5",
              "--json", str(extra_path / "m.json")])
    assert e.value.code in (0, None), capsys.readouterr().err
    res = json.loads((extra_path / "m.json").read_text())
    assert res["metric"] == "fake" and res["targets"] == [[1.0, 2.0, 3.0]] and res["units"] == "mm"


def test_evaluate_regions_without_a_metric_set_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from medrecon.cli.main import main
    from medrecon.io import save_volume
    from medrecon.volume import Volume

    _only_metric_sets_of(monkeypatch, "no-such-distribution")
    save_volume(Volume(np.zeros((1, 4, 4), np.float32)), tmp_path / "r.nii.gz")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(tmp_path / "r.nii.gz"), "--target", "1,2,3", "--background", "1,2,4,5"])
    assert e.value.code == 2 and "medrecon.metrics" in capsys.readouterr().err


def test_a_registered_display_shows_its_modality(extra_path, monkeypatch):
    from medrecon.figures import _modality_display

    _fake_distribution(extra_path, "medrecon-fakemetric", "1.0",
                       "[medrecon.metrics]\nfake.regions = fake_metric_mod:FakeRegions\n",
                       {"fake_metric_mod": _FAKE_METRICS})
    _only_metric_sets_of(monkeypatch, "medrecon-fakemetric")
    show = _modality_display("fake")
    assert show({"a": np.zeros((2, 2))}, std=None, spacing=(1, 1), title="t", path=extra_path / "f.txt",
                dpi=10) == ["fake a"]
    assert _modality_display("CT") is None and _modality_display(None) is None


def test_intensity_kinds_are_registered_and_drive_the_prior_map(extra_path):
    import torch

    from medrecon.priors.intensity import PERCENTILE, WINDOW, bound_kinds, intensity_kind
    from medrecon.priors.model import BOUND_KINDS, DiffusionPrior, default_config

    assert intensity_kind("window") is WINDOW and intensity_kind("percentile") is PERCENTILE
    assert "percentile" in BOUND_KINDS and "window" not in BOUND_KINDS and BOUND_KINDS == bound_kinds()
    _fake_distribution(extra_path, "medrecon-fakekind", "1.0", "[medrecon.intensities]\ncube = cube_kind:CUBE\n",
                       {"cube_kind": '''
class Cube:
    bound = True
    def problem(self, intensity):
        return None
    def bind(self, data, intensity):
        return -float(abs(data).max()), float(abs(data).max())
    def compress(self, v, intensity):
        return v ** 3
    def expand(self, u, intensity):
        return u.sign() * u.abs() ** (1 / 3)
CUBE = Cube()
'''})
    registry.refresh()
    from medrecon.priors import model

    assert "cube" in model.BOUND_KINDS
    cfg = default_config("mr", image_size=16, preset="tiny")
    cfg["intensity"] = {"kind": "cube"}
    prior = DiffusionPrior(cfg).for_volume(np.array([-2.0, 4.0]))
    x = torch.tensor([-4.0, 0.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.allclose(prior.to_net(x), torch.tensor([-1.0, 0.0, 0.125, 1.0], dtype=torch.float64))
    assert torch.allclose(prior.from_net(prior.to_net(x)), x)
    from medrecon.errors import FileFormatError

    cfg["intensity"] = {"kind": "nope"}
    with pytest.raises(FileFormatError, match="unknown intensity kind 'nope'"):
        DiffusionPrior(cfg)


def test_operator_class_by_module_and_class_name():
    from medrecon.operators import Operator, operator_class
    from medrecon.operators.matrix import MatrixOperator

    assert operator_class("medrecon.operators.matrix:MatrixOperator") is MatrixOperator
    assert issubclass(operator_class("template.scale"), Operator)
    with pytest.raises(PluginError, match="cannot load operator class 'no_such_module_x:Op'"):
        operator_class("no_such_module_x:Op")
    with pytest.raises(PluginError, match="does not name a medrecon Operator subclass"):
        operator_class("json:dumps")
