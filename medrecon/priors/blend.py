"""Weight-space blends of priors: one network whose weights are a weighted mean of the weights
of priors fine-tuned from a common one (WiSE-FT: Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022).

For priors ``theta_1 .. theta_k`` with weights ``w_i >= 0``, ``sum_i w_i = 1``, the blend is

    theta = sum_i w_i theta_i        (every tensor of the network, in float32)

A short fine-tune stays in its source's loss basin, so the straight path between the two
networks is low-loss all along, and a point on it trades the source's fit on its own data
against the fine-tune's fit on the new data; the trade is smooth in ``w``.  That is the use:
``ct-default`` fine-tuned on more body regions gains on unfamiliar anatomy and loses a little on
the patient it was trained on, and a blend keeps most of both.  Averaging two networks trained
apart from different starts gives neither, so :func:`blend_priors` refuses priors that share no
ancestor (by the SHA-256 of the weights, following ``training.init_from``).

The blend's config.json names every source (prior, weights SHA-256, weight, its training
record) under ``training.blend`` and the union of the data all of them learnt from under
``training.data_sha256``.  Its ``recommended`` settings are copied from the first source and
say so (``recommended_from``): re-validate them before relying on them.  ``fit_reference``
(:mod:`medrecon.priors.fit`) is measured afresh on ``val_data`` when given, else left out.

>>> import torch
>>> a = {"w": torch.tensor([0.0, 2.0])}
>>> b = {"w": torch.tensor([1.0, 4.0])}
>>> blend_state_dicts([a, b], [0.25, 0.75])["w"]
tensor([0.7500, 3.5000])
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medrecon.errors import InputError

__all__ = ["blend_state_dicts", "lineage_shas", "blend_priors", "SAME_KEYS"]

#: config.json entries that must agree for two networks' weights to be averaged.
SAME_KEYS = ("modality", "image_size", "pixel_size_mm", "network", "schedule", "prediction", "intensity", "padding")


def blend_state_dicts(states: Sequence[dict], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i][key]`` for every key (float32); the keys must agree."""
    keys = list(states[0])
    out = {}
    for k in keys:
        acc = torch.zeros_like(states[0][k], dtype=torch.float32)
        for s, w in zip(states, weights, strict=True):
            acc += float(w) * s[k].float()
        out[k] = acc
    return out


def lineage_shas(cfg: dict) -> set[str]:
    """The SHA-256 of a prior's weights and of every prior it was fine-tuned or blended from."""
    shas = set()
    w = (cfg.get("weights") or {}).get("sha256")
    if w:
        shas.add(str(w))

    def walk(rec):
        if not isinstance(rec, dict):
            return
        if rec.get("weights_sha256"):
            shas.add(str(rec["weights_sha256"]))
        walk(rec.get("init_from"))
        walk(rec.get("training"))
        for src in rec.get("blend") or []:
            walk(src)

    walk(cfg.get("training") or {})
    return shas


def _data_shas(training: dict) -> set[str]:
    out = set(map(str, training.get("data_sha256") or []))
    init = training.get("init_from")
    if isinstance(init, dict):
        out |= _data_shas(init)
    for src in training.get("blend") or []:
        out |= _data_shas((src or {}).get("training") or {})
    return out


def blend_priors(sources: Sequence[str], weights: Sequence[float], output, *, val_data=None,
                 overwrite: bool = False, dtype: str = "float16") -> dict[str, Any]:
    """Write the blend ``sum_i weights[i] * sources[i]`` as a prior folder ``output``; returns its
    config.  Errors (:class:`InputError`, one sentence, nothing written): fewer than two sources,
    weights that are negative or do not sum to 1, networks or intensity maps that differ, priors
    with no common ancestor, an existing ``output`` without ``overwrite``."""
    from medrecon.io.atomic import atomic_dir, check_target
    from medrecon.priors.model import DiffusionPrior, load_prior

    if len(sources) < 2:
        raise InputError("a blend needs at least two priors")
    if len(weights) != len(sources):
        raise InputError(f"give one weight per prior: {len(sources)} priors, {len(weights)} weights")
    w = [float(v) for v in weights]
    if any(not (v >= 0.0) for v in w) or abs(sum(w) - 1.0) > 1e-6:
        raise InputError(f"blend weights must be >= 0 and sum to 1, got {', '.join(f'{v:g}' for v in w)}")
    output = Path(output)
    check_target(output, overwrite)
    priors = [load_prior(s) for s in sources]
    base = priors[0].config
    for s, p in zip(sources[1:], priors[1:], strict=True):
        for key in SAME_KEYS:
            if p.config.get(key) != base.get(key):
                raise InputError(f"{s!r} has another {key} than {sources[0]!r} ({p.config.get(key)!r} against "
                                 f"{base.get(key)!r}), so their weights cannot be averaged")
    common = set.intersection(*(lineage_shas(p.config) for p in priors))
    if not common:
        raise InputError(f"{', '.join(map(repr, sources))} share no ancestor (training.init_from), and averaging "
                         "the weights of networks trained apart gives neither; blend a prior with its fine-tunes")
    state = blend_state_dicts([p.net.state_dict() for p in priors], w)
    cfg = copy.deepcopy(base)
    recs = [{"prior": str(s), "weights_sha256": (p.config.get("weights") or {}).get("sha256"), "weight": v,
             "training": copy.deepcopy(p.config.get("training") or {})} for s, p, v in zip(sources, priors, w, strict=True)]
    cfg["training"] = {"blend": recs, "method": "weight-space blend (WiSE-FT): sum_i w_i theta_i",
                       "data_sha256": sorted(set().union(*(_data_shas(r["training"]) for r in recs)))}
    cfg["provenance"] = {"blend_of": [{"prior": str(s), "weight": v, "provenance": p.config.get("provenance")}
                                      for s, p, v in zip(sources, priors, w, strict=True)]}
    cfg.pop("fit_reference", None)
    cfg.pop("uncertainty_calibration", None)
    if "recommended" in cfg:
        cfg["recommended_from"] = f"{sources[0]} (copied, not re-validated for the blend)"
    prior = DiffusionPrior(cfg)
    prior.net.load_state_dict(state)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        prior.save(tmp, dtype=dtype)
        if val_data:
            _add_fit_reference(tmp, val_data)
    return json.loads((output / "config.json").read_text())


def _add_fit_reference(folder: Path, val_data) -> None:
    """``fit_reference`` of the saved blend on the ``val_data`` stacks (:func:`record_fit_reference`)."""
    from medrecon.priors.data import load_sources
    from medrecon.priors.fit import record_fit_reference
    from medrecon.priors.model import CONFIG_NAME

    cfg = json.loads((folder / CONFIG_NAME).read_text())
    stack, prov = load_sources(list(val_data), cfg["image_size"], cfg["modality"])
    record_fit_reference(folder, torch.from_numpy(stack.to_net()),
                         data=", ".join(f"{Path(p['path']).name} ({p['sha256'][:12]})" for p in prov))
