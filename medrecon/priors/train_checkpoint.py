"""Training checkpoints of a prior: ``OUTPUT/checkpoint/state.safetensors`` + ``state.json``.

``state.safetensors`` holds the tensors (no pickle): ``model.*`` (the network being
trained), ``ema.*`` (its EMA), ``opt.PID.KEY`` (AdamW moments and step counts per
parameter), ``rng.generator`` (the training generator) and ``rng.torch_cpu`` (torch's global
CPU generator).  ``state.json`` holds the rest: the step, the optimiser's parameter groups
without their parameters, the keys of each parameter's optimiser state, and whatever the
trainer adds (losses, config, seconds trained).  Both files are replaced atomically.

:func:`stop_if_nonfinite` runs before every checkpoint (and at every logged loss): a NaN or
infinite loss or weight stops training with one sentence, and the checkpoint on disk, written
only after a passing check, stays the last finite one.  A checkpoint holding NaN or infinite
network weights is refused on load.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from medrecon.errors import FileFormatError, InputError
from medrecon.io.atomic import atomic_file, write_text_atomic
from medrecon.priors.integrity import nonfinite_tensor

__all__ = ["load_checkpoint", "save_checkpoint", "stop_if_nonfinite"]


def _saved_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` (its ``state.json``), or None when there is none."""
    try:
        return int(json.loads((folder / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stop_if_nonfinite(loss_sum, modules: dict[str, torch.nn.Module], step: int, folder: Path) -> None:
    """Stop training with an :class:`InputError` (one sentence) when ``loss_sum`` (the losses summed
    since the last check) or a tensor of ``modules`` (name -> module) is NaN or infinite.

    Nothing is written: the checkpoint in ``folder`` is the last one that passed this check."""
    what = None if math.isfinite(float(loss_sum)) else "the training loss"
    for name, module in modules.items():
        if what is None and (key := nonfinite_tensor(module.state_dict())) is not None:
            what = f"the {name}'s tensor {key!r}"
    if what is None:
        return
    kept = _saved_step(folder)
    keep = (f"the last finite checkpoint (step {kept}) is kept in {str(folder)!r}" if kept is not None
            else "no checkpoint had been written")
    raise InputError(f"training stopped at step {step} because {what} became NaN or infinite, so no prior is "
                     f"written and {keep}; lower --lr or check the data before training again")


def save_checkpoint(folder: Path, net, ema, opt, step: int, gen: torch.Generator, state: dict) -> None:
    """Write the training state of ``net``, ``ema``, ``opt`` and ``gen`` at ``step`` to ``folder``
    (created), with ``state`` (JSON-able) merged into ``state.json``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in net.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in ema.state_dict().items():
        tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    opt_sd = opt.state_dict()
    for pid, st in opt_sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{key}"] = val.detach().cpu().reshape(val.shape).contiguous()
    tensors["rng.generator"] = gen.get_state().cpu()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    with atomic_file(folder / "state.safetensors", overwrite=True) as tmp:
        save_file(tensors, str(tmp))
        os.chmod(tmp, 0o644)
    meta = dict(state)
    meta["step"] = step
    meta["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in opt_sd["param_groups"]]
    meta["opt_state_keys"] = {str(pid): sorted(st.keys()) for pid, st in opt_sd["state"].items()}
    write_text_atomic(folder / "state.json", json.dumps(meta, indent=1) + "\n")


def load_checkpoint(folder: Path, net, ema, opt, gen: torch.Generator, device) -> dict:
    """Restore ``net``, ``ema``, ``opt`` (moments moved to ``device``), ``gen`` and torch's CPU
    generator from ``folder``; returns the ``state.json`` dict.  A missing, unreadable or
    mismatched checkpoint is a :class:`FileFormatError`."""
    from safetensors.torch import load_file

    sp, jp = folder / "state.safetensors", folder / "state.json"
    if not sp.is_file() or not jp.is_file():
        raise FileFormatError(f"no checkpoint to resume from in {str(folder)!r}")
    try:
        tensors = load_file(str(sp))
        meta = json.loads(jp.read_text())
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(f"checkpoint in {str(folder)!r} is unreadable ({exc})") from exc
    bad = nonfinite_tensor((k, v) for k, v in tensors.items() if k.startswith(("model.", "ema.")))
    if bad is not None:
        raise FileFormatError(f"checkpoint in {str(folder)!r} holds NaN or infinite weights (tensor {bad!r}), so it "
                              "cannot be resumed; delete it to train afresh")
    try:
        net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError as exc:
        raise FileFormatError(
            f"checkpoint in {str(folder)!r} does not match this network (use the same --channels preset)"
        ) from exc
    state = {}
    for pid, keys in meta.get("opt_state_keys", {}).items():
        state[int(pid)] = {k: tensors[f"opt.{pid}.{k}"].to(device) for k in keys}
    groups = opt.state_dict()["param_groups"]
    for g, saved in zip(groups, meta["param_groups"], strict=False):
        g.update({k: v for k, v in saved.items() if k != "params"})
    opt.load_state_dict({"state": state, "param_groups": groups})
    for st in opt.state.values():  # AdamW keeps 'step' on the CPU unless capturable
        if "step" in st:
            st["step"] = st["step"].cpu()
    gen.set_state(tensors["rng.generator"].to(torch.uint8))
    torch.set_rng_state(tensors["rng.torch_cpu"].to(torch.uint8))
    return meta
