"""Linear-array plane-wave geometry: pixel grid, element positions, delays, receive apodisation.

Coordinates (SI, metres and seconds): ``z`` is depth from the probe face (positive into the
tissue), ``x`` lateral position from the array centre.  Element ``e`` of an ``N``-element
linear array with pitch ``p`` sits at ``(x_e, 0)``::

    x_e = (e - (N - 1) / 2) p,        e = 0 .. N-1

Plane wave steered by ``theta`` (radians, positive towards +x).  The wavefront reaches the
point ``(x, z)`` at::

    tau_tx(theta; x, z) = (z cos(theta) + x sin(theta)) / c  +  offset(theta)

with ``offset = 0`` for ``reference="center"`` (time zero when the wavefront crosses the
array centre) and ``offset = (N - 1) p |sin(theta)| / (2 c)`` for
``reference="first_element"`` (time zero when the first element fires, the Verasonics
convention: for ``theta > 0`` element 0 fires first, for ``theta < 0`` element ``N-1``).

Receive: the echo from ``(x, z)`` reaches element ``e`` after ``tau_rx = sqrt((x - x_e)^2 +
z^2) / c``.  The round-trip delay is ``tau = tau_tx + tau_rx``.

Receive apodisation with f-number ``F``: element ``e`` hears pixel ``(x, z)`` when
``|x - x_e| <= z / (2 F)`` (aperture width ``z / F``).  Inside that aperture the weight is
1 (``"boxcar"``) or ``cos^2(pi r / 2)`` with ``r = 2 F |x - x_e| / z`` (``"hann"``: a Hann
window spanning the aperture, 1 on the element axis, 0 at its edges).

The functions return torch tensors on a requested device and dtype so that an operator can
compute its delays on the fly, chunk by chunk, where its data lives.
"""

from __future__ import annotations

import math

import torch

from medrecon.errors import InputError

__all__ = [
    "APODIZATIONS",
    "TX_REFERENCES",
    "element_positions",
    "pixel_axes",
    "receive_apodization",
    "receive_delays",
    "transmit_coefficients",
    "transmit_delays",
    "transmit_offset",
]

TX_REFERENCES = ("center", "first_element")
APODIZATIONS = ("boxcar", "hann")


def element_positions(n_elements: int, pitch_m: float, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """Lateral element centres ``x_e = (e - (N-1)/2) pitch`` in metres, shape ``(N,)``."""
    e = torch.arange(n_elements, device=device, dtype=dtype)
    return (e - (n_elements - 1) / 2.0) * pitch_m


def pixel_axes(shape, z_mm, x_mm, *, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre depths ``z`` ``(nz,)`` and lateral positions ``x`` ``(nx,)`` in metres.

    ``z_mm = [z_first, z_last]`` and ``x_mm = [x_first, x_last]`` are the centres of the first
    and last row / column in millimetres (spacing ``(last - first) / (n - 1)``).
    """
    nz, nx = shape
    z = torch.linspace(z_mm[0], z_mm[1], nz, device=device, dtype=dtype) * 1e-3
    x = torch.linspace(x_mm[0], x_mm[1], nx, device=device, dtype=dtype) * 1e-3
    return z, x


def transmit_offset(theta_rad: float, n_elements: int, pitch_m: float, c: float, reference: str) -> float:
    """Seconds added to ``(z cos theta + x sin theta) / c`` by the transmit time reference."""
    if reference == "center":
        return 0.0
    if reference == "first_element":
        return (n_elements - 1) * pitch_m * abs(math.sin(theta_rad)) / (2.0 * c)
    raise InputError(f"tx_reference must be one of {', '.join(TX_REFERENCES)}, got {reference!r}")


def transmit_coefficients(angles_rad, c: float, *, n_elements: int, pitch_m: float,
                          reference: str = "center") -> list[tuple[float, float, float]]:
    """``(cos(theta) / c, sin(theta) / c, offset(theta))`` per angle: ``tau_tx = a z + b x + o`` (s/m, s/m, s)."""
    return [(math.cos(t) / c, math.sin(t) / c, transmit_offset(float(t), n_elements, pitch_m, c, reference))
            for t in angles_rad]


def transmit_delays(angles_rad, z: torch.Tensor, x: torch.Tensor, c: float, *, n_elements: int,
                    pitch_m: float, reference: str = "center") -> torch.Tensor:
    """Plane-wave arrival times ``tau_tx`` (seconds), shape ``(n_angles, nz, nx)``.

    ``tau_tx = (z cos theta + x sin theta) / c + offset(theta)`` (module docstring).
    """
    co = transmit_coefficients(angles_rad, c, n_elements=n_elements, pitch_m=pitch_m, reference=reference)
    return torch.stack([a * z[:, None] + b * x[None, :] + o for a, b, o in co])


def receive_delays(xe: torch.Tensor, z: torch.Tensor, x: torch.Tensor, c: float) -> torch.Tensor:
    """Echo travel times ``tau_rx = sqrt((x - x_e)^2 + z^2) / c`` (seconds), shape ``(N, nz, nx)``."""
    dx = x[None, None, :] - xe[:, None, None]
    return torch.sqrt(dx * dx + (z * z)[None, :, None]) / c


def receive_apodization(xe: torch.Tensor, z: torch.Tensor, x: torch.Tensor, f_number: float,
                        kind: str = "hann") -> torch.Tensor:
    """Receive weights ``w(e; x, z)`` in ``[0, 1]``, shape ``(N, nz, nx)`` (module docstring).

    A pixel at depth ``z <= 0`` has an empty aperture: only an element exactly below it hears it.
    """
    if kind not in APODIZATIONS:
        raise InputError(f"apodization must be one of {', '.join(APODIZATIONS)}, got {kind!r}")
    half = (z / (2.0 * f_number))[None, :, None]  # aperture half-width at each depth
    dx = (x[None, None, :] - xe[:, None, None]).abs()
    inside = dx <= half
    if kind == "boxcar":
        return inside.to(z.dtype)
    r = dx / torch.clamp(half, min=torch.finfo(z.dtype).tiny)
    return torch.where(inside, torch.cos(0.5 * math.pi * r) ** 2, torch.zeros((), dtype=z.dtype, device=z.device))
