"""Uncertainty of a reconstruction checked against a reference, and a prior's std calibrated on data.

* :func:`evaluate_uncertainty` (``medrecon evaluate RECON --reference REF --uncertainty``): the
  coverage, calibration curve and std-|error| correlation of a reconstruction made with
  ``samples`` > 1 (its mean, and its ``std`` component written next to it), JSON and a figure.
* :func:`calibrate_uncertainty` (``medrecon calibrate-uncertainty PRIOR --data ...``): simulate
  measurements of held-out reference volumes, reconstruct them with N draws for each sampler,
  measure the factor that makes the 2-std coverage nominal (:func:`medrecon.uncertainty.calibration_factor`),
  optionally check it on other volumes, and store it in the prior's config.json
  (``uncertainty_calibration``, outside the fingerprint; written atomically; an existing entry
  for the same sampler, operator and steps is replaced only with ``overwrite``).

It sits above the engine (it runs reconstructions), so :mod:`medrecon.uncertainty` stays free of it
and the engine can use it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

__all__ = ["evaluate_uncertainty", "calibrate_uncertainty", "std_path", "write_json"]


def std_path(recon) -> Path:
    """Where the ``std`` component of a reconstruction written to ``recon`` lies (``out.nii.gz`` ->
    ``out.std.nii.gz``; a DICOM folder ``out`` -> ``out.std``)."""
    from medrecon.engine.checks import component_path

    return component_path(recon, "std")


def _same_geometry(a, b, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"the {what} has shape {tuple(b.shape)} but the reconstruction {tuple(a.shape)}: "
                         "give the reference volume the reconstruction was made from")
    if not np.allclose(np.asarray(a.affine, np.float64), np.asarray(b.affine, np.float64), rtol=1e-4, atol=1e-3):
        raise InputError(f"the {what} lies elsewhere in space than the reconstruction (their affines differ): "
                         "give the reference volume the reconstruction was made from")


def evaluate_uncertainty(recon, reference, *, std=None, window=None, json_path=None, png=None,
                         overwrite: bool = False, resample_reference: bool = False) -> dict[str, Any]:
    """Coverage of the reconstruction's ``std`` against ``reference`` (:func:`medrecon.uncertainty.uncertainty_report`).

    Parameters
    ----------
    recon : path or Volume
        A reconstruction made with ``samples`` > 1: the draws' mean.  Its ``std`` component is read
        from :func:`std_path` of the path (or ``recon.components["std"]`` of a Volume) unless ``std``
        is given.
    reference : path or Volume
        The ground truth, on the reconstruction's grid (same shape and affine), or, with
        ``resample_reference``, resampled onto it (:func:`medrecon.evaluation.match_reference`).
    window : (lo, hi), optional
        Only pixels whose reference lies inside count; default :func:`medrecon.intensity_window.default_window`
        (CT [-1000, 1000] HU, otherwise the reference's [min, max]).
    json_path, png : path, optional
        The report as JSON, and the figure (:func:`medrecon.figures.uncertainty_figure`, the middle
        slice), written atomically; refused if they exist unless ``overwrite``.

    Returns the report, plus ``window``, ``units``, ``shape``, ``samples`` / ``antithetic`` and
    ``expected_exact`` when the reconstruction records its draws, and the ``uncertainty_calibration``
    the reconstruction applied (None: the raw spread).
    """
    from medrecon.evaluation import as_volume, match_reference
    from medrecon.intensity_window import default_window, parse_window
    from medrecon.io.atomic import check_outputs
    from medrecon.uncertainty import uncertainty_report

    sp = std_path(recon) if std is None and isinstance(recon, (str, os.PathLike)) else None
    check_outputs({"json_path": json_path, "png": png},
                  {"reconstruction": recon, "reference": reference, "std": std or sp}, overwrite)
    rec_v = as_volume(recon, "reconstruction", measurements=False)
    if std is None:
        comps = getattr(rec_v, "components", None) or {}
        if "std" in comps:
            std = comps["std"]
        elif sp is None or not sp.exists():
            where = f" (no {str(sp)!r} next to it)" if sp is not None else ""
            raise InputError(f"the reconstruction has no std component{where}: reconstruct with --samples N "
                             "(N >= 2) to get one")
        else:
            std = sp
    std_v = as_volume(std, "std component", measurements=False)
    ref_v = as_volume(reference, "reference", measurements=False)
    _same_geometry(rec_v, std_v, "std component")
    ref_v, resampled = match_reference(rec_v, ref_v, resample_reference)
    meta = ref_v.meta or {}
    if not (meta.get("modality") or meta.get("units")):
        meta = rec_v.meta or {}
    lo, hi = default_window(ref_v, meta=meta) if window is None else parse_window(window, ref_v.data)
    rec = (rec_v.meta or {}).get("reconstruction") or {}
    n = rec.get("samples")
    out = uncertainty_report(rec_v.data, std_v.data, ref_v.data, window=(lo, hi),
                             samples=n if isinstance(n, int) and n >= 2 else None,
                             antithetic=bool(rec.get("antithetic")))
    out.update({"window": [lo, hi], "window_source": "default" if window is None else "given",
                "units": (rec_v.meta or {}).get("units") or meta.get("units"), "shape": list(rec_v.shape),
                "uncertainty_calibration": rec.get("uncertainty_calibration"), "reference_resampled": resampled})
    if png is not None:
        from medrecon.figures import uncertainty_figure

        z = rec_v.shape[0] // 2
        dz, dy, dx = rec_v.spacing
        cov = out["overall"]["coverage"]
        title = (f"slice {z} of {rec_v.shape[0]}; coverage at 1 / 2 / 3 std: "
                 + " / ".join("-" if cov[k] is None else f"{100 * cov[k]:.1f} %" for k in ("1", "2", "3"))
                 + " (nominal 68.3 / 95.4 / 99.7 %)")
        uncertainty_figure(rec_v.data[z], ref_v.data[z], std_v.data[z], out, window=(lo, hi),
                           units=out["units"] or "", spacing=(dy, dx), title=title, path=png)
        out["png"] = str(png)
    if json_path is not None:
        write_json(json_path, out)
    return out


def write_json(path, obj) -> None:
    from medrecon.io.atomic import atomic_file
    from medrecon.jsonable import json_default

    with atomic_file(Path(path), overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=json_default) + "\n")


def _prior_folder(prior) -> Path:
    p = Path(os.fspath(prior))
    if not (p / "config.json").is_file():
        raise InputError(f"{str(prior)!r} is not a prior folder (no config.json): calibrating writes into the "
                         "prior's config.json, so give a folder (copy a shipped prior to one first)")
    shipped = (Path(__file__).parent / "priors" / "shipped").resolve()
    if p.resolve().is_relative_to(shipped):
        raise InputError(f"{str(prior)!r} is a prior shipped with medrecon, which is never modified: copy the "
                         "folder and calibrate the copy")
    return p


def _pick_slices(n: int, k: int | None) -> list[int]:
    if k is None or k >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k + 2)[1:-1]})


def _draws(volumes, names, prior, sampler, operator, params, noise, samples, antithetic, steps, slices, seed,
           device, batch_size, log):
    """Mean, std, reference and window of the chosen slices of each volume, pooled."""
    import medrecon
    from medrecon.intensity_window import default_window
    from medrecon.volume import Volume

    means, stds, refs, wins = [], [], [], []
    for vol, name in zip(volumes, names, strict=True):
        z = _pick_slices(vol.shape[0], slices)
        sub = Volume(np.ascontiguousarray(vol.data[z], np.float32), vol.affine, dict(vol.meta or {}))
        m = medrecon.simulate(sub, operator, params, noise_std=noise, relative=True, seed=seed)
        r = medrecon.reconstruct(m, sampler, prior, steps=steps, samples=samples, antithetic=antithetic,
                                 seed=seed, device=device, batch_size=batch_size, progress=False, calibration=False)
        win = default_window(sub)
        means.append(r.data)
        stds.append(r.components["std"].data)
        refs.append(sub.data)
        wins += [win] * len(z)
        log(f"{sampler}: {name} slices {z} reconstructed with {samples} draws")
    return (np.concatenate(means), np.concatenate(stds), np.concatenate(refs), wins,
            int(r.meta["reconstruction"]["steps"] or 0), dict(r.meta["reconstruction"]["sampler"]))


def calibrate_uncertainty(prior, data, *, operator: str, params: dict | None = None, noise: float = 0.01,
                          samplers=None, samples: int = 8, antithetic: bool = True, steps: int | None = None,
                          slices: int | None = 2, check=None, seed: int = 0, device: str = "cpu",
                          batch_size: int = 8, overwrite: bool = False, write: bool = True,
                          log=None) -> dict[str, Any]:
    """Measure and store a prior's std calibration factor per sampler.

    For each reference volume of ``data`` (held-out data: never the prior's training slices),
    ``slices`` evenly spaced slices are measured with ``operator`` (``params``; Gaussian noise of
    ``noise`` times the RMS of the noiseless data) and reconstructed with ``samples`` draws
    (``antithetic`` pairs) and the raw spread; the factor ``s`` that makes the pooled 2-std
    coverage 95.4 % (:func:`medrecon.uncertainty.calibration_factor`, window
    :func:`~medrecon.intensity_window.default_window` of each volume) is stored with the data it
    was measured on in the prior folder's config.json, section ``uncertainty_calibration``.  With
    ``check`` (other reference volumes) the calibrated coverage there is measured and stored too.

    ``samplers``: default those the prior recommends for ``operator`` (config ``recommended``),
    else ``["dds"]``.  ``steps``: default the recommended steps.  Refused before any work: fewer
    than two draws, a shipped prior, an existing entry for the same sampler, operator and steps
    without ``overwrite``.  Returns ``{sampler: entry}``."""
    from medrecon.evaluation import as_volume
    from medrecon.priors.config import validate_config
    from medrecon.uncertainty import calibration_factor, draw_factor, select_calibration, uncertainty_report

    log = log or (lambda msg: None)
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or int(samples) < 2:
        raise InputError(f"calibration needs at least two draws per slice (a spread), got samples={samples!r}")
    samples = int(samples)
    if antithetic and samples % 2:
        raise InputError(f"antithetic draws come in pairs: samples must be even, got {samples}")
    if slices is not None and int(slices) < 1:
        raise InputError(f"slices must be at least 1, got {slices}")
    folder = _prior_folder(prior)
    cfg_path = folder / "config.json"
    cfg = validate_config(json.loads(cfg_path.read_text()), str(cfg_path))
    data = list(data or [])
    if not data:
        raise InputError("give at least one reference volume to calibrate on (--data)")
    rec = cfg.get("recommended") or {}
    if not samplers:
        samplers = [s for s, r in rec.items() if isinstance(r, dict) and operator in (r.get("operators") or [])]
        samplers = samplers or ["dds"]
    names = [str(d) if isinstance(d, (str, os.PathLike)) else f"volume {i}" for i, d in enumerate(data)]
    check = list(check or [])
    check_names = [str(d) if isinstance(d, (str, os.PathLike)) else f"volume {i}" for i, d in enumerate(check)]
    for smp in samplers:  # before any work: would an entry be replaced?
        old = select_calibration(cfg, smp, operator, steps)
        if old is not None and write and not overwrite and (steps is None or old.get("steps") == steps):
            raise InputError(f"the prior already stores an uncertainty calibration for {smp} with {operator} "
                             f"({old.get('steps')} steps, factor {old['factor']:.3g}); pass --overwrite-calibration "
                             "(overwrite=True) to replace it")
    vols = [as_volume(d, "reference", measurements=False) for d in data]
    cvols = [as_volume(d, "check reference", measurements=False) for d in check]
    import medrecon

    out: dict[str, Any] = {}
    for smp in samplers:
        mean, std, ref, wins, n_steps, spec = _draws(vols, names, folder, smp, operator, params or {}, noise,
                                                     samples, antithetic, steps, slices, seed, device, batch_size,
                                                     log)
        f = calibration_factor(mean, std, ref, windows=wins)
        raw = uncertainty_report(mean, std, ref, windows=wins)["overall"]
        entry: dict[str, Any] = {
            "factor": f["factor"], "prior_factor": f["factor"] / draw_factor(samples, antithetic), "k": 2.0,
            "operator": operator, "operator_params": params or {}, "noise_rel": noise, "steps": n_steps,
            "sampler_params": {k: v for k, v in spec.items() if k != "name"}, "samples": samples,
            "antithetic": bool(antithetic),
            "coverage_raw": raw["coverage"], "coverage_calibrated_2": f["coverage_calibrated"],
            "measured_on": {"data": names, "slices_per_volume": slices, "pixels": f["pixels"], "seed": seed},
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "medrecon_version": medrecon.__version__,
        }
        if cvols:
            cm, cs, cr, cw, _, _ = _draws(cvols, check_names, folder, smp, operator, params or {}, noise, samples,
                                          antithetic, n_steps, slices, seed, device, batch_size, log)
            entry["checked_on"] = {
                "data": check_names, "pixels": int(cm.size),
                "coverage_raw": uncertainty_report(cm, cs, cr, windows=cw)["overall"]["coverage"],
                "coverage_calibrated": uncertainty_report(cm, cs * f["factor"], cr, windows=cw)["overall"]["coverage"],
            }
        log(f"{smp}: factor {f['factor']:.3f} (2-std coverage {100 * f['coverage_raw']:.1f} % raw)")
        out[smp] = entry
    if write:
        _store(cfg_path, out, overwrite)
    return out


def _store(cfg_path: Path, entries: dict, overwrite: bool) -> None:
    """Add ``entries`` ({sampler: entry}) to config.json's ``uncertainty_calibration`` atomically
    (re-read first; an entry of the same sampler, operator and steps is replaced only with
    ``overwrite``), then load the prior again to prove it still verifies."""
    from medrecon.io.atomic import atomic_file
    from medrecon.priors.config import validate_config
    from medrecon.uncertainty import SECTION

    cfg = validate_config(json.loads(cfg_path.read_text()), str(cfg_path))
    section = dict(cfg.get(SECTION) or {})
    for smp, e in entries.items():
        keep = []
        for old in section.get(smp) or []:
            if old.get("operator") == e["operator"] and old.get("steps") == e["steps"]:
                if not overwrite:
                    raise InputError(f"the prior already stores an uncertainty calibration for {smp} with "
                                     f"{e['operator']} at {e['steps']} steps; pass --overwrite-calibration to replace it")
                continue
            keep.append(old)
        section[smp] = [*keep, e]
    cfg[SECTION] = section
    validate_config(cfg, str(cfg_path))
    with atomic_file(cfg_path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2) + "\n")
    from medrecon.priors.model import DiffusionPrior

    DiffusionPrior.load(cfg_path.parent)  # the weights still verify against the config (sha256, finite)
