"""Priors on series they never saw: the patient-level protocol (issue 19).

Every number is measured on a *series* (patient, scanner, body region) that the prior did
not train on, never on held-out slices of a training series:

* ``--prior NAME`` (default ``ct-default`` / ``mr-default``): the given prior on every
  series of its modality that its config.json does not list as training data; series it
  trained on are reported apart (held-out slices, marked ``seen``).
* ``--loso``: leave one series out.  For each series that may train a shipped prior
  (:data:`SERIES`, role ``train``), a prior is trained on the *other* training series
  (``medrecon train-prior``, options ``--train-*``) and evaluated on the one left out; the
  evaluation-only series (role ``eval``, never trained on) are evaluated with a prior trained
  on every training series.  Priors are kept under ``--work`` and reused (``--resume``).

Measurement (``medrecon.simulate``, noise relative to the RMS of the noiseless data, seeded):

* CT: ``ct.parallel`` on 256 x 256 slices at the prior's pixel size (2.148 mm for
  ``ct-default``; a series with a smaller field of view is padded with air), 8 and 16 views
  over 180 degrees, 1 % noise; PSNR and SSIM on [-1000, 1000] HU.
* MR: ``mri.sense`` with 8 synthetic birdcage coils (real image), random 1D masks at 4x
  and 8x with an 8 % centre, 0.5 % noise, 256 x 256 slices of the whole field of view;
  PSNR and SSIM on each reference slice's [min, max].

Methods (``medrecon.reconstruct``, the pipeline a user runs; ``--methods``):
``classical`` (FBP / zero-filled), ``sense`` (MR), ``tv-train`` (TV whose weight is chosen
from a grid on slices of the prior's *training* series, never on the evaluated one),
``tv`` (the package default: weight chosen per study by cross-validation on held-out views or
lines), ``dds`` (the prior's recommended settings; on a grid finer than the prior's pixels the
prior runs at its own scale; for the shipped CT prior that includes a TV term in the data step,
``tv``), ``dds-plain`` (the same with official DDS's CG data step, ``tv=0``), ``dds-native`` (the prior
on the data's grid as it is), ``dds-tv``
(DDS started from the TV reconstruction at ``t_start``), ``dps``, ``dps-cached`` (DPS with feature
caching at N = 3, about 2.5x as fast on the CPU), ``reddiff``; ``name@k=v,...`` adds sampler
parameters to a method (``dps-cached@tv=0.3``: DPS with a TV term).  ``--size 512
--pixel 1.0742 --series ct-pancreas --methods tv dds dds-native`` measures the pixel-size
handling on the prior's own patient at twice its resolution.  For each evaluated series the
prior-fit score the engine records with a diffusion run is reported
(:mod:`medrecon.engine.prior_fit`).

Slices: ``--slices K`` per series, spread over the slices whose body fraction is at least
half the series' largest (CT: pixels above -500 HU; MR: above 10 % of the 99th percentile),
so that near-empty end slices are not evaluated.

Usage::

    .venv/bin/python benchmarks/generalization.py --modality ct                 # shipped prior, CPU form
    .venv/bin/python benchmarks/generalization.py --modality mr --accels 4 8
    .venv/bin/python benchmarks/generalization.py --modality ct --loso --device cuda \\
        --train-steps 20000 --train-channels small --slices 8          # the full protocol (GPU)
    .venv/bin/python benchmarks/generalization.py --quick               # smoke run (test suite)
    .venv/bin/python benchmarks/generalization.py --modality ct --write-stacks .gpu/gen-ct
                                     # float16 stacks to carry to a GPU machine (then --stacks .gpu/gen-ct;
                                     # benchmarks/gpu.sh runs the protocol and trains the v2 priors there)

``--merge A.json B.json`` combines runs over disjoint ``--series`` (one process per core, same
options otherwise) into one results file; a later file's rows replace the same series, setting and
method of an earlier one (re-measuring ``dds`` after a prior's recommended settings changed:
``--merge benchmarks/results/generalization_mr.json new.json``).

Writes ``benchmarks/results/generalization_{ct,mr}.json`` (command, commit, settings,
per-slice numbers, means) and prints the markdown table of docs/quality.md.  Skips with a
message (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.quality import git_commit  # noqa: E402  (one home for the run's commit)

DATA_ROOT = Path(os.environ.get("MEDRECON_DATA", "/work/shared/data"))
RESULTS = ROOT / "benchmarks" / "results"
STACKS = None  # --stacks: read the series from float16 stacks instead of DATA_ROOT

#: name -> modality, path under the data root, role (train: may train a shipped prior;
#: eval: evaluation only, never trained on), HU offset to add (uncalibrated CT numbers)
SERIES = {
    "ct-pancreas": ("ct", "ct-pancreas-tcia", "train", 0.0),
    "ct-abdomen-ts": ("ct", "ct-mr-body-totalsegmentator/example_ct.nii.gz", "train", 0.0),
    "ct-upper-abdomen-ts": ("ct", "ct-mr-body-totalsegmentator/example_ct_dicom", "train", 0.0),
    "ct-chest-4dct": ("ct", "ct-chest-4dct-itkelastix/chest_4dct_phase00_hu.nii.gz", "train", 0.0),
    "ct-head-headsq": ("ct", "ct-head-vtk-headsq/headsq_quarter_raw.nii.gz", "eval", -1024.0),
    "ct-chest-cta": ("ct", "ct-chest-cta-totalsegmentator/chest_cta_cropped.nii.gz", "eval", 0.0),
    "mr-t1-mprage": ("mr", "mr-t1-mprage-niivue", "train", 0.0),
    "mr-head-seg3d": ("mr", "mr-head-volrenderdata/seg3D_MR.nii.gz", "train", 0.0),
    "mr-stroke-t1": ("mr", "mr-head-volrenderdata/stroke_T1.nii.gz", "train", 0.0),
    "mr-cardiac-lge": ("mr", "mr-cardiac-lge-seg3d/example_dicom_mr.nii.gz", "train", 0.0),
    "mr-brain-tumor-1": ("mr", "mr-brain-tumor-pyradiomics/brain1_image.nii.gz", "train", 0.0),
    "mr-brain-tumor-2": ("mr", "mr-brain-tumor-pyradiomics/brain2_image.nii.gz", "train", 0.0),
    "mr-abdomen-ts": ("mr", "ct-mr-body-totalsegmentator/example_mr_sm.nii.gz", "train", 0.0),
    "mr-brain-t2": ("mr", "mr-brain-t2-niivue/T2w.nii.gz", "eval", 0.0),
}
CT_WINDOW = (-1000.0, 1000.0)
TV_GRID = {"ct": (1.0, 2.5, 5.0, 10.0, 20.0), "mr": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}
STEPS = {"tv-train": 300, "tv": 300, "dds": 50, "dds-plain": 50, "dds-tv": 50, "dps": 200, "dps-cached": 200, "reddiff": 50}


# ----------------------------------------------------------------------------- data
_CACHE: dict = {}


def series_stack(name: str, size: int, pixel_mm: float | None):
    """The series as a float32 (N, size, size) stack in physical units (HU offset applied)."""
    import numpy as np

    from medrecon.priors.data import stack_from_volume

    key = (name, size, pixel_mm)
    if key not in _CACHE:
        mod, rel, _, off = SERIES[name]
        if STACKS is not None:  # float16 stacks written by --write-stacks (a machine without the data)
            from medrecon.priors.data import read_stack, resize_stack

            st = read_stack(Path(STACKS) / f"{name}.npy")
            if st.data.shape[-1] != size:
                st = resize_stack(st, size)
            off = 0.0  # applied when the stack was written
        else:
            st = stack_from_volume(DATA_ROOT / rel, size, mod, pixel_mm)
        _CACHE[key] = (np.asarray(st.data, np.float32) + np.float32(off), float(st.pixel_size_mm))
    return _CACHE[key]


def write_stacks(modality: str, folder: Path, size: int, pixel_mm: float | None, max_slices: int) -> list[Path]:
    """Every series of ``modality`` as a float16 stack ``folder/NAME.npy`` (at most ``max_slices``
    slices, evenly spaced; HU offsets applied) to carry to a machine without the data."""
    import numpy as np

    from medrecon.priors.data import SliceStack, stack_from_volume, write_stack

    out = []
    for name, (mod, rel, _, off) in SERIES.items():
        if mod != modality:
            continue
        st = stack_from_volume(DATA_ROOT / rel, size, mod, pixel_mm if mod == "ct" else None)
        keep = np.unique(np.linspace(0, len(st.data) - 1, min(max_slices, len(st.data))).round().astype(int))
        meta = dict(st.meta, z_indices=[st.meta["z_indices"][i] for i in keep], series=name)
        sub = SliceStack(st.data[keep] + np.float32(off), st.modality, st.pixel_size_mm,
                         st.lo[keep] + off, st.hi[keep] + off, meta)
        out.append(write_stack(sub, folder / f"{name}.npy"))
    return out


def body_slices(data, modality: str, k: int, allowed=None) -> list[int]:
    """``k`` slice indices spread over the slices with a body fraction >= half the largest."""
    import numpy as np

    if modality == "ct":
        frac = (data > -500).mean((1, 2))
    else:
        frac = (data > 0.1 * np.percentile(data, 99)).mean((1, 2))
    ok = np.flatnonzero(frac >= 0.5 * frac.max())
    if allowed is not None:
        ok = np.intersect1d(ok, np.asarray(list(allowed)))
    if ok.size == 0:
        return []
    pos = np.linspace(0, ok.size - 1, k + 2)[1:-1] if ok.size > k else np.arange(ok.size)
    return sorted({int(ok[int(round(p))]) for p in pos})


def training_series(prior) -> list[str]:
    """Series names a prior trained on: ``provenance.series`` or matched in ``provenance.data``."""
    prov = (prior.config or {}).get("provenance", {}) or {}
    if prov.get("series"):
        return list(prov["series"])
    text = json.dumps(prov.get("data", ""))
    return [n for n, (_, rel, _, _) in SERIES.items() if rel.split("/")[0] in text and
            (len(rel.split("/")) == 1 or rel.split("/")[1] in text)]


def holdout_slices(prior, name: str, seen: list[str]):
    """The z range ``[a, b)`` of series ``name`` that the prior held out of training, or None.

    ``provenance.holdout_slices_z`` is either ``{series: [a, b]}`` or, for a prior trained on
    one series, that series' ``[a, b]``."""
    hold = (prior.config or {}).get("provenance", {}).get("holdout_slices_z")
    if isinstance(hold, dict):
        return hold.get(name)
    return hold if hold and len(seen) == 1 else None


