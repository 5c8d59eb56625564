"""Checkpoints of a running reconstruction: ``OUT.partial/``, one ``.npy`` per finished slice.

Layout of the folder next to the output ``OUT`` (``OUT.nii.gz.partial`` or ``OUT_DIR.partial``)::

    state.json          {"format": "medrecon-partial", "version": 1, "settings_hash": ...,
                         "settings": {...}, "n_slices": Z, "slice_shape": [Y, X]}
    lock                {"host", "pid", "started"} while a run is writing (see Checkpoint.acquire)
    lock.part-K         the same, for part K of a run split with num_parts (--num-parts/--part-id)
    assemble            {"host": ..., "pid": ...}: the part that writes the output (see claim_assembly)
    slice_00000.npy     float32 (Y, X), physical units, written atomically (temp + rename)
    slice_00003.npy     ...
    made.json           how each finished batch was made: {"format": "medrecon-made", "batches": [{"batch":
                        [slices], "device", "threads", ...}]} (made.part-K.json for part K), so a
                        resumed run can say whether it is bit-identical to an uninterrupted one
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

**Parts** (``num_parts``/``part_id``, job arrays, Ray): several processes, possibly on
several machines sharing a filesystem, each compute a contiguous block of slices into the
*same* folder.  The first one creates it (atomically: a temporary folder holding
``state.json`` renamed into place, so nobody ever sees a folder without its settings);
the others join it, and must carry the same settings hash.  Each part holds its own lock
(``lock.part-K``).  The part that finds every slice finished takes ``assemble`` (an
exclusive create) and writes the output; the others return.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.io.atomic import tmp_sibling, write_bytes_atomic
from medrecon.processes import owner, owner_alive

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


MADE_FORMAT = "medrecon-made"


def _read_made(path: Path) -> list[dict]:
    """The batch records of one ``made*.json`` ([] when missing or unreadable)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return d.get("batches", []) if isinstance(d, dict) and d.get("format") == MADE_FORMAT else []


