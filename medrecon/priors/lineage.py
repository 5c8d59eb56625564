"""What a prior's weights learnt from, so that its config.json names all of it.

* A fine-tune (``train-prior --init-from SOURCE``) starts from another prior's weights:
  :func:`init_weights` loads them and returns the record the new config keeps as
  ``training.init_from`` (the source's name, the SHA-256 of its weights, its steps and the
  SHA-256 of its training data, nested for a chain of fine-tunes).
* A resumed run (``--resume``) must go on with the data its checkpoint was trained on:
  :func:`check_resume_data` compares the SHA-256 of each source with the checkpoint's and
  refuses other data with one sentence (:class:`~medrecon.errors.InputError`), before anything
  is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from medrecon.errors import InputError

__all__ = ["init_weights", "check_resume_data"]


def init_weights(net, cfg: dict, init_from) -> dict:
    """Load the weights of prior ``init_from`` into ``net`` (float32), refusing another network;
    returns what the new prior's config records of it (``training.init_from``): its name, the
    SHA-256 of its weights, and the steps and data it was trained on, so that a fine-tuned
    prior's config names all the data its weights learnt from."""
    from medrecon.priors.model import load_prior

    src = load_prior(init_from)
    for key in ("modality", "image_size", "network"):
        if src.config.get(key) != cfg.get(key):
            raise InputError(f"--init-from {str(init_from)!r} has {key} {src.config.get(key)!r}, but this run "
                             f"trains {cfg.get(key)!r}; use the same --channels, --size and modality")
    state = {k: v.float() for k, v in src.net.state_dict().items()}
    net.load_state_dict(state)
    t = src.config.get("training") or {}
    return {"prior": str(init_from), "weights_sha256": (src.config.get("weights") or {}).get("sha256"),
            "steps": t.get("steps"), "data_sha256": list(t.get("data_sha256") or []),
            "init_from": t.get("init_from")}


def check_resume_data(ckpt_dir: Path, prov: list[dict]) -> None:
    """Refuse to resume the checkpoint in ``ckpt_dir`` on other training data than it was
    trained on (compared by the SHA-256 of each source): the prior's config would name data
    its earlier steps never saw and omit data they did."""
    try:
        saved = json.loads((ckpt_dir / "state.json").read_text()).get("data")
    except (OSError, ValueError, AttributeError):
        return  # no readable checkpoint: load_checkpoint says so in its own sentence
    if not isinstance(saved, list):
        return
    before = sorted(str(p.get("sha256")) for p in saved if isinstance(p, dict))
    if before == sorted(p["sha256"] for p in prov):
        return

    def names(ps):
        return ", ".join(Path(str(p.get("path", "?"))).name for p in ps if isinstance(p, dict)) or "none"

    raise InputError(f"the checkpoint in {str(ckpt_dir)!r} was trained on {names(saved)}, not on the --data given now "
                     f"({names(prov)}), so --resume is refused; resume with the same --data, or fine-tune on the new "
                     "data into another folder with --init-from, whose config then names both")
