"""Checkpoints of a running reconstruction: ``OUT.partial/``, one ``.npy`` per finished slice.

Layout of the folder next to the output ``OUT`` (``OUT.nii.gz.partial`` or ``OUT_DIR.partial``)::

    state.json          {"format": "medrecon-partial", "version": 1, "settings_hash": ...,
                         "settings": {...}, "n_slices": Z, "slice_shape": [Y, X]}
    lock                {"host": ..., "pid": ...} while a run is writing (see Checkpoint.acquire)
    slice_00000.npy     float32 (Y, X), physical units, written atomically (temp + rename)
    slice_00003.npy     ...
    volume_state.safetensors   a volume sampler's state at a step boundary (see below)

A slice file exists only once the slice is finished, so the set of files is the
set of done slices whatever moment the run was killed at.  ``settings_hash`` is the
SHA-256 of the settings that determine the result (measurement content, operator,
sampler and its parameters, prior, steps, seed, amp) -- *not* the batch size or the
devices, which do not change the result -- so a resumed run may use other devices
or another batch size but not another sampler, prior or seed.

Volume samplers (``mbir3d``, ``dds3d``: all slices in one call) are resumable at step
boundaries: the state they hand over (``x_t``, the ADMM split variables and duals, the
per-slice generator states, the step reached) is written to ``volume_state.safetensors``:
the tensors as safetensors, everything else as JSON in the file's metadata (key
``medrecon``), one file written atomically, so tensors and step always belong together.
No pickle is involved in writing or reading it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError

FORMAT = "medrecon-partial"
VERSION = 1
STATE = "state.json"
VOLUME_STATE = "volume_state.safetensors"
VOLUME_STATE_FORMAT = "medrecon-volume-state"
_SLICE_RE = re.compile(r"^slice_(\d{5,})\.npy$")


def partial_path(output: str | os.PathLike) -> Path:
    """``OUT.partial`` next to the output (a trailing slash of a DICOM folder name is ignored)."""
    p = Path(os.fspath(output).rstrip("/\\") or ".")
    return p.parent / (p.name + ".partial")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Checkpoint:
    """The ``.partial`` folder of one run (see module docstring)."""

    def __init__(self, folder: Path, settings: dict[str, Any], settings_hash: str, n_slices: int,
                 slice_shape: tuple[int, ...]):
        self.folder = Path(folder)
        self.settings = settings
        self.settings_hash = settings_hash
        self.n_slices = int(n_slices)
        self.slice_shape = tuple(int(s) for s in slice_shape)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, folder: Path, settings: dict[str, Any], settings_hash: str, n_slices: int,
             slice_shape: tuple[int, ...], *, resume: bool, discard: bool) -> "Checkpoint":
        """Create the folder, or reopen it for ``resume``.

        An existing folder is refused unless ``resume`` (same settings) or ``discard``
        (start afresh).  Different settings on resume raise :class:`InputError` naming them.
        """
        ck = cls(folder, settings, settings_hash, n_slices, slice_shape)
        if ck.folder.exists():
            if resume:
                ck._check_state()
                return ck
            if not discard:
                raise InputError(
                    f"{str(ck.folder)!r} holds an unfinished run for this output; pass resume=True (--resume) "
                    "to continue it, or overwrite=True (--overwrite) to start again")
            shutil.rmtree(ck.folder)
        ck.folder.mkdir(parents=True)
        ck._write_state()
        return ck

    def _write_state(self) -> None:
        state = {"format": FORMAT, "version": VERSION, "settings_hash": self.settings_hash,
                 "settings": self.settings, "n_slices": self.n_slices, "slice_shape": list(self.slice_shape)}
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        _atomic_write_bytes(self.folder / STATE, lambda f: f.write(data))

    def _check_state(self) -> None:
        path = self.folder / STATE
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise InputError(
                f"{str(self.folder)!r} is not a medrecon partial run (no readable {STATE}); delete it to start again"
            ) from None
        if state.get("format") != FORMAT:
            raise InputError(f"{str(self.folder)!r} is not a medrecon partial run; delete it to start again")
        if state.get("settings_hash") != self.settings_hash:
            old = state.get("settings") or {}
            diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            what = ", ".join(diff) if diff else "settings"
            raise InputError(
                f"cannot resume: the partial run in {str(self.folder)!r} was started with different settings "
                f"({what}); rerun with the same settings or delete the folder to start again")

    # ------------------------------------------------------------------ lock
    def acquire(self) -> None:
        """Mark the folder as in use by this process (``lock``: host and pid).

        A lock left by a live process on this host is refused (two runs writing one
        output); a lock of a dead process (a killed run) is taken over.  A lock from
        another host cannot be checked and is taken over with a warning.
        """
        import socket
        import warnings

        lock = self.folder / "lock"
        host = socket.gethostname()
        try:
            other = json.loads(lock.read_text())
        except (OSError, json.JSONDecodeError):
            other = None
        if isinstance(other, dict) and other.get("pid") != os.getpid():
            if other.get("host") == host and _alive(int(other.get("pid", -1))):
                raise InputError(f"another run (pid {other.get('pid')}) is writing {str(self.folder)!r}; "
                                 "wait for it or stop it first")
            if other.get("host") != host:
                warnings.warn(f"taking over {str(self.folder)!r} from a run on host {other.get('host')!r}",
                              stacklevel=3)
        data = json.dumps({"host": host, "pid": os.getpid()}).encode()
        _atomic_write_bytes(lock, lambda f: f.write(data))

    def release(self) -> None:
        try:
            (self.folder / "lock").unlink()
        except OSError:
            pass

    # ------------------------------------------------------------------ slices
    def slice_path(self, k: int) -> Path:
        return self.folder / f"slice_{int(k):05d}.npy"

    def done(self) -> list[int]:
        """Indices of the finished slices (sorted)."""
        out = []
        for name in os.listdir(self.folder):
            m = _SLICE_RE.match(name)
            if m and int(m.group(1)) < self.n_slices:
                out.append(int(m.group(1)))
        return sorted(out)

    def load(self, k: int) -> np.ndarray:
        arr = np.load(self.slice_path(k), allow_pickle=False)
        if arr.shape != self.slice_shape:
            raise InputError(f"checkpoint {str(self.slice_path(k))!r} has shape {arr.shape}, expected "
                             f"{self.slice_shape}; delete {str(self.folder)!r} to start again")
        return arr

    def save(self, k: int, arr: np.ndarray) -> None:
        """Write slice ``k`` atomically (temp file + rename)."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        _atomic_write_bytes(self.slice_path(k), lambda f: np.save(f, arr, allow_pickle=False))

    # ------------------------------------------------------------------ volume sampler state
    def save_volume_state(self, state: dict[str, Any]) -> None:
        """Write a volume sampler's step-boundary state atomically (tensors: safetensors;
        the rest: JSON in the safetensors metadata)."""
        import torch
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        complex_keys: list[str] = []

        def put(key: str, t: torch.Tensor) -> None:
            t = t.detach().to("cpu")
            if t.is_complex():
                complex_keys.append(key)
                t = torch.view_as_real(t)
            tensors[key] = t.contiguous().clone()

        rest: dict[str, Any] = {}
        lists: dict[str, int] = {}
        for key, v in state.items():
            if isinstance(v, torch.Tensor):
                put(key, v)
            elif isinstance(v, (list, tuple)) and v and all(isinstance(e, torch.Tensor) for e in v):
                lists[key] = len(v)
                for i, e in enumerate(v):
                    put(f"{key}.{i}", e)
            elif key == "generators":  # an empty list of generator states
                lists[key] = 0
            else:
                rest[key] = v
        meta = {"format": VOLUME_STATE_FORMAT, "settings_hash": self.settings_hash, "state": rest,
                "lists": lists, "none": [k for k, v in rest.items() if v is None], "complex": complex_keys}
        data = save(tensors, metadata={"medrecon": json.dumps(meta, sort_keys=True)})
        _atomic_write_bytes(self.folder / VOLUME_STATE, lambda f: f.write(data))

    def load_volume_state(self, device=None) -> dict[str, Any] | None:
        """The saved volume sampler state (tensors on ``device``, generator states on the CPU),
        or None when there is none."""
        import torch
        from safetensors import safe_open

        path = self.folder / VOLUME_STATE
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("medrecon", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - a corrupt file: one sentence
            raise InputError(f"{str(path)!r} cannot be read ({exc}); delete it to restart the volume from step 0"
                             ) from None
        if meta.get("format") != VOLUME_STATE_FORMAT or meta.get("settings_hash") != self.settings_hash:
            raise InputError(f"{str(path)!r} does not belong to this run; delete it to restart the volume from step 0")
        for k in meta.get("complex", []):
            tensors[k] = torch.view_as_complex(tensors[k])
        out: dict[str, Any] = dict(meta.get("state", {}))
        for key, n in meta.get("lists", {}).items():
            items = [tensors.pop(f"{key}.{i}") for i in range(int(n))]
            out[key] = items if key == "generators" else [t.to(device) if device is not None else t for t in items]
        for key, t in tensors.items():
            out[key] = t.to(device) if device is not None else t
        return out

    def clear_volume_state(self) -> None:
        try:
            (self.folder / VOLUME_STATE).unlink()
        except OSError:
            pass

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
