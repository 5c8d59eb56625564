"""Is the posterior standard deviation an error bar?  Coverage before and after calibration (issue 25).

For each series the shipped prior never trained on (the patient-level protocol of
``benchmarks/generalization.py``: its :data:`SERIES`, roles, slice choice and simulated
measurements are reused), ``medrecon.reconstruct`` draws ``--samples`` posterior samples per
slice (antithetic pairs) and gives their mean and standard deviation.  Then, on the window of
each slice (:func:`medrecon.uncertainty.uncertainty_report`):

* the **raw coverage**: the fraction of pixels where ``|mean - reference| <= k std``, k = 1, 2, 3
  (a Gaussian error bar gives 68.3 / 95.4 / 99.7 %), and the std-|error| correlation;
* the **calibration factor** ``s`` measured on one set of series (``calibrate``: the scale that
  makes the pooled 2-std coverage 95.4 %, :func:`medrecon.uncertainty.calibration_factor`);
* the **calibrated coverage** with ``s * std`` on *another* set of series (``check``), and on one
  evaluation-only series far from the training data (``ood``), where it is expected to fail.

CT: ``ct.parallel``, 8 views, 1 % noise, ``ct-default`` at its 2.148 mm pixels, window
[-1000, 1000] HU.  MR: ``mri.sense``, 8 synthetic coils, random 1D mask at 8x, 0.5 % noise,
``mr-default``, window each reference slice's [min, max].  256 x 256 slices.

The draws of each series are cached under ``--work`` (``.npz``: mean, std, reference), so a
second run only recomputes the statistics (``--analyse-only`` never reconstructs).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/uncertainty.py                  # CT and MR, DDS, CPU form
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/uncertainty.py --samplers dds dps --slices 2
    .venv/bin/python benchmarks/uncertainty.py --quick                            # smoke run (64 x 64, few steps)

Writes ``benchmarks/results/uncertainty.json`` (command, commit, settings, per-series numbers,
the factors and the checks) and prints the table of docs/uncertainty.md.  Skips with a message
(exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import generalization as gen  # noqa: E402  (series, roles, slices, measurements)
from benchmarks.quality import git_commit  # noqa: E402

#: per modality: series to calibrate on, series to check the factor on, one out-of-distribution series
#: (evaluation-only role).  None of them trained the shipped prior (ct-default: ct-pancreas;
#: mr-default: mr-t1-mprage).
GROUPS = {
    "ct": {"calibrate": ["ct-abdomen-ts", "ct-chest-4dct"], "check": ["ct-upper-abdomen-ts", "ct-chest-cta"],
           "ood": ["ct-head-headsq"]},
    "mr": {"calibrate": ["mr-head-seg3d", "mr-brain-tumor-1"], "check": ["mr-stroke-t1", "mr-brain-tumor-2"],
           "ood": ["mr-brain-t2"]},
}
SETTING = {"ct": 8, "mr": 8}  # views / acceleration
NOISE = {"ct": 0.01, "mr": 0.005}
STEPS = {"dds": 50, "dps": 200}
#: Sampler settings held fixed whatever the prior recommends: the MR rows of the results file were
#: drawn with DDS's official 5 CG iterations, before mr-default recommended 20 (docs/quality.md,
#: "MR: DDS's data step"); kept so that the file reproduces until they are drawn again
PINNED = {("mr", "dds"): {"cg_iters": 5}}


def draws(name: str, modality: str, sampler: str, args, log, samples: int | None = None) -> dict:
    """Mean, std and reference of ``--slices`` slices of series ``name`` (cached under ``--work``).
    ``samples`` other than ``--samples``: only read from the cache (the cross-check of other draw counts)."""
    import numpy as np

    n = samples or args.samples
    cache = Path(args.work) / f"{modality}-{sampler}-{name}-{args.size}-{args.slices}-{n}.npz"
    if cache.exists():
        d = np.load(cache)
        return {"mean": d["mean"], "std": d["std"], "ref": d["ref"], "slices": d["slices"].tolist(),
                "seconds": float(d["seconds"]), "pixel_mm": float(d["pixel_mm"])}
    if args.analyse_only or n != args.samples:
        return {}
    import medrecon

    data, px = gen.series_stack(name, args.size, args.pixel if modality == "ct" else None)
    z = gen.body_slices(data, modality, args.slices)
    ref = data[z]
    m = gen.measure(modality, ref, px, SETTING[modality], NOISE[modality], args.seed)
    steps = 5 if args.quick else STEPS.get(sampler)
    t0 = time.perf_counter()
    vol = medrecon.reconstruct(m, sampler, args.prior[modality], steps=steps, samples=args.samples,
                               params=PINNED.get((modality, sampler)),
                               antithetic=args.samples % 2 == 0, batch_size=len(z), seed=args.seed,
                               progress=False, **({"calibration": False} if args.has_calibration else {}))
    sec = time.perf_counter() - t0
    out = {"mean": np.asarray(vol.data, np.float32), "std": np.asarray(vol.components["std"].data, np.float32),
           "ref": ref.astype(np.float32), "slices": list(z), "seconds": sec, "pixel_mm": px}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)
    tmp.replace(cache)
    log(f"  {modality} {sampler} {name}: slices {z}, {sec:.0f} s")
    return out


def window_of(modality: str, ref):
    """Per-slice windows: CT [-1000, 1000] HU, MR each reference slice's [min, max]."""
    return gen.window(modality, ref)


