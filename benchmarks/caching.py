"""Feature caching across diffusion steps (DeepCache, issue 23 item 1) on the CPU: speed and PSNR.

For each held-out slice (CT: the pancreas CT's held-out block as in benchmarks/quality.py, 8
views parallel beam with 0.5 % noise, ``ct-default``; MR: the T1 MPRAGE's held-out block as in
benchmarks/quality_mr.py, ``mri.sense`` 8 coils, random 1D mask 4x, 0.5 % noise, ``mr-default``
bound to the zero-filled magnitude) it runs DDS-50 and DPS-200 (and, with ``--samplers reddiff``,
RED-Diff-50) uncached (``cache_interval`` 0) and cached for every N of ``--intervals``
(DPS: ``--dps-intervals``, and each ``--dps-jacobian``: what a cached step's gradient
differentiates), with the same seed, in ONE process, and records

* wall-clock and process CPU seconds per slice (one thread: the CPU seconds are what the run
  computed, the wall clock also holds what the shared machine's other processes took from it),
* ``speedup``: uncached seconds / cached seconds: on the CPU the ratio of CPU seconds
  (``speedup_cpu``; the wall-clock ratio ``speedup_wall`` is recorded too), on CUDA the wall clock,
* PSNR (CT on the window [-1000, 1000] HU; MR on the reference's [min, max]) and its change
  from the uncached run (negative = loss),
* the network passes that ran (full and shallow).

Settings: the shipped priors' recommended ones (CT: DDS eta 0.5, DPS zeta 5; MR: DDS defaults,
DPS zeta 10 at 200 steps); RED-Diff as benchmarks/quality.py runs it (lam 0.25; lr 0.5 on CT at
8 views, the default 0.1 on MR).  ``--depths`` lists the numbers of shallow levels to try
(:data:`medrecon.priors.feature_cache.DEFAULT_DEPTH` unless given); the uncached row is shared.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/caching.py                  # 1 CT + 1 MR slice
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/caching.py --quick          # smoke run: 64 x 64, 10 steps

The current results file came from five commands (its ``runs``; DPS-200 is most of the time):
``--samplers dds --depths 1 2 --intervals 2 3 5``, then ``--samplers dps --depths 1
--dps-intervals 3 --merge``, then ``--samplers dps --depths 2 --dps-intervals 5 --merge
--reuse-baseline`` (both DPS runs before ``cache_jacobian`` existed: their rows are
``jacobian=shallow``), then ``--samplers dps --depths 1 --dps-intervals 3 --dps-jacobian none
--merge --reuse-baseline``, then ``--samplers reddiff --depths 1 --intervals 2 3 --merge``.
``bash benchmarks/gpu.sh caching`` runs it on CUDA.

Writes ``benchmarks/results/caching.json`` after every run (a killed run keeps what finished).
Skips (exit 0, a message) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.quality import git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CT_Z = 16  # held-out block z 0..31 (benchmarks/quality.py CT_HOLDOUT)
MR_Z = 80  # held-out block z 64..95 (benchmarks/quality_mr.py HOLDOUT; its one-slice choice)
PARAMS = {"ct": {"dds": {"eta": 0.5, "gamma": 100.0}, "dps": {"zeta": 5.0}, "reddiff": {"lam": 0.25, "lr": 0.5}},
          "mr": {"dds": {"eta": 0.85, "gamma": 100.0}, "dps": {"zeta": 10.0}, "reddiff": {"lam": 0.25, "lr": 0.1}}}


def ct_case(quick: bool, device: str = "cpu", stack: str | None = None):
    """(operator, y, reference HU (1, N, N), prior, psnr window, z); ``stack``: a folder of
    preprocessed float16 stacks (benchmarks/stacks.py) instead of the DICOM series."""
    import medrecon
    from benchmarks import quality

    quality.STACK_FOLDER = stack
    ref, px, _ = quality.load_ct_slices([CT_Z], size=64 if quick else 256)
    op, y, _ = quality.simulate(ref, 8, px, [CT_Z], seed=0)
    return op.to(device), y.to(device), ref, medrecon.load_prior("ct-default", device=device), (-1000.0, 1000.0), CT_Z


def mr_case(quick: bool, device: str = "cpu", stack: str | None = None):
    import numpy as np
    import torch

    import medrecon
    from benchmarks.quality_mr import MR_SOURCE, _measure
    from medrecon.priors.data import stack_from_volume

    if stack is not None:
        from benchmarks.stacks import load_stack_folder

        st = load_stack_folder(stack)
    else:
        st = stack_from_volume(MR_SOURCE, 256, "mr")
    ref = st.data[[MR_Z]].astype(np.float32)
    px = st.pixel_size_mm
    if quick:
        ref, px = ref[:, ::4, ::4].copy(), px * 4
    m = _measure(ref, px, 4, 0.005)
    op = m.operator()
    y = torch.from_numpy(np.ascontiguousarray(m.y))
    with torch.no_grad():
        zf = op.classical(y).abs()
    prior = medrecon.load_prior("mr-default", device=device).for_volume(zf.numpy())
    return op.to(device), y.to(device), ref, prior, (float(ref.min()), float(ref.max())), MR_Z


def run_one(sampler: str, params: dict, steps: int, op, y, prior, z: int):
    """(image (1, N, N) numpy, wall seconds, CPU seconds, passes {full, shallow})."""
    import torch

    from medrecon.priors import feature_cache
    from medrecon.samplers import get_sampler, slice_generators

    made = []
    orig = feature_cache.FeatureCache.__init__

    def spy(self, *a, **k):  # count the passes of the cache the sampler makes
        orig(self, *a, **k)
        made.append(self)

    feature_cache.FeatureCache.__init__ = spy
    try:
        s = get_sampler(sampler, **params)
        t0, c0 = time.perf_counter(), time.process_time()
        if sampler == "dps":
            x = s.sample(y, op, prior, steps=steps, generators=slice_generators(0, [z]))
        else:
            with torch.no_grad():
                x = s.sample(y, op, prior, steps=steps, generators=slice_generators(0, [z]))
        if y.is_cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        feature_cache.FeatureCache.__init__ = orig
    passes = {"full": sum(c.full_passes for c in made), "shallow": sum(c.shallow_passes for c in made)}
    if not made:
        passes = {"full": steps, "shallow": 0}
    x = x.detach().cpu()
    return x.real.float().numpy() if x.is_complex() else x.float().numpy(), wall, cpu, passes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", nargs="+", default=["ct", "mr"], choices=["ct", "mr"])
    ap.add_argument("--samplers", nargs="+", default=["dds", "dps"], choices=["dds", "dps", "reddiff"])
    ap.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument("--depths", type=int, nargs="+", default=None,
                    help="shallow levels to try (default: DEFAULT_DEPTH)")
    ap.add_argument("--dps-intervals", type=int, nargs="+", default=None, help="N for DPS (default: --intervals)")
    ap.add_argument("--dps-jacobian", nargs="+", default=["none"], choices=["none", "shallow"],
                    help="DPS cache_jacobian values to try (what a cached step's gradient differentiates)")
    ap.add_argument("--dds-steps", type=int, default=50)
    ap.add_argument("--dps-steps", type=int, default=200)
    ap.add_argument("--reddiff-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda the speed-up is the wall-clock ratio)")
    ap.add_argument("--stack-ct", default=None, help="folder of preprocessed CT stacks (e.g. .gpu/ct)")
    ap.add_argument("--stack-mr", default=None, help="folder of preprocessed MR stacks (e.g. .gpu/mr)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 x 64, 10 steps")
    ap.add_argument("--output", default=None, help="JSON (default benchmarks/results/caching.json)")
    ap.add_argument("--reuse-baseline", action="store_true", help="with --merge: compare with the uncached row "
                    "already recorded (same seed and settings: the same image) instead of running it again; the "
                    "speed-up then compares two processes (rows marked 'baseline': 'earlier run')")
    ap.add_argument("--merge", action="store_true", help="keep the rows already in --output (the commands "
                    "that made them stay in 'runs')")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.quality import CT_SOURCE
    from medrecon.metrics import psnr
    from medrecon.priors import feature_cache

    if not CT_SOURCE.parent.is_dir() and not (args.stack_ct and args.stack_mr):
        print(f"data folder {CT_SOURCE.parent} not found: skipped")
        return 0
    torch.set_num_threads(args.threads)
    args.depths = args.depths or [feature_cache.DEFAULT_DEPTH]
    steps = {"dds": 10 if args.quick else args.dds_steps, "dps": 10 if args.quick else args.dps_steps,
             "reddiff": 10 if args.quick else args.reddiff_steps}
    out_path = Path(args.output) if args.output else (RESULTS / ("caching_quick.json" if args.quick else "caching.json"))
    run = {"command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "git": git_commit(),
           "samplers": args.samplers, "modalities": args.modalities, "depths": args.depths,
           "intervals": args.intervals if "dds" in args.samplers else None,
           "dps_intervals": (args.dps_intervals or args.intervals) if "dps" in args.samplers else None,
           "dps_jacobian": args.dps_jacobian if "dps" in args.samplers else None}
    out = {"device": args.device, "threads": args.threads, "steps": steps,
           "target": {"speedup_min": 1.8, "psnr_loss_max_db": 0.3}, "runs": [run], "results": {}}
    if args.merge and out_path.is_file():  # e.g. the DDS rows of one run, the DPS rows of another
        old = json.loads(out_path.read_text())
        out["results"] = old.get("results", {})
        out["runs"] = old.get("runs", []) + [run]

    def save():
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        tmp.replace(out_path)

    cases = {mod: (ct_case if mod == "ct" else mr_case)(args.quick, args.device, getattr(args, f"stack_{mod}"))
             for mod in args.modalities}
    cuda = args.device.startswith("cuda")
    if cuda:
        out["gpu"] = torch.cuda.get_device_name()
    for smp in args.samplers:  # all DDS rows first: they are minutes, DPS-200 is most of the run
        intervals = args.intervals if smp != "dps" or args.dps_intervals is None else args.dps_intervals
        for mod, (op, y, ref, prior, window, z) in cases.items():
            rows = out["results"].setdefault(f"{mod}_{smp}{steps[smp]}", {"slice": z, "params": PARAMS[mod][smp]})
            base = rows.get("N=0") if args.reuse_baseline else None
            jacs = args.dps_jacobian if smp == "dps" else [None]
            runs = [(d, n, j) for d in args.depths for n in intervals for j in jacs]
            for depth, n, jac in ([] if base is not None else [(None, 0, None)]) + runs:
                if depth is not None:
                    feature_cache.DEFAULT_DEPTH = depth
                extra = {"cache_jacobian": jac} if jac is not None else {}
                x, wall, cpu, passes = run_one(smp, {**PARAMS[mod][smp], "cache_interval": n, **extra}, steps[smp],
                                               op, y, prior, z)
                row = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "psnr": round(psnr(x, ref, window), 3),
                       "passes": passes}
                if base is None:
                    base = row
                else:
                    row["speedup_cpu"] = round(base["cpu_s"] / cpu, 3)
                    row["speedup_wall"] = round(base["wall_s"] / wall, 3)
                    row["speedup"] = row["speedup_wall" if cuda else "speedup_cpu"]
                    row["dpsnr"] = round(row["psnr"] - base["psnr"], 3)
                    row["meets_target"] = row["speedup"] >= 1.8 and row["dpsnr"] >= -0.3
                    if args.reuse_baseline:
                        row["baseline"] = "earlier run"
                key = "N=0" if depth is None else f"depth={depth},N={n}" + (f",jacobian={jac}" if jac else "")
                rows[key] = row
                print(f"{mod} {smp}-{steps[smp]} {key}: {row}", flush=True)
                save()
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
