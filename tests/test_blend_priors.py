"""``medrecon blend-priors``: weight-space blends (WiSE-FT) of a prior and its fine-tunes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medrecon.priors.data import SliceStack, write_stack

pytestmark = pytest.mark.slow  # skipped by `make test-fast`

COMMON = ["--steps", "2", "--batch-size", "2", "--channels", "tiny", "--device", "cpu", "--samples", "0",
          "--val-every", "0"]


def _stack(path, seed):
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1000, 1500, (4, 16, 16)).astype(np.float32)
    return write_stack(SliceStack(data, "ct", 2.0, np.full(4, -1000.0), np.full(4, 2000.0),
                                  {"intensity": {"kind": "window"}}), path)


def _run(argv, capsys):
    from medrecon.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return (0 if e.value.code is None else e.value.code), out.out, out.err


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny prior ``base``, a fine-tune ``ft`` of it on other data, and an unrelated ``other``."""
    from medrecon.cli.main import main

    d = tmp_path_factory.mktemp("blend")
    a, b = _stack(d / "a.npy", 0), _stack(d / "b.npy", 1)
    for argv in (["--data", str(a), "--output", str(d / "base")],
                 ["--data", str(b), "--output", str(d / "ft"), "--init-from", str(d / "base"), "--lr", "1e-2"],
                 ["--data", str(b), "--output", str(d / "other"), "--seed", "3"]):
        with pytest.raises(SystemExit) as e:
            main(["train-prior", *argv, *COMMON])
        assert e.value.code in (0, None)
    return d, a, b


def _weights(folder):
    from medrecon.priors.model import DiffusionPrior

    return DiffusionPrior.load(folder).net.state_dict()


def test_a_blend_is_the_weighted_mean_of_the_weights_and_names_all_its_data(family, tmp_path, capsys):
    d, a, b = family
    rc, out, err = _run(["blend-priors", str(d / "base"), str(d / "ft"), "-w", "0.25", "-w", "0.75",
                         "--output", str(tmp_path / "mix"), "--val-data", str(b)], capsys)
    assert rc == 0, err
    assert "0.25 x" in out and "0.75 x" in out
    base, ft, mix = _weights(d / "base"), _weights(d / "ft"), _weights(tmp_path / "mix")
    moved = 0
    for k in base:
        want = (0.25 * base[k] + 0.75 * ft[k]).half().float()
        assert torch.allclose(mix[k], want, atol=1e-3, rtol=1e-3), k
        moved += int(not torch.equal(base[k], ft[k]))
    assert moved > 0  # the fine-tune changed the network, so the test can tell the weights apart
    cfg = json.loads((tmp_path / "mix" / "config.json").read_text())
    sha = {p: json.loads(p.with_suffix(".json").read_text())["sha256"] for p in (a, b)}
    assert cfg["training"]["data_sha256"] == sorted(sha.values())
    assert [r["weight"] for r in cfg["training"]["blend"]] == [0.25, 0.75]
    assert cfg["fit_reference"]["n_slices"] == 4 and "b.npy" in cfg["fit_reference"]["data"]
    # the end points are the sources themselves (to float16 rounding)
    rc, _, err = _run(["blend-priors", str(d / "base"), str(d / "ft"), "-w", "1", "-w", "0",
                       "--output", str(tmp_path / "one")], capsys)
    assert rc == 0, err
    one = _weights(tmp_path / "one")
    assert all(torch.equal(one[k], base[k]) for k in base)
    assert "fit_reference" not in json.loads((tmp_path / "one" / "config.json").read_text())


@pytest.mark.parametrize("case, want", [
    ("unrelated", "share no ancestor"),
    ("sum", "sum to 1"),
    ("count", "one weight per prior"),
    ("single", "at least two priors"),
    ("exists", "already exists"),
])
def test_bad_blends_are_one_sentence_and_write_nothing(family, tmp_path, capsys, case, want):
    d, _, _ = family
    out = tmp_path / "mix"
    argv = {"unrelated": [str(d / "base"), str(d / "other"), "-w", "0.5", "-w", "0.5"],
            "sum": [str(d / "base"), str(d / "ft"), "-w", "0.5", "-w", "0.6"],
            "count": [str(d / "base"), str(d / "ft"), "-w", "1"],
            "single": [str(d / "base"), "-w", "1"],
            "exists": [str(d / "base"), str(d / "ft"), "-w", "0.5", "-w", "0.5"]}[case]
    if case == "exists":
        out.mkdir()
    rc, _, err = _run(["blend-priors", *argv, "--output", str(out)], capsys)
    assert rc == 2 and want in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (list(out.iterdir()) == []) if case == "exists" else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["mix"] if case == "exists" else [])