def body_window(modality: str, ref):
    """Per-slice windows of the body alone (as ``generalization.body_slices`` counts it): CT
    [-500, 1000] HU (no air, no lung), MR [10 % of the slice's 99th percentile, max] (no background)."""
    import numpy as np

    if modality == "ct":
        return [(-500.0, 1000.0)] * len(ref)
    return [(0.1 * float(np.percentile(r, 99)), float(r.max())) for r in ref]


def analyse(modality: str, sampler: str, runs: dict, args, cross: dict | None = None) -> dict:
    """Coverage per series raw and calibrated, the factor from the ``calibrate`` group; ``cross``
    (series -> draws with another number of samples) checks the factor converted to that number
    (:func:`medrecon.uncertainty.run_factor`)."""
    import numpy as np

    from medrecon.uncertainty import calibration_factor, draw_factor, run_factor, uncertainty_report

    groups = GROUPS[modality]
    cal = [runs[n] for n in groups["calibrate"] if runs.get(n)]
    if not cal:
        return {}
    factor = calibration_factor(np.concatenate([r["mean"] for r in cal]), np.concatenate([r["std"] for r in cal]),
                                np.concatenate([r["ref"] for r in cal]),
                                windows=[w for r in cal for w in window_of(modality, r["ref"])])
    out = {"factor": factor, "calibrated_on": [n for n in groups["calibrate"] if runs.get(n)], "series": {}}
    for role, names in groups.items():
        for n in names:
            r = runs.get(n)
            if not r:
                continue
            wins = window_of(modality, r["ref"])
            raw = uncertainty_report(r["mean"], r["std"], r["ref"], windows=wins)
            calib = uncertainty_report(r["mean"], r["std"] * factor["factor"], r["ref"], windows=wins)
            bw = body_window(modality, r["ref"])
            body_raw = uncertainty_report(r["mean"], r["std"], r["ref"], windows=bw)["overall"]
            body_cal = uncertainty_report(r["mean"], r["std"] * factor["factor"], r["ref"], windows=bw)["overall"]
            out["series"][n] = {
                "group": role, "role": gen.SERIES[n][2], "slices": r["slices"], "pixel_mm": r["pixel_mm"],
                "seconds": round(r["seconds"], 1),
                "raw": {k: raw["overall"][k] for k in ("coverage", "pearson", "spearman", "mean_std",
                                                      "rmse", "pixels")},
                "calibrated": {k: calib["overall"][k] for k in ("coverage",)},
                "body": {"window": bw[0] if modality == "ct" else "10 % of each slice's 99th percentile .. max",
                         "pixels": body_raw["pixels"], "coverage_raw": body_raw["coverage"],
                         "coverage_calibrated": body_cal["coverage"], "spearman": body_raw["spearman"]},
                "raw_per_slice_coverage_2": [s["coverage"]["2"] for s in raw["per_slice"]],
                "calibration_curve_raw": raw["overall"]["curve"],
                "calibration_curve_calibrated": calib["overall"]["curve"],
            }
    check = [v["calibrated"]["coverage"]["2"] for v in out["series"].values() if v["group"] == "check"]
    out["check_coverage_2"] = float(np.mean(check)) if check else None
    anti = args.samples % 2 == 0
    entry = {"factor": factor["factor"], "prior_factor": factor["factor"] / draw_factor(args.samples, anti),
             "samples": args.samples, "antithetic": anti}
    out["prior_factor"] = entry["prior_factor"]
    for (n, ns), r in (cross or {}).items():
        f2 = run_factor(entry, ns, ns % 2 == 0)
        wins = window_of(modality, r["ref"])
        raw = uncertainty_report(r["mean"], r["std"], r["ref"], windows=wins)["overall"]["coverage"]
        cal = uncertainty_report(r["mean"], r["std"] * f2, r["ref"], windows=wins)["overall"]["coverage"]
        out.setdefault("other_draw_counts", []).append(
            {"series": n, "samples": ns, "antithetic": ns % 2 == 0, "factor_converted": f2, "coverage_raw": raw,
             "coverage_calibrated": cal, "own_factor": calibration_factor(r["mean"], r["std"], r["ref"],
                                                                           windows=wins)["factor"]})
    return out