def _read_owner(path: Path) -> dict | None:
    """The owner ``{"host", "pid", "started"}`` of a lock or claim file (:mod:`medrecon.processes`),
    or None when unreadable."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


class Checkpoint:
    """The ``.partial`` folder of one run (see module docstring)."""

    def __init__(self, folder: Path, settings: dict[str, Any], settings_hash: str, n_slices: int,
                 slice_shape: tuple[int, ...], part: int | None = None):
        self.folder = Path(folder)
        self.part = None if part is None else int(part)
        self.lock_name = "lock" if part is None else f"lock.part-{int(part)}"
        self.settings = settings
        self.settings_hash = settings_hash
        self.n_slices = int(n_slices)
        self.slice_shape = tuple(int(s) for s in slice_shape)

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, folder: Path, settings: dict[str, Any], settings_hash: str, n_slices: int,
             slice_shape: tuple[int, ...], *, resume: bool, discard: bool, shared: bool = False,
             part: int | None = None) -> "Checkpoint":
        """Create the folder, or reopen it for ``resume``.

        An existing folder is refused unless ``resume`` (same settings) or ``discard``
        (start afresh).  Different settings on resume raise :class:`InputError` naming them.
        ``shared`` (one part of a split run, ``part`` its index): create the folder or join
        the one another part created; it is never discarded (it holds the other parts' work),
        and its settings must match.
        """
        ck = cls(folder, settings, settings_hash, n_slices, slice_shape, part if shared else None)
        ck._refuse_odd_folder()
        if shared:
            ck._create_or_join()
            return ck
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

    def _refuse_odd_folder(self) -> None:
        """A ``.partial`` path that is a symbolic link, or not a folder, is refused whatever the mode
        (resume, overwrite, parts): a link is neither followed (its target is left as it is) nor removed."""
        if self.folder.is_symlink():
            raise InputError(
                f"{str(self.folder)!r} is a symbolic link; medrecon keeps checkpoints only in a real folder and "
                "leaves the link and its target as they are: remove the link (or choose another output) and rerun")
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{str(self.folder)!r} exists but is not a folder; remove it (or choose another "
                             "output) and rerun")

    def _create_or_join(self) -> None:
        """Parts: create the folder with its ``state.json`` in one rename, or join an existing one."""
        if not self.folder.exists():
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_sibling(self.folder)
            tmp.mkdir()
            try:
                self._write_state(tmp)
                os.rename(tmp, self.folder)  # fails when another part created the folder first
            except OSError:
                pass
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._check_state()
        except InputError as exc:
            raise InputError(str(exc).replace("cannot resume:", "cannot join the split run:")
                             .replace("rerun with the same settings", "every part needs the same settings")
                             ) from None

    def _write_state(self, folder: Path | None = None) -> None:
        state = {"format": FORMAT, "version": VERSION, "settings_hash": self.settings_hash,
                 "settings": self.settings, "n_slices": self.n_slices, "slice_shape": list(self.slice_shape)}
        data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
        write_bytes_atomic((folder or self.folder) / STATE, lambda f: f.write(data))

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
        """Mark the folder as in use by this process (``lock``, or ``lock.part-K`` for part K).

        A lock left by a live process on this host is refused when it is the same lock (two
        runs of one output, or of one part) or when either is a whole-run lock (a whole run
        and a part would compute the same slices); the locks of different parts coexist.  A
        lock of a process that no longer runs (a killed run; or its PID now reused by another
        process, told apart by the recorded start time) is taken over.  A lock from another
        host cannot be checked and is taken over with a warning when it is this lock.
        """
        import warnings

        me = owner()
        host = me["host"]
        for name in sorted(os.listdir(self.folder)):
            if not (name == "lock" or name.startswith("lock.part-")):
                continue
            other = _read_owner(self.folder / name)
            if other is None or other.get("pid") == os.getpid() and other.get("host") == host:
                continue
            if name != self.lock_name and "lock" not in (name, self.lock_name):
                continue  # another part: fine
            if owner_alive(other):
                who = "run" if name == "lock" else f"part {name.rsplit('-', 1)[-1]}"
                raise InputError(f"another {who} (pid {other.get('pid')}) is writing {str(self.folder)!r}; "
                                 f"wait for it or stop it first (if that process is not a medrecon run, "
                                 f"delete the lock file {str(self.folder / name)!r})")
            if other.get("host") != host and name == self.lock_name:
                warnings.warn(f"taking over {str(self.folder)!r} from a run on host {other.get('host')!r}",
                              stacklevel=3)
        data = json.dumps(me).encode()
        write_bytes_atomic(self.folder / self.lock_name, lambda f: f.write(data))

    def release(self) -> None:
        try:
            (self.folder / self.lock_name).unlink()
        except OSError:
            pass

    def _made_path(self) -> Path:
        return self.folder / ("made.json" if self.part is None else f"made.part-{self.part}.json")

    def record_made(self, rec: dict) -> None:
        """Append one batch's record (``rec["batch"]``: its slice indices) to this writer's
        ``made*.json``, rewritten atomically; only the holder of the matching lock writes it, and the
        engine calls it from one thread at a time."""
        path = self._made_path()
        data = json.dumps({"format": MADE_FORMAT, "batches": [*_read_made(path), rec]}).encode()
        write_bytes_atomic(path, lambda f: f.write(data))

    def made(self) -> dict[int, dict]:
        """slice -> the record of the batch that made it, merged over ``made.json`` and
        ``made.part-*.json`` (unreadable files are skipped: the slices then have no record)."""
        out: dict[int, dict] = {}
        for name in sorted(os.listdir(self.folder)):
            if re.fullmatch(r"made(\.part-\d+)?\.json", name):
                for rec in _read_made(self.folder / name):
                    out.update(dict.fromkeys((int(k) for k in rec.get("batch", [])), rec))
        return out

    def claim_assembly(self) -> bool:
        """Parts: True for exactly one of the parts that find every slice finished (the one
        that then writes the output).  An exclusive create of ``assemble``; a claim left by a
        dead process on this host is taken over."""
        path = self.folder / "assemble"
        data = json.dumps(owner()).encode()
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = _read_owner(path)
                if other is not None and other.get("host") == owner()["host"] and not owner_alive(other):
                    try:
                        path.unlink()
                    except OSError:
                        pass
                    continue
                return False
            except OSError:  # the folder is gone: another part wrote the output and removed it
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        return False

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
        write_bytes_atomic(self.slice_path(k), lambda f: np.save(f, arr, allow_pickle=False))

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
        write_bytes_atomic(self.folder / VOLUME_STATE, lambda f: f.write(data))

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
