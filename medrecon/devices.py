"""Device selection with clear errors (``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

from medrecon.errors import InputError, MedreconError


def resolve_device(name: str | None):
    """Return a ``torch.device`` for ``name``; raise a one-sentence error when it cannot be used.

    ``None`` or ``"auto"`` picks ``cuda`` when available, else ``cpu``.
    """
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedreconError(f"device {name!r} was asked for but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedreconError(
                f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {name!r}; use cpu, cuda or cuda:N")
    return dev
