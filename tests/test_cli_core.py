"""The CLI as a real process: plugin listing, conformance checks, one-sentence errors."""

from __future__ import annotations

import subprocess
import sys


def medrecon(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "medrecon.cli.main", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_plugins_list_shows_name_group_distribution_version_status():
    out = medrecon("plugins", "list", check=True).stdout
    for word in ("template.scale", "medrecon.operators", "medrecon-template", "0.1.0", "ok"):
        assert word in out


def test_plugins_check_passes_for_template():
    proc = medrecon("plugins", "check", "template.scale", "--param", "shape=[8,6]", "--param", "factor=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "adjoint-float64" in proc.stdout and "PASSED" in proc.stdout


def test_unknown_operator_exits_2_with_one_line_and_suggestion():
    proc = medrecon("plugins", "check", "template.scal")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'template.scale'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_param_exits_2():
    proc = medrecon("plugins", "check", "template.scale", "--param", "factor")
    assert proc.returncode == 2 and "key=value" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_cuda_is_one_sentence():
    import torch

    if torch.cuda.is_available():
        return
    proc = medrecon("plugins", "check", "template.scale", "--device", "cuda")
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr


def test_version():
    assert medrecon("--version", check=True).stdout.startswith("medrecon ")


def test_plugins_check_uses_the_example_without_params():
    proc = medrecon("plugins", "check", "mri.sense")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "example" in proc.stdout and "PASSED" in proc.stdout


def test_plugins_check_all_passes_on_every_builtin_operator():
    proc = medrecon("plugins", "check", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("ct.parallel", "ct.fan", "ct.cone", "mri.cartesian", "mri.sense", "us.planewave", "us.haze",
                 "template.scale"):
        assert any(line.startswith(name) and " pass " in line for line in proc.stdout.splitlines()), name
    assert "operators PASSED" in proc.stdout


BROKEN = '''
import torch
from medrecon.operators import Operator, Param


class Broken(Operator):
    name = "broken.shift"
    PARAMS = (Param("shape", [4, 5], grid="shape"),)

    def _build(self, p):
        self.domain_shape = self.range_shape = tuple(p["shape"])

    def _forward(self, x):
        return x + torch.roll(x, 1, dims=-1)

    def _adjoint(self, y):  # not the adjoint: rolls the wrong way
        return y + torch.roll(y, 1, dims=-1)

    def classical(self, y):
        return y / 2
'''


def test_plugins_check_fails_an_operator_class_with_a_wrong_adjoint(tmp_path):
    import os

    (tmp_path / "broken_op.py").write_text(BROKEN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "medrecon.cli.main", "plugins", "check", "broken_op:Broken"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any(line.startswith("adjoint-float64") and "FAIL" in line for line in proc.stdout.splitlines())
    assert "FAILED" in proc.stdout


def test_plugins_check_needs_a_name_or_all():
    proc = medrecon("plugins", "check")
    assert proc.returncode == 2 and "--all" in proc.stderr and "Traceback" not in proc.stderr
    proc = medrecon("plugins", "check", "--all", "--param", "factor=2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_import_and_reconstruct_help_list_each_importers_options():
    """The issue-22 first-hour item: the options --import-option takes are in the commands' --help,
    read from the installed importers when the help is shown (not a hand-kept list)."""
    for cmd in ("import", "reconstruct"):
        p = medrecon(cmd, "--help")
        assert p.returncode == 0, p.stderr
        text = " ".join(p.stdout.split())
        assert "Importer options (--import-option key=value):" in text, text[-600:]
        for name, option in (("mri.kspace", "coil_method='auto'"), ("ct.dxchange", "filter='ram-lak'")):
            assert f"{name}:" in text and option in text, (cmd, name, text[-600:])