# ----------------------------------------------------------------------------- measurement
def measure(modality: str, x, pixel_mm: float, setting: int, noise: float, seed: int):
    """A :class:`medrecon.Measurement` of the slices ``x`` (views or acceleration ``setting``)."""
    import numpy as np

    import medrecon

    vol = medrecon.Volume(np.ascontiguousarray(x, np.float32), np.diag([pixel_mm, pixel_mm, 1.0, 1.0]),
                          {"modality": modality.upper(), "units": "HU" if modality == "ct" else "arbitrary"})
    if modality == "ct":
        return medrecon.simulate(vol, "ct.parallel", {"n_views": int(setting)}, noise_std=noise,
                                 relative=True, seed=seed)
    params = {"coil_maps": {"synthetic": "birdcage", "n_coils": 8}, "real_image": True,
              "mask": {"kind": "random", "acceleration": int(setting), "center_fraction": 0.08, "seed": seed}}
    return medrecon.simulate(vol, "mri.sense", params, noise_std=noise, relative=True, seed=seed)


def window(modality: str, ref):
    if modality == "ct":
        return [CT_WINDOW] * len(ref)
    return [(float(r.min()), float(r.max())) for r in ref]


def score(modality: str, x, ref) -> dict:
    from medrecon.metrics import psnr_slices, ssim_slices

    p, s = [], []
    for xi, ri, w in zip(x, ref, window(modality, ref), strict=True):
        p.append(float(psnr_slices(xi[None], ri[None], w)[0]))
        s.append(float(ssim_slices(xi[None], ri[None], w)[0]))
    return {"psnr": p, "ssim": s}


