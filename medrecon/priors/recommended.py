"""Sampler settings a prior recommends: measured on held-out validation slices of its own data.

A sampler's generic defaults are the paper's (DPS: ``zeta`` 1 at 1000 steps; DDS: ``eta``
0.85), and on our priors they can be far off: DPS with ``mr-default`` at ``zeta`` 1 pushes
its data term a seventh as hard as the ``zeta`` 7 that validation picked (docs/mri.md).  What
is best depends on the prior and the data it was trained on, so a prior's ``config.json``
may say what was measured for it::

    "recommended": {
      "dps": {
        "steps": 1000,                      # the step count used when the caller gives none
        "operators": ["mri.sense"],         # operator names (prefixes) the evidence covers
        "by_steps": [                       # measured points: steps and the best parameters
          {"steps": 50,   "params": {"zeta": 20.0}},
          {"steps": 200,  "params": {"zeta": 10.0}},
          {"steps": 1000, "params": {"zeta": 7.0}}
        ],
        "evidence": "docs/mri.md: zeta chosen on validation slices z 66 / 73 ..."
      }
    }

Resolution (:func:`resolve`) for a run of ``n`` steps (the caller's, else ``steps``, else
the sampler's default; at most the prior's ``num_timesteps``, which no sampler exceeds):

* parameters the caller sets always win; nothing is applied to a sampler given as an object;
* ``steps`` is used only when the caller gives no step count and sets none of the parameters
  it lists (a ``zeta`` of one's own belongs to the sampler's own step count);
* only for an operator whose name starts with one of ``operators`` (all when absent);
* at a listed step count, that entry's parameters;
* between two listed step counts ``n1 < n < n2``, only parameters both list are applied:
  a positive number is interpolated linearly in ``(log steps, log value)`` (``zeta`` falls as
  the steps grow, less than in proportion: 20 / 10 / 7 at 50 / 200 / 1000 on MR) and rounded
  for an integer parameter; anything else is taken from the entry nearer in ``log steps``;
* outside ``[min, max]`` of the listed step counts nothing is applied: a recommendation
  is not extrapolated beyond what was measured.

The engine applies the result before the run's settings are fixed, so the parameters used
are in the checkpoint settings and in ``vol.meta["reconstruction"]``
(``"recommended"`` says what came from the prior); ``reconstruct(..., recommended=False)``
(CLI ``--no-recommended``) turns it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medrecon.errors import FileFormatError

__all__ = ["Recommendation", "resolve", "validate_recommended"]


@dataclass(frozen=True)
class Recommendation:
    """What a prior adds to a run: ``params`` (only those the caller did not set), ``steps``
    (``None`` when the caller gave steps or the prior names none) and where they come from."""

    sampler: str
    params: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    evidence: str = ""

    def describe(self) -> str:
        parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()]
        if self.steps is not None:
            parts.insert(0, f"steps={self.steps}")
        return ", ".join(parts)

    def source(self) -> str:
        """Where the evidence is, for one line of log: its text up to the first ``": "``
        (by convention a document reference, e.g. ``docs/mri.md``)."""
        head = self.evidence.split(": ", 1)[0].strip()
        return head or "no evidence recorded"

    def as_meta(self) -> dict[str, Any]:
        return {"params": dict(self.params), "steps": self.steps, "evidence": self.evidence}


def validate_recommended(section: Any, where: str = "config", num_timesteps: int | None = None) -> None:
    """Check a config's ``recommended`` section (its structure; parameter names are checked
    against the sampler when a run uses it); raise a one-sentence :class:`FileFormatError`."""
    def bad(msg: str):
        raise FileFormatError(f"{where} is not a valid medrecon prior config: 'recommended' {msg}")

    if not isinstance(section, dict):
        bad("must be a JSON object mapping sampler names to their settings")
    for name, rec in section.items():
        if not isinstance(rec, dict):
            bad(f"entry {name!r} must be a JSON object")
        unknown = sorted(set(rec) - {"steps", "operators", "by_steps", "evidence"})
        if unknown:
            bad(f"entry {name!r} has an unknown key {unknown[0]!r} (known: by_steps, evidence, operators, steps)")
        if "steps" in rec and not _positive_int(rec["steps"]):
            bad(f"entry {name!r}: 'steps' must be a positive integer, got {rec['steps']!r}")
        if "steps" in rec and isinstance(num_timesteps, int) and rec["steps"] > num_timesteps:
            bad(f"entry {name!r}: 'steps' {rec['steps']} is more than the prior's {num_timesteps} timesteps")
        ops = rec.get("operators", [])
        if not isinstance(ops, list) or not all(isinstance(o, str) and o for o in ops):
            bad(f"entry {name!r}: 'operators' must be a list of operator names or prefixes")
        pts = rec.get("by_steps")
        if not isinstance(pts, list) or not pts:
            bad(f"entry {name!r}: 'by_steps' must be a non-empty list of {{steps, params}} objects")
        seen = set()
        for p in pts:
            if not isinstance(p, dict) or not _positive_int(p.get("steps")) or not isinstance(p.get("params"), dict):
                bad(f"entry {name!r}: every 'by_steps' item needs a positive integer 'steps' and a 'params' object")
            if p["steps"] in seen:
                bad(f"entry {name!r}: 'by_steps' lists {p['steps']} steps twice")
            seen.add(p["steps"])


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def resolve(config: dict[str, Any], sampler_cls: type, steps: int | None, user_params: dict[str, Any],
            operator_name: str | None, num_timesteps: int | None = None) -> Recommendation | None:
    """What ``config["recommended"]`` adds to a run of ``sampler_cls`` (see the module text).

    ``steps``: the caller's step count or ``None``; ``user_params``: the parameters the caller
    set (never overridden); ``num_timesteps``: the prior's (caps the step count).  Returns
    ``None`` when the prior recommends nothing that applies.
    A parameter the sampler does not have is a config error (:class:`FileFormatError`).
    """
    rec = (config.get("recommended") or {}).get(getattr(sampler_cls, "name", ""))
    if not rec:
        return None
    ops = rec.get("operators")
    if ops and not any(str(operator_name or "").startswith(o) for o in ops):
        return None
    known = getattr(sampler_cls, "params", {})
    kinds = {k: getattr(p, "kind", None) for k, p in known.items()}
    for p in rec["by_steps"]:
        for key in p["params"]:
            if key not in known:
                raise FileFormatError(f"the prior's recommended settings for {sampler_cls.name!r} name parameter "
                                      f"{key!r}, which that sampler does not have (known: {', '.join(sorted(known))})")
    listed = {k for p in rec["by_steps"] for k in p["params"]}
    new_steps = None
    n = steps
    if n is None:
        if not listed & set(user_params):
            new_steps = rec.get("steps")
        n = new_steps if new_steps is not None else getattr(sampler_cls, "default_steps", None)
    if n is not None and num_timesteps:
        n = min(int(n), int(num_timesteps))
    params = _params_at(rec["by_steps"], n, kinds) if n is not None else {}
    params = {k: v for k, v in params.items() if k not in user_params}
    if not params and new_steps is None:
        return None
    return Recommendation(sampler_cls.name, params, new_steps, str(rec.get("evidence", "")))


def _params_at(points: list[dict[str, Any]], n: int, kinds: dict[str, Any]) -> dict[str, Any]:
    """The parameters at ``n`` steps: a listed point, log-log interpolation between two (the
    parameters both list; ``kinds[key] is int`` rounds), or nothing outside the listed range."""
    pts = sorted(points, key=lambda p: p["steps"])
    if not pts[0]["steps"] <= n <= pts[-1]["steps"]:
        return {}
    for p in pts:
        if p["steps"] == n:
            return dict(p["params"])
    hi = next(i for i, p in enumerate(pts) if p["steps"] > n)
    a, b = pts[hi - 1], pts[hi]
    w = (math.log(n) - math.log(a["steps"])) / (math.log(b["steps"]) - math.log(a["steps"]))
    out = {}
    for key in (k for k in a["params"] if k in b["params"]):  # a's order: stable logs and meta
        va, vb = a["params"][key], b["params"][key]
        if _positive_number(va) and _positive_number(vb):
            v = math.exp((1 - w) * math.log(va) + w * math.log(vb))
            out[key] = round(v) if kinds.get(key) is int else float(v)
        else:
            out[key] = va if w < 0.5 else vb
    return out


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
