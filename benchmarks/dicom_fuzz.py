"""DICOM reader fuzz benchmark: N seeded random inputs through :func:`medrecon.load_volume`.

Every input (a single file, a series folder or an enhanced multi-frame file, mutated: see
``tests/dicom_fuzzing.py``, the one home of the input generator and of the contract) is drawn
from its seed by a ``numpy`` generator, so the run is reproducible and any input can be
replayed alone.  The contract: a valid Volume or a :class:`medrecon.errors.MedreconError` with a
one-paragraph message; never another exception, an invalid volume or a hang (per-input SIGALRM
limit, ``--timeout``).  The process runs under an address-space limit (``--max-as``, default
4 GiB) with the reader's memory budget at its default, so an allocation the budget misses
shows up as a ``MemoryError`` (a bug) instead of an out-of-memory kill.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_fuzz.py            # 10,000 inputs -> results/
    .venv/bin/python benchmarks/dicom_fuzz.py --quick                      # 300 inputs, not saved in results/
    .venv/bin/python benchmarks/dicom_fuzz.py --replay 1234                # one input: its recipe and traceback

Counts: ``volume`` / ``medrecon_error`` (by class) / ``other`` (other exceptions, with their
seeds) / ``invalid_volume`` / ``bad_message`` / ``timeout`` / ``not_written`` (pydicom could not
write the mutated dataset: not an input).  Exit status 1 when any input broke the contract.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import dicom_fuzzing as fz  # noqa: E402

BUGS = ("other", "invalid_volume", "bad_message", "timeout")


def _limit_address_space(gib: float) -> None:
    if gib > 0:
        lim = int(gib * (1 << 30))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (lim if hard == resource.RLIM_INFINITY else min(lim, hard), hard))


def replay(seed: int, timeout_s: float) -> int:
    recipe = fz.make_recipe(seed)
    print(json.dumps(recipe, indent=1))
    o = fz.run_case(seed, timeout_s, recipe=recipe)
    print(f"seed {seed}: {o.kind} {o.error or ''} {o.message}")
    if o.trace:
        print(o.trace)
    return 1 if o.kind in BUGS else 0


def run(n: int, start: int, timeout_s: float, progress: bool) -> dict:
    counts: collections.Counter = collections.Counter()
    by_input: collections.Counter = collections.Counter()
    by_class: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    bugs: list[dict] = []
    times: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dicom_fuzz") as tmp:
        for seed in range(start, start + n):
            o = fz.run_case(seed, timeout_s, tmp_root=tmp)
            counts[o.kind] += 1
            by_input[f"{o.recipe['kind']}:{o.kind}"] += 1
            for op in o.recipe.get("series_ops", []):
                ops[op[0]] += 1
            if o.kind == "medrecon_error":
                by_class[o.error] += 1
            if o.kind in BUGS:
                bugs.append({"seed": seed, "kind": o.kind, "error": o.error, "message": o.message,
                             "where": o.trace.strip().splitlines()[-3].strip() if o.trace else None})
            times.append((o.seconds, seed))
            if progress and (seed - start + 1) % 500 == 0:
                print(f"{seed - start + 1}/{n} {dict(counts)} {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    secs = sorted(t for t, _ in times)
    return {
        "n_inputs": n, "seeds": [start, start + n - 1], "timeout_s": timeout_s,
        "counts": dict(counts),
        "read": n - counts["not_written"],
        "contract_violations": sum(counts[k] for k in BUGS),
        "medrecon_errors_by_class": dict(by_class.most_common()),
        "by_input_kind": dict(sorted(by_input.items())),
        "series_and_frame_ops": dict(ops.most_common()),
        "violations": bugs[:200],
        "read_seconds": {"median": secs[len(secs) // 2] if secs else None, "p99": secs[int(0.99 * (len(secs) - 1))]
                         if secs else None, "max": secs[-1] if secs else None,
                         "slowest_seeds": [s for _, s in sorted(times, reverse=True)[:5]]},
        "wall_s": round(wall, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="number of inputs (default 10000)")
    ap.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-input time limit, s (default 10)")
    ap.add_argument("--max-as", type=float, default=4.0, help="address-space limit, GiB (0: none; default 4)")
    ap.add_argument("--replay", type=int, default=None, metavar="SEED", help="run one input and print it")
    ap.add_argument("--quick", action="store_true", help="300 inputs, written to /tmp/dicom_fuzz_quick.json")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/dicom_fuzz.json)")
    args = ap.parse_args(argv)
    _limit_address_space(args.max_as)
    if args.replay is not None:
        return replay(args.replay, args.timeout)
    n = 300 if args.quick else args.n
    default = "/tmp/dicom_fuzz_quick.json" if args.quick else ROOT / "benchmarks/results/dicom_fuzz.json"
    out = Path(args.out or default)
    import numpy
    import pydicom

    import medrecon

    res = run(n, args.start, args.timeout, progress=True)
    res = {"benchmark": "dicom_fuzz",
           "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_fuzz.py"
           + (f" --n {n}" if n != 10000 else "") + (f" --start {args.start}" if args.start else ""),
           "medrecon": medrecon.__version__, "pydicom": pydicom.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "machine": platform.machine(), **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("n_inputs", "read", "counts", "contract_violations", "wall_s")}))
    print(f"written {out}")
    return 1 if res["contract_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
