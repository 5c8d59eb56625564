"""What determines a run's result, and its hash: the key of checkpoints and the record of outputs.

``run_settings`` gathers the measurement's SHA-256 (``y`` slice by slice, noise level, volume shape,
affine, units), the operator spec, the sampler spec, the prior fingerprint, the effective step count,
the seed and ``amp``; :func:`settings_hash` is the SHA-256 of its canonical JSON.  A resumed run or
another part of a split run must present the same hash (:mod:`medrecon.engine.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = ["ENGINE_VERSION", "run_settings", "settings_hash", "prior_fingerprint", "measurement_hash"]

#: bumped when the engine's results change for the same settings (invalidates old checkpoints)
ENGINE_VERSION = 1


def _hash_array(h, arr: np.ndarray) -> None:
    arr = np.asarray(arr)
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    if arr.ndim == 0 or arr.shape[0] == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return
    for k in range(arr.shape[0]):  # slice by slice: no full copy of a large y
        h.update(np.ascontiguousarray(arr[k]).tobytes())


def measurement_hash(m) -> str:
    h = hashlib.sha256()
    _hash_array(h, m.y)
    h.update(json.dumps([float(m.noise_std), list(m.volume_shape), np.asarray(m.affine).tolist(), m.units],
                        sort_keys=True).encode())
    return h.hexdigest()


def _tensor_bytes(t) -> bytes:
    import torch

    t = t.detach().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).contiguous().numpy().tobytes()


#: config sections that describe a prior without changing what it computes (what it recommends
#: to samplers, how and on what it was trained, its fit reference, the calibration of its draws'
#: spread, which scales the std component after sampling): left out of the fingerprint
DESCRIPTIVE = ("recommended", "training", "provenance", "fit_reference", "uncertainty_calibration")


def _config_part(cfg: dict, verified: str | None) -> dict:
    """The config without the :data:`DESCRIPTIVE` sections, its ``weights.sha256`` (a claim) replaced
    by ``verified`` (the digest of the bytes actually loaded) or, when there is none, left out."""
    part = {k: v for k, v in cfg.items() if k not in DESCRIPTIVE}
    weights = part.get("weights")
    if isinstance(weights, dict) or verified:
        weights = {k: v for k, v in (weights if isinstance(weights, dict) else {}).items() if k != "sha256"}
        if verified:
            weights["sha256"] = verified
        part["weights"] = weights
    return part


def prior_fingerprint(prior) -> str | None:
    """SHA-256 (16 hex digits) of what determines a prior's output.

    A prior that defines ``fingerprint()`` gives its own.  Otherwise: its class name, its config
    without the :data:`DESCRIPTIVE` sections, and its weights: the SHA-256 of the weights file's
    bytes that loading verified (``weights_sha256``, :mod:`medrecon.priors.integrity`), else the
    tensors of its state -- never the config's ``weights.sha256`` claim alone -- plus an intensity
    map bound to a volume (``bound_intensity``).  A prior wrapping another (an attribute with an
    ``eps``, e.g. :class:`~medrecon.priors.rescaled.RescaledPrior`) includes the wrapped one's."""
    import torch

    if prior is None:
        return None
    own = getattr(prior, "fingerprint", None)
    if callable(own):
        return str(own())
    h = hashlib.sha256(type(prior).__qualname__.encode())
    cfg = getattr(prior, "config", None)
    verified = getattr(prior, "weights_sha256", None)
    verified = verified if isinstance(verified, str) and verified else None
    if isinstance(cfg, dict):
        h.update(json.dumps(_config_part(cfg, verified), sort_keys=True, default=str).encode())
    if isinstance(prior, torch.nn.Module):
        if verified is None:
            for k, v in sorted(prior.state_dict().items()):
                h.update(k.encode())
                h.update(_tensor_bytes(v))
    else:
        for k, v in sorted(vars(prior).items()):
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(_tensor_bytes(v))
            elif callable(getattr(v, "eps", None)):  # a wrapped prior (RescaledPrior.base): its own weights
                h.update(f"{k}={prior_fingerprint(v)}".encode())
            elif isinstance(v, (int, float, str, bool, tuple, list, type(None))):
                h.update(f"{k}={v!r}".encode())
    bound = getattr(prior, "bound_intensity", None)  # an intensity map bound to this volume
    if bound is not None:
        for attr, v in zip(("lo", "hi"), bound, strict=True):
            h.update(f"{attr}={v.tolist() if hasattr(v, 'tolist') else v!r}".encode())
    return h.hexdigest()[:16]


def run_settings(m, sampler, prior, steps, seed, amp) -> dict[str, Any]:
    """The settings that determine a reconstruction's result (hashed for checkpoints)."""
    return {
        "engine_version": ENGINE_VERSION,
        "measurement_sha256": measurement_hash(m),
        "operator": m.operator_spec,
        "sampler": sampler.spec(),
        "prior": prior_fingerprint(prior),
        "steps": steps,
        "seed": int(seed),
        "amp": bool(amp),
    }


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


