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