def figures(runs: dict, res: dict, folder: Path, log) -> list[str]:
    """One figure per modality and group (check, ood): the first slice of the group's first series
    with the calibrated std (:func:`medrecon.figures.uncertainty_figure`)."""
    from medrecon.figures import uncertainty_figure
    from medrecon.uncertainty import uncertainty_report

    out = []
    for key, series in runs.items():
        mod = key.split("-", 1)[0]
        a = res["analysis"].get(key) or {}
        if not a:
            continue
        f = a["factor"]["factor"]
        for group in ("check", "ood"):
            # never a figure of an evaluation-only series: it would put that data into the repository
            name = next((n for n in GROUPS[mod][group] if series.get(n) and gen.SERIES[n][2] != "eval"), None)
            if name is None:
                continue
            r = series[name]
            win = window_of(mod, r["ref"])[0]
            rep = uncertainty_report(r["mean"][:1], f * r["std"][:1], r["ref"][:1], window=win)
            cov = rep["overall"]["coverage"]
            path = folder / f"uncertainty_{key}_{group}.png"
            uncertainty_figure(r["mean"][0], r["ref"][0], f * r["std"][0], rep, window=win,
                               units="HU" if mod == "ct" else "a.u.",
                               title=f"{key} {name} ({group}), std x {f:.2f} (calibrated on "
                                     f"{', '.join(a['calibrated_on'])}): coverage 1/2/3 std "
                                     + " / ".join(f"{100 * cov[k]:.1f}" for k in ("1", "2", "3")) + " %",
                               path=path, dpi=80)
            out.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
            log(f"wrote {path}")
    return out