# ----------------------------------------------------------------------------- methods
def method_spec(method: str, modality: str, tv_weight=None):
    """(sampler, params, needs prior) of a method name; ``name@k=v,k2=v2`` adds sampler parameters
    to the named method (e.g. ``dps-cached@tv=0.3``)."""
    base, _, extra = method.partition("@")
    sampler, params, needs = _methods(modality, tv_weight)[base]
    for kv in filter(None, extra.split(",")):
        k, _, v = kv.partition("=")
        params = dict(params, **{k: _number_or_text(v)})
    return sampler, params, needs


def _number_or_text(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def _methods(modality: str, tv_weight=None):
    tvkey = "lam" if modality == "ct" else "lam_rel"
    return {
        "classical": ("classical", {}, False),
        "sense": ("sense", {}, False),
        "tv": ("tv", {}, False),
        "tv-train": ("tv", {tvkey: tv_weight}, False),
        "dds": ("dds", {}, True),
        "dds-plain": ("dds", {"tv": 0.0}, True),  # official DDS's CG data step, whatever the prior recommends
        "dds-native": ("dds", {}, True),  # the prior on the data's grid even when it is finer (prior_scale)
        "dds-tv": ("dds", {"init": "tv", "t_start": T_START}, True),
        "dps": ("dps", {}, True),
        "dps-cached": ("dps", {"cache_interval": 3}, True),  # feature caching, N = 3 (docs/samplers.md)
        "reddiff": ("reddiff", {}, True),
    }


T_START = 0.2


def run_method(m, method: str, modality: str, prior, args, tv_weight=None):
    """Reconstruct the measurement ``m`` with ``method``; returns (x (B, H, W) float32, seconds)."""
    import numpy as np

    import medrecon

    sampler, params, needs = method_spec(method, modality, tv_weight)
    steps = args.steps.get(method, STEPS.get(method.partition("@")[0]))
    if args.quick and steps:
        steps = min(steps, 5 if needs else 30)
    t0 = time.perf_counter()
    vol = medrecon.reconstruct(m, sampler, prior if needs else None, steps=steps, params=params,
                               device=args.device, batch_size=args.batch, seed=args.seed, progress=False,
                               prior_scale="native" if method == "dds-native" else "auto")
    x = np.asarray(vol.data, np.float32)
    return x, (time.perf_counter() - t0) / x.shape[0], vol.meta.get("reconstruction", {})


def choose_tv_weight(modality: str, train_names: list[str], setting: int, args, log) -> float:
    """The TV weight with the best mean PSNR on slices of the training series (never the evaluated)."""
    import numpy as np

    best, table = None, {}
    cases = []
    for name in train_names:
        data, px = series_stack(name, args.size, args.pixel if modality == "ct" else None)
        z = body_slices(data, modality, 1)
        if z:
            cases.append((data[z], px, name))
    for w in TV_GRID[modality]:
        vals = []
        for ref, px, _name in cases:
            m = measure(modality, ref, px, setting, args.noise, args.seed)
            x, _, _ = run_method(m, "tv-train", modality, None, args, tv_weight=w)
            vals += score(modality, x, ref)["psnr"]
        table[w] = float(np.mean(vals)) if vals else float("nan")
        if best is None or table[w] > table[best]:
            best = w
    log(f"  tv-train weight for {setting}: {best} (grid {table} on {[c[2] for c in cases]})")
    return best


# ----------------------------------------------------------------------------- protocol
def evaluate_series(name: str, prior, z_allowed, settings, methods, args, log, seen=False,
                    tv_weights=None) -> dict:
    import numpy as np

    mod = SERIES[name][0]
    data, px = series_stack(name, args.size, args.pixel if mod == "ct" else None)
    z = body_slices(data, mod, args.slices, z_allowed)
    ref = data[z]
    out = {"series": name, "role": SERIES[name][2], "seen": seen, "slices": z, "pixel_mm": px, "results": {}}
    for s in settings:
        res = {}
        m = measure(mod, ref, px, s, args.noise, args.seed)
        for meth in methods:
            if meth == "sense" and mod != "mr":
                continue
            x, sec, rec = run_method(m, meth, mod, prior, args, (tv_weights or {}).get(s))
            res[meth] = {**score(mod, x, ref), "sec_per_slice": sec}
            if rec.get("prior_fit") and "fit" not in res:  # the engine's check (medrecon.engine.prior_fit)
                res["fit"] = [rec["prior_fit"]["per_slice"][str(k)] for k in range(len(z))]
            log(f"  {name} {s}: {meth:9s} PSNR {np.mean(res[meth]['psnr']):6.2f} dB ({sec:.1f} s/slice)")
        out["results"][str(s)] = res
    return out


def evaluate_prior(prior_name: str, modality: str, settings, methods, args, log) -> dict:
    import medrecon

    prior = medrecon.load_prior(prior_name, device=args.device)
    seen = training_series(prior)
    if args.pixel is None and modality == "ct":
        args.pixel = float(prior.config.get("pixel_size_mm") or 2.1484375)
    tv_w = {s: choose_tv_weight(modality, seen, s, args, log) for s in settings} if "tv-train" in methods else {}
    names = [n for n in SERIES if SERIES[n][0] == modality and (not args.series or n in args.series)]
    out = []
    for n in names:
        hold = holdout_slices(prior, n, seen) if n in seen else None
        if n in seen and not hold:
            continue
        allowed = range(*hold) if n in seen else None
        log(f"{n} ({'seen, held-out slices' if n in seen else SERIES[n][2]})")
        out.append(evaluate_series(n, prior, allowed, settings, methods, args, log, seen=n in seen,
                                   tv_weights=tv_w))
    return {"prior": prior_name, "trained_on": seen, "tv_train_weights": tv_w, "series": out}


def train_loso_prior(train_names: list[str], modality: str, folder: Path, args, log) -> Path:
    """``medrecon train-prior`` on the given series (stacks prepared under ``folder``)."""
    from medrecon.priors.data import stack_from_volume, write_stack

    if (folder / "config.json").exists():
        return folder
    data_args = []
    for n in train_names:
        stack_path = (Path(STACKS) if STACKS else folder.parent / "stacks") / f"{n}.npy"
        if not stack_path.exists():
            st = stack_from_volume(DATA_ROOT / SERIES[n][1], args.size, modality,
                                   args.pixel if modality == "ct" else None)
            write_stack(st, stack_path)
        data_args += ["--data", str(stack_path)]
    cmd = [sys.executable, "-m", "medrecon.cli.main", "train-prior", *data_args, "--modality", modality,
           "--output", str(folder), "--steps", str(args.train_steps), "--channels", args.train_channels,
           "--batch-size", str(args.train_batch), "--device", args.device, "--samples", "0"]
    if (folder / "checkpoint").exists():  # an interrupted run of this prior
        cmd.append("--resume")
    if args.train_patch:
        cmd += ["--patch", str(args.train_patch)]
    if args.train_zoom:
        cmd += ["--zoom", str(args.train_zoom)]
    log("  " + shlex.join(cmd))
    subprocess.run(cmd, check=True)
    return folder


def evaluate_loso(modality: str, settings, methods, args, log) -> dict:
    work = Path(args.work)
    train_all = [n for n in SERIES if SERIES[n][0] == modality and SERIES[n][2] == "train"]
    if args.series:
        train_all = [n for n in train_all if n in args.series] or train_all
    if args.pixel is None and modality == "ct":
        args.pixel = 2.1484375
    out = []
    tv_w = {}
    for left in [*train_all, None]:
        names = [n for n in train_all if n != left]
        folder = train_loso_prior(names, modality, work / f"{modality}-without-{left or 'none'}", args, log)
        import medrecon

        prior = medrecon.load_prior(folder, device=args.device)
        if "tv-train" in methods:
            tv_w = {s: choose_tv_weight(modality, names, s, args, log) for s in settings}
        targets = [left] if left else [n for n in SERIES if SERIES[n][0] == modality and SERIES[n][2] == "eval"
                                       and (not args.series or n in args.series)]
        for n in targets:
            log(f"{n} (left out; prior trained on {names})")
            r = evaluate_series(n, prior, None, settings, methods, args, log, tv_weights=tv_w)
            r["trained_on"] = names
            out.append(r)
    return {"prior": "leave-one-series-out", "series": out}


def summarise(res: dict, methods, settings) -> dict:
    """Means over the unseen series of each role, per setting and method."""
    import numpy as np

    summ = {}
    for s in settings:
        for group in ("train", "eval"):
            rows = [r for r in res["series"] if r["role"] == group and not r["seen"]]
            for meth in methods:
                v = [np.mean(r["results"][str(s)][meth]["psnr"]) for r in rows if meth in r["results"][str(s)]]
                if v:
                    summ.setdefault(str(s), {}).setdefault(group, {})[meth] = float(np.mean(v))
    return summ


def markdown(res: dict, methods, settings, modality: str) -> str:
    import numpy as np

    unit = "views" if modality == "ct" else "x"
    names = [r["series"] + (" (seen)" if r["seen"] else "") for r in res["series"]]
    lines = []
    for s in settings:
        lines.append(f"\n{s} {unit}, PSNR dB (SSIM)\n")
        lines.append("| method | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for meth in methods:
            cells = []
            for r in res["series"]:
                d = r["results"][str(s)].get(meth)
                cells.append("-" if d is None else f"{np.mean(d['psnr']):.2f} ({np.mean(d['ssim']):.3f})")
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        fits = [r["results"][str(s)].get("fit") for r in res["series"]]
        if any(fits):
            lines.append("| prior fit | " + " | ".join("-" if not f else f"{np.median(f):.2f}" for f in fits)
                         + " |")
    return "\n".join(lines)


def merge(paths, output) -> int:
    """Combine results files (``--merge``): runs over disjoint series, or later runs that add or
    re-measure methods on series already there (a row of a later run replaces the same series,
    setting and method of an earlier one, e.g. ``dds`` after a prior's recommended settings
    changed); series in :data:`SERIES` order, summary and table recomputed, every run's command kept."""
    import copy

    from medrecon.io.atomic import atomic_file

    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    keys = ("prior", "modality", "settings", "noise_rel", "slices_per_series", "size")
    for r in runs[1:]:
        diff = [k for k in keys if r.get(k) != first.get(k)]
        if diff:
            raise SystemExit(f"generalization --merge: the runs differ in {', '.join(diff)}")
    merged: dict = {}
    methods: list = []
    for r in runs:
        methods += [m for m in r["methods"] if m not in methods]
        for x in r["series"]:
            cur = merged.get(x["series"])
            if cur is None:
                merged[x["series"]] = copy.deepcopy(x)
                continue
            if cur["slices"] != x["slices"]:
                raise SystemExit(f"generalization --merge: {x['series']} was measured on slices {cur['slices']} "
                                 f"and {x['slices']}")
            for setting, rows in x["results"].items():
                cur["results"].setdefault(setting, {}).update(rows)
    series = list(merged.values())
    order = list(SERIES)
    res = dict(first, series=sorted(series, key=lambda x: order.index(x["series"])), methods=methods)
    res["command"] = " && ".join([r["command"] for r in runs] +
                                 ["python benchmarks/generalization.py --merge " + shlex.join(paths)])
    res["seconds"] = round(sum(r["seconds"] for r in runs), 1)
    res["summary"] = summarise(res, res["methods"], res["settings"])
    res["markdown"] = markdown(res, res["methods"], res["settings"], res["modality"])
    out = Path(output) if output else RESULTS / f"generalization_{res['modality']}.json"
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    print(res["markdown"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", choices=("ct", "mr"), default="ct")
    ap.add_argument("--prior", default=None, help="prior to evaluate (default: ct-default / mr-default)")
    ap.add_argument("--loso", action="store_true", help="leave-one-series-out: train a prior per left-out series")
    ap.add_argument("--series", nargs="*", default=None, help="only these series (names in SERIES)")
    ap.add_argument("--views", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--accels", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--slices", type=int, default=2, help="slices per series")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pixel", type=float, default=None, help="CT pixel size mm (default: the prior's)")
    ap.add_argument("--noise", type=float, default=None, help="relative noise (default 0.01 CT, 0.005 MR)")
    ap.add_argument("--steps", nargs="*", default=[], help="per-method steps, e.g. dds=50 dps=200")
    ap.add_argument("--t-start", type=float, default=0.2, help="dds-tv: the noise level to start from")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "generalization"), help="--loso: priors and stacks")
    ap.add_argument("--train-steps", type=int, default=20000)
    ap.add_argument("--train-channels", default="small")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-patch", type=int, default=None)
    ap.add_argument("--train-zoom", type=float, default=0.3)
    ap.add_argument("--stacks", default=None, help="read the series from float16 stacks in this folder")
    ap.add_argument("--write-stacks", default=None, metavar="DIR",
                    help="only write every series of --modality as a float16 stack into DIR (to carry to a GPU)")
    ap.add_argument("--stack-slices", type=int, default=64, help="--write-stacks: slices per series (evenly spaced)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 x 64, 1 slice, 2 series, few steps")
    ap.add_argument("--output", default=None, help="JSON to write (default: benchmarks/results/generalization_MOD.json)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only combine results files of runs over disjoint --series (same prior, settings and "
                         "methods: e.g. one process per core) into --output")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.output)
    global T_START, STACKS
    T_START, STACKS = args.t_start, args.stacks
    args.steps = {k: int(v) for k, v in (s.split("=") for s in args.steps)}
    mod = args.modality
    if args.write_stacks:
        paths = write_stacks(mod, Path(args.write_stacks), args.size, args.pixel or (2.1484375 if mod == "ct" else None),
                             args.stack_slices)
        print("\n".join(f"{p} {p.stat().st_size / 2**20:.1f} MiB" for p in paths))
        return 0
    if not DATA_ROOT.exists() and not STACKS:
        print(f"generalization: {DATA_ROOT} is absent; nothing to measure")
        return 0
    settings = args.views if mod == "ct" else args.accels
    if args.noise is None:
        args.noise = 0.01 if mod == "ct" else 0.005
    methods = args.methods or (["classical", "tv-train", "tv", "dds", "dds-tv"] if mod == "ct"
                               else ["classical", "sense", "tv-train", "tv", "dds", "dds-tv"])
    if args.quick:
        args.size, args.slices = 64, 1
        ours = [n for n in SERIES if SERIES[n][0] == mod]
        if args.loso:  # three training series (three left-out priors) and one evaluation-only series
            args.series = args.series or [n for n in ours if SERIES[n][2] == "train"][1:4] + \
                [n for n in ours if SERIES[n][2] == "eval"][:1]
            args.train_steps, args.train_channels, args.train_batch = 30, "tiny", 8
        args.series = args.series or ours[-2:]
        settings = settings[:1]
        if mod == "ct" and args.pixel is None:
            args.pixel = 2.1484375 * 4

    def log(msg):
        print(msg, flush=True)

    t0 = time.time()
    if args.loso:
        res = evaluate_loso(mod, settings, methods, args, log)
    else:
        res = evaluate_prior(args.prior or f"{mod}-default", mod, settings, methods, args, log)
    res.update({
        "command": "python benchmarks/generalization.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(), "modality": mod, "settings": settings, "methods": methods,
        "noise_rel": args.noise, "slices_per_series": args.slices, "size": args.size, "device": args.device,
        "t_start": T_START, "seconds": round(time.time() - t0, 1),
        "summary": summarise(res, methods, settings),
    })
    table = markdown(res, methods, settings, mod)
    res["markdown"] = table
    out = Path(args.output) if args.output else RESULTS / f"generalization_{mod}.json"
    if not args.quick or args.output:
        from medrecon.io.atomic import atomic_file

        with atomic_file(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(res, indent=1))
        log(f"wrote {out}")
    print(table)
    print(json.dumps(res["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
