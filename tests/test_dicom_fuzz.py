"""Fuzz the DICOM reader: mutated headers, series folders, corrupted bytes and truncated files.

The inputs come from ``tests/dicom_fuzzing.py`` (the one home of the generator and of the
contract, shared with ``benchmarks/dicom_fuzz.py``, which runs 10,000 of them): hypothesis
draws input seeds, each seed gives a recipe (a single file from pydicom's bundled test files,
a series folder of 2-6 slices with missing / duplicate / jittered / tilted slices, mixed
orientations, sizes, spacings, series UIDs and transfer syntaxes, or an enhanced multi-frame
file with broken functional groups; then tag mutations, byte flips and truncation) and
:func:`dicom_fuzzing.run_case` reads it with :func:`medrecon.load_volume`.  The contract: a valid
Volume or a :class:`medrecon.errors.MedreconError` with a one-paragraph message; never another
exception, never a hang (SIGALRM limit of 10 s per input).  The number of inputs tried is
printed (``pytest -s``) and checked at the end of the module.
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("pydicom")

import dicom_fuzzing as fz  # noqa: E402  (pytest puts tests/ on sys.path: no __init__.py there)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# MEDRECON_FUZZ_EXAMPLES=2000 MEDRECON_FUZZ_RANDOM=1 explores further (random, not derandomized)
MAX_EXAMPLES = int(os.environ.get("MEDRECON_FUZZ_EXAMPLES", "250"))
DERANDOMIZE = not os.environ.get("MEDRECON_FUZZ_RANDOM")
COUNTS = {"tried": 0, "volume": 0, "medrecon_error": 0}


def _check(o: fz.Outcome) -> None:
    assert o.kind in ("volume", "medrecon_error", "not_written"), (
        f"seed {o.seed}: {o.kind} {o.error}: {o.message}\n{o.trace}\nreplay: "
        f"python benchmarks/dicom_fuzz.py --replay {o.seed}")


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_reader_gives_a_volume_or_a_medrecon_error(seed):
    o = fz.run_case(seed, timeout_s=10.0)
    _check(o)
    if o.kind != "not_written":
        COUNTS["tried"] += 1
        COUNTS[o.kind] += 1


def _recipe(**kw) -> dict:
    r = {"seed": 1, "kind": "series", "base": "CT_small.dcm", "n_slices": 3, "series_ops": [], "step_mm": 5.0,
         "tag_ops": [], "byte_ops": [], "truncate": None, "allow_uneven": False}
    r.update(kw)
    return r


@pytest.mark.parametrize("ops, tags, words", [
    ([["spacing", 1, 0.2, None]], [], "PixelSpacing changes within the series ([0.661468, 0.661468] vs"),
    ([], [[k, "ImageOrientationPatient", "change", ["1", "0", "0", "1", "0", "0"]] for k in range(4)],
     "ImageOrientationPatient [1.0, 0.0, 0.0, 1.0, 0.0, 0.0] is not two orthogonal unit vectors"),
    ([["orientation", 1, 0.9, None]], [], "mixes orientations"),
    ([["missing", 1, 0.0, None], ["uneven", 2, 0.5, None]], [], "unevenly spaced"),
    ([["dup_position", 0, 0.0, None]], [], "duplicate slice position"),
])
def test_series_refusals_are_plain_sentences(ops, tags, words):
    """Regression (the fuzz benchmark): the refusals of inconsistent series printed numpy reprs
    (``[np.float64(0.66), ...]``); every one names the problem in plain numbers."""
    o = fz.run_case(1, recipe=_recipe(n_slices=4, series_ops=ops, tag_ops=tags))
    assert o.kind == "medrecon_error", (o.kind, o.message)
    assert words in o.message and fz.message_problem(o.message) is None, o.message


def test_the_generator_is_reproducible_and_builds_every_kind():
    """The same seed gives the same recipe; the first seeds cover single files, series and enhanced
    multi-frame files, and clean inputs of each kind read as volumes."""
    assert fz.make_recipe(123) == fz.make_recipe(123) and fz.make_recipe(123) != fz.make_recipe(124)
    assert {fz.make_recipe(s)["kind"] for s in range(60)} == {"file", "series", "enhanced"}
    for r in (_recipe(), _recipe(base="MR_small.dcm", series_ops=[["mixed_ts", 1, 0.0, "MR_small_RLE.dcm"]]),
              _recipe(kind="enhanced", n_slices=1, n_frames=3), _recipe(kind="file", n_slices=1)):
        o = fz.run_case(1, recipe=r)
        assert o.kind == "volume", (r, o.kind, o.message)


def test_fuzz_report():
    """Runs after the fuzz test (file order): print and check how many inputs were tried."""
    print(f"\nDICOM fuzz: {COUNTS['tried']} inputs read: {COUNTS['volume']} volumes, "
          f"{COUNTS['medrecon_error']} MedreconErrors, 0 other exceptions")
    if COUNTS["tried"] == 0:
        pytest.skip("the fuzz test did not run (selected alone?)")
    assert COUNTS["tried"] >= MAX_EXAMPLES // 2
    assert COUNTS["volume"] > 0 and COUNTS["medrecon_error"] > 0