def markdown(res: dict) -> str:
    lines = ["| modality | sampler | series | group | raw 1/2/3 std % | calibrated 2 std % | factor | "
             "Pearson / Spearman of std and abs. error | body only: raw / calibrated 2 std % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, a in res["analysis"].items():
        mod, smp = key.split("-", 1)
        for n, v in a.get("series", {}).items():
            c = v["raw"]["coverage"]
            lines.append(f"| {mod} | {smp} | {n} | {v['group']} | {100 * c['1']:.1f} / {100 * c['2']:.1f} / "
                         f"{100 * c['3']:.1f} | {100 * v['calibrated']['coverage']['2']:.1f} | "
                         f"{a['factor']['factor']:.2f} | {v['raw']['pearson']:.2f} / {v['raw']['spearman']:.2f} | "
                         f"{100 * v['body']['coverage_raw']['2']:.1f} / {100 * v['body']['coverage_calibrated']['2']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modalities", nargs="*", default=["ct", "mr"], choices=("ct", "mr"))
    ap.add_argument("--samplers", nargs="*", default=["dds"])
    ap.add_argument("--samples", type=int, default=8, help="draws per slice (even: antithetic pairs)")
    ap.add_argument("--slices", type=int, default=1, help="slices per series")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pixel", type=float, default=2.1484375, help="CT pixel size mm (ct-default's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "uncertainty"), help="cached draws")
    ap.add_argument("--analyse-only", action="store_true", help="only the statistics of cached draws")
    ap.add_argument("--cross-samples", type=int, nargs="*", default=[8],
                    help="other draw counts whose cached draws (never computed here) check the converted factor")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 x 64, 5 steps, 4 draws")
    ap.add_argument("--output", default=None, help="JSON to write (default: benchmarks/results/uncertainty.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.samples, args.pixel = 64, 4, 2.1484375 * 4
        args.work = str(Path(args.work) / "quick")
    if not gen.DATA_ROOT.exists():
        print(f"uncertainty: {gen.DATA_ROOT} is absent; nothing to measure")
        return 0
    import inspect

    import medrecon

    args.has_calibration = "calibration" in inspect.signature(medrecon.reconstruct).parameters
    args.prior = {"ct": "ct-default", "mr": "mr-default"}

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    runs: dict = {}
    # one calibration and one check series of each modality first, then the out-of-distribution cases,
    # then the second series of each group: a run cut short still has a factor measured on one set and
    # checked on another, and its failure case
    first = [(mod, smp, GROUPS[mod][role][0]) for smp in args.samplers for mod in args.modalities
             for role in ("calibrate", "check")]
    order = first + [(mod, smp, n) for smp in args.samplers for mod in args.modalities for n in GROUPS[mod]["ood"]]
    order += [(mod, smp, GROUPS[mod][role][i]) for smp in args.samplers for i in range(1, 2) for mod in args.modalities
              for role in ("calibrate", "check") if i < len(GROUPS[mod][role])]
    for mod, smp, n in order:
        runs.setdefault(f"{mod}-{smp}", {})[n] = draws(n, mod, smp, args, log)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--analyse-only"]
    res = {"command": "python benchmarks/uncertainty.py " + shlex.join(given),
           "analysed_from_cache": bool(args.analyse_only),  # the draws of the command above, read from --work
           "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "commit": git_commit(),
           "device": "cpu", "samples": args.samples, "antithetic": args.samples % 2 == 0, "size": args.size,
           "slices_per_series": args.slices, "settings": {"ct_views": SETTING["ct"], "mr_acceleration": SETTING["mr"],
                                                          "noise_rel": NOISE, "steps": STEPS},
           "groups": GROUPS, "analysis": {}}
    for key, r in runs.items():
        mod, smp = key.split("-", 1)
        cross = {(n, ns): d for n in [m for g in GROUPS[mod].values() for m in g] for ns in args.cross_samples
                 if ns != args.samples and (d := draws(n, mod, smp, args, log, samples=ns))}
        res["analysis"][key] = analyse(mod, smp, r, args, cross)
    res["seconds"] = round(time.time() - t0, 1)
    res["markdown"] = markdown(res)
    out = Path(args.output) if args.output else ROOT / "benchmarks" / "results" / "uncertainty.json"
    if not args.quick or args.output:
        res["figures"] = figures(runs, res, out.parent, log)
        from medrecon.io.atomic import atomic_file

        with atomic_file(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(res, indent=1, default=float))
        log(f"wrote {out}")
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
