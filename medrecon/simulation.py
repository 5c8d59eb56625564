"""Simulate a measurement of a volume: ``y = A x + n`` slice by slice.

Public entry point: :func:`medrecon.simulate` (this module is ``medrecon.simulation``;
it is not called ``medrecon.simulate`` so that importing it cannot shadow the function
on the package).

For a per-slice operator each slice ``x_k = volume.data[k]`` (rows x columns)
is measured independently; slices go through the operator in batches
``(B, ny, nx)``.  Noise ``n`` is Gaussian, drawn per slice from a generator
seeded by ``(seed, k)`` with ``k`` the slice's index in the source volume, so a
slice's noise does not depend on the batch size or on the slice range chosen.

The operator is ``Operator.for_grid(grid, spacing, **params)``: its image shape and pixel
size are filled in from the volume's grid (:mod:`medrecon.operators.params`).

A 3D operator (``per_slice`` false, e.g. ``ct.cone``) measures the whole volume (or the
chosen slab) ``(Z, Y, X)`` at once: its ``shape`` / ``voxel_size`` parameters are filled in
from the volume, its domain must be the volume's ``(Z, Y, X)``, and ``y`` is shaped ``range_shape`` (no slice axis), which is what the
engine's 3D mode reconstructs.  Its noise comes from one generator seeded by
``(seed, start)``, ``start`` the first measured slice.

Noise level
-----------
* ``relative=False`` (default): ``noise_std`` is the absolute standard
  deviation, in the units of ``y``.
* ``relative=True``: ``noise_std`` is a fraction of the RMS of the noiseless
  measurement over the whole simulated range,
  ``sigma = noise_std * sqrt(mean(|A x|^2))``.

The Python API's default is ``relative=False`` (an explicit absolute sigma, as in
every other medrecon function taking a noise level); the ``medrecon simulate``
command's default is relative (``--noise 0.01`` = 1 % of the RMS of ``A x``, the
same meaning for CT sinograms, k-space and ultrasound), with ``--absolute-noise``
for an absolute sigma.

Either way the measurement file stores the absolute ``sigma``
(``Measurement.noise_std``) and the provenance records the mode.  For complex
``y`` the noise is circular complex Gaussian with ``E|n|^2 = sigma^2`` (real and
imaginary parts each ``sigma / sqrt(2)``).

Example::

    >>> import numpy as np, medrecon
    >>> vol = medrecon.Volume(np.ones((3, 8, 8)), np.eye(4), {"units": "HU"})
    >>> m = medrecon.simulate(vol, "template.scale", {"factor": 2.0})
    >>> float(m.y[0, 0, 0]), m.operator_spec["params"]["shape"]
    (2.0, [8, 8])
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.measurement import Measurement
from medrecon.volume import Volume

__all__ = ["simulate", "resample_inplane", "parse_shape"]

def _axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix taking a 1D signal on ``n_in`` pixels to ``n_out`` pixels
    covering the same extent (:func:`medrecon.io.resample.axis_weights`, the one rule, with
    output pixels ``s = n_in / n_out`` input pixels wide centred at ``(o + 1/2) s - 1/2``).

    Shrinking (``n_out < n_in``): exact area averaging, each output pixel is the mean of
    the input over its footprint (partial input pixels weighted by their overlap), so an
    integer factor gives block means and no aliasing is added beyond the box filter.
    Enlarging: linear interpolation between pixel centres (edges clamped).
    Rows sum to 1, so constants are preserved.
    """
    from medrecon.io.resample import axis_weights

    s = n_in / n_out  # output pixel size in input pixels
    return axis_weights(n_in, (np.arange(n_out) + 0.5) * s - 0.5, s)


def parse_shape(text: Any) -> tuple[int, int]:
    """``"256x256"`` / ``"256"`` / ``(256, 192)`` -> ``(ny, nx)`` (rows, columns).

    >>> parse_shape("256x192")
    (256, 192)
    """
    if isinstance(text, str):
        parts = text.lower().replace(",", "x").split("x")
        if len(parts) == 1:
            parts = parts * 2
    else:
        try:
            parts = list(text)
        except TypeError:
            parts = [text, text]
    try:
        ny, nx = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"an in-plane shape must look like NYxNX (e.g. 256x256), got {text!r}") from None
    if ny < 1 or nx < 1:
        raise InputError(f"an in-plane shape must be positive, got {ny}x{nx}")
    return ny, nx


def resample_inplane(volume: Volume, shape: Any = None, pixel_size: float | None = None,
                     chunk: int = 16) -> Volume:
    """Resample every slice in-plane to ``shape = (ny, nx)`` or to ``pixel_size`` (mm).

    The field of view is kept: the new grid covers exactly the old one, so the new
    pixel size is ``old_size * n_old / n_new`` per axis.  With ``pixel_size`` the grid
    is ``round(n_old * old_size / pixel_size)`` pixels per axis (the achieved size can
    differ from the one asked for by up to half a pixel over the field of view).
    Shrinking is exact area averaging (2x2 block means for a factor of 2, as used for
    the shipped priors' 256 x 256 training slices); enlarging is linear interpolation.
    The slice axis is untouched.  The affine is updated so that every new voxel sits at
    the centre of its footprint: ``A' = A @ [[sx, 0, 0, (sx-1)/2], [0, sy, 0, (sy-1)/2],
    [0, 0, 1, 0], [0, 0, 0, 1]]`` with ``sx = nx_old / nx_new`` (same for y).
    ``meta["pixel_spacing"]`` is updated and ``meta["resampled_inplane"]`` records the
    old and new grids.  Returns a new Volume (``volume`` is not modified).

    >>> import numpy as np, medrecon
    >>> v = medrecon.Volume(np.arange(16.0).reshape(1, 4, 4), np.eye(4))
    >>> r = resample_inplane(v, (2, 2))
    >>> r.data[0].tolist(), r.spacing, r.affine[:3, 3].tolist()
    ([[2.5, 4.5], [10.5, 12.5]], (1.0, 2.0, 2.0), [0.5, 0.5, 0.0])
    """
    import copy

    if not isinstance(volume, Volume):
        raise InputError(f"resample_inplane needs a Volume, got {type(volume).__name__}")
    z, ny0, nx0 = volume.shape
    _, dy0, dx0 = volume.spacing
    if (shape is None) == (pixel_size is None):
        raise InputError("give exactly one of an in-plane shape (NYxNX) and a pixel size (mm)")
    if shape is not None:
        ny, nx = parse_shape(shape)
    else:
        try:
            ps = float(pixel_size)
        except (TypeError, ValueError):
            raise InputError(f"the pixel size must be a number of mm, got {pixel_size!r}") from None
        if not np.isfinite(ps) or ps <= 0:
            raise InputError(f"the pixel size must be a positive number of mm, got {pixel_size!r}")
        ny, nx = max(1, int(round(ny0 * dy0 / ps))), max(1, int(round(nx0 * dx0 / ps)))
    if (ny, nx) == (ny0, nx0):
        return volume.copy()
    from medrecon.io.budget import require

    require(4 * z * ny * nx + 8 * (ny * ny0 + nx * nx0 + int(chunk) * ny * max(nx, nx0)),
            f"resampling {z} slice(s) of {ny0}x{nx0} to {ny}x{nx}")
    wy = _axis_weights(ny0, ny)
    wx = _axis_weights(nx0, nx).T.copy()
    out = np.empty((z, ny, nx), dtype=np.float32)
    for k0 in range(0, z, int(chunk)):
        block = volume.data[k0:k0 + int(chunk)].astype(np.float64)
        out[k0:k0 + int(chunk)] = np.matmul(np.matmul(wy, block), wx)
    sy, sx = ny0 / ny, nx0 / nx
    scale = np.array([[sx, 0, 0, (sx - 1) / 2], [0, sy, 0, (sy - 1) / 2], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    meta = copy.deepcopy(volume.meta)
    ps_old = meta.get("pixel_spacing")
    meta["pixel_spacing"] = [float(dy0 * sy), float(dx0 * sx)]
    meta["resampled_inplane"] = {"from_shape": [ny0, nx0], "to_shape": [ny, nx],
                                 "from_pixel_spacing": ps_old if ps_old else [float(dy0), float(dx0)],
                                 "method": "area average" if ny <= ny0 and nx <= nx0 else "area average / linear"}
    return Volume(out, volume.affine @ scale, meta)


def _parse_slices(slices: Any, z: int) -> tuple[int, int]:
    if slices is None:
        return 0, z
    if isinstance(slices, slice):
        if slices.step not in (None, 1):
            raise InputError("a slice range must be contiguous (step 1)")
        asked = slices
    elif isinstance(slices, str):
        a, sep, b = slices.partition(":")
        if not sep:
            raise InputError(f"slices must look like a:b, got {slices!r}")
        try:
            asked = slice(int(a) if a.strip() else None, int(b) if b.strip() else None)
        except ValueError:
            raise InputError(f"slices must look like a:b with integers, got {slices!r}") from None
    else:
        try:
            asked = slice(*(int(v) for v in slices))
        except (TypeError, ValueError):
            raise InputError(f"slices must be 'a:b', a slice or (start, stop), got {slices!r}") from None
        if asked.step is not None:
            raise InputError(f"slices must be 'a:b', a slice or (start, stop), got {slices!r}")
    start, stop, _ = asked.indices(z)
    if stop <= start:
        raise InputError(f"slice range {start}:{stop} is empty (the volume has {z} slices)")
    if any(v is not None and not -z <= v <= z for v in (asked.start, asked.stop)):
        import warnings

        warnings.warn(f"the slice range {asked.start}:{asked.stop} reaches past the volume's {z} slices; "
                      f"clamped to {start}:{stop}", stacklevel=3)
    return start, stop


def _slice_operator(name: str, params: dict[str, Any], volume: Volume, start: int, stop: int):
    """The per-slice operator for the volume's slices ``start:stop`` (shape and pixel size filled in)."""
    from medrecon.operators import operator_for_grid

    z, ny, nx = volume.shape
    op = operator_for_grid(name, (ny, nx), tuple(volume.spacing[1:]), **params)
    if tuple(op.domain_shape) != (ny, nx):
        raise InputError(
            f"operator {name!r} takes images shaped {tuple(op.domain_shape)} but the volume's "
            f"slices are {ny}x{nx} (rows x columns); set its shape to [{ny}, {nx}]")
    if getattr(op, "slice_varying", False):  # per-slice parameters (coil maps): one set per volume slice
        if int(op.n_slices) != z:
            raise InputError(f"operator {name!r} holds parameters for {op.n_slices} slice(s) but the "
                             f"volume has {z}; give one per volume slice")
        op = op.for_slices(range(start, stop))  # the measured slab; its spec records the slices
    return op


def _volume_operator(name: str, params: dict[str, Any], shape_zyx, spacing_zyx):
    """The 3D operator for a slab shaped ``shape_zyx`` (volume shape and voxel size filled in)."""
    from medrecon.operators import operator_for_grid

    op = operator_for_grid(name, shape_zyx, spacing_zyx, **params)
    zyx = tuple(int(v) for v in shape_zyx)
    if tuple(op.domain_shape) != zyx:
        raise InputError(
            f"operator {name!r} is 3D and takes volumes shaped {tuple(op.domain_shape)} but the volume "
            f"(or slab) measured is {zyx[0]}x{zyx[1]}x{zyx[2]}; set its shape to [{zyx[0]}, {zyx[1]}, {zyx[2]}]")
    return op


def _measure_slices(op, data: np.ndarray, dev, batch_size: int) -> np.ndarray:
    """``y[k] = A x_k`` for every slice, in batches; ``(Z, *range_shape)``."""
    import torch

    outs = []
    with torch.no_grad():
        for b0 in range(0, data.shape[0], batch_size):
            x = torch.from_numpy(np.array(data[b0:b0 + batch_size], dtype=np.float32, copy=True)).to(dev)
            if op.domain_is_complex:
                x = x.to(torch.complex64)
            y = op.for_slices(range(b0, b0 + x.shape[0]))(x)
            outs.append(y.detach().cpu().numpy())
    return np.concatenate(outs, axis=0)


def _measure_volume(op, data: np.ndarray, dev) -> np.ndarray:
    """``y = A x`` for the whole slab ``x`` ``(Z, Y, X)`` with a 3D operator; ``range_shape``."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.array(data, dtype=np.float32, copy=True)).to(dev)[None]
        if op.domain_is_complex:
            x = x.to(torch.complex64)
        return op(x)[0].detach().cpu().numpy()


def _add_noise(y: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``y + n``, ``n`` Gaussian of std ``sigma`` (circular complex for complex ``y``), in ``y``'s dtype."""
    if np.iscomplexobj(y):
        n = (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape)) * (sigma / np.sqrt(2))
    else:
        n = rng.standard_normal(y.shape) * sigma
    return (y + n).astype(y.dtype)


def simulate(volume: Volume, operator_name: str, params: dict[str, Any] | None = None,
             noise_std: float = 0.0, seed: int = 0, *, relative: bool = False,
             slices: Any = None, batch_size: int = 16, device: Any = "cpu",
             command: str | None = None) -> Measurement:
    """Simulate ``y = A x (+ noise)`` for every slice of ``volume`` (per-slice operators) or
    for the whole volume at once (3D operators such as ``ct.cone``).

    Parameters
    ----------
    volume : Volume
        Not modified.  Must be finite.
    operator_name : str
        A registered operator (``"ct.parallel"``, ``"template.scale"``, ...).
    params : dict
        Operator parameters.  The operator is ``for_grid((Y, X), (dy, dx), **params)``
        (:meth:`medrecon.operators.Operator.for_grid`): the image shape is filled in
        from the volume's ``(Y, X)`` when not given (a given shape must match), a pixel
        size (mm) from the volume's square pixels.  A 3D operator gets
        ``for_grid((Z, Y, X), (dz, dy, dx))``: the measured slab's shape and its voxel
        size (mm).
    noise_std : float
        Noise level: absolute std in units of ``y`` or, with ``relative=True``, a
        fraction of the RMS of ``A x`` (see module docstring).
    seed : int
        Noise seed; slice ``k`` uses ``numpy.random.default_rng([seed, k])``.
    slices : "a:b", slice or (start, stop), optional
        Measure only slices ``a:b`` (k axis); the measurement's volume shape and
        affine then describe that slab.
    batch_size : int
        Slices per operator call (does not change the result; unused for a 3D operator).
    device : str or torch.device
        Where to run the operator.
    command : str, optional
        Recorded in the provenance (the CLI passes its command line).

    Returns
    -------
    Measurement
        ``y`` shaped ``(Z', *range_shape)`` (a 3D operator: ``range_shape``), float32 or
        complex64.
    """
    import medrecon
    from medrecon.devices import resolve_device
    from medrecon.operators import operator_class

    if not isinstance(volume, Volume):
        raise InputError(f"simulate needs a Volume, got {type(volume).__name__}")
    params = dict(params or {})
    try:
        noise_std = float(noise_std)
    except (TypeError, ValueError):
        raise InputError(f"noise must be a number, got {noise_std!r}") from None
    if not np.isfinite(noise_std) or noise_std < 0:
        raise InputError(f"noise must be finite and >= 0, got {noise_std}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    z, ny, nx = volume.shape
    start, stop = _parse_slices(slices, z)
    data = volume.data[start:stop]
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise InputError(f"the volume holds {bad} NaN or infinite value(s); simulate needs finite input")

    cls = operator_class(operator_name)
    is_3d = not getattr(cls, "per_slice", True)
    dev = resolve_device(device) if isinstance(device, str) else device
    if is_3d:
        op = _volume_operator(operator_name, params, data.shape, tuple(volume.spacing)).to(dev)
        y = _measure_volume(op, data, dev)
    else:
        op = _slice_operator(operator_name, params, volume, start, stop).to(dev)
        y = _measure_slices(op, data, dev, int(batch_size))
    y = y.astype(np.complex64 if np.iscomplexobj(y) else np.float32, copy=False)

    sigma = noise_std
    if relative and noise_std > 0:
        rms = float(np.sqrt(np.mean(np.abs(y.astype(np.complex128 if np.iscomplexobj(y) else np.float64)) ** 2)))
        sigma = noise_std * rms
    if sigma > 0:
        if is_3d:  # one measurement of the whole slab: one generator
            y = _add_noise(y, sigma, np.random.default_rng([int(seed), start]))
        else:
            for i in range(y.shape[0]):
                y[i] = _add_noise(y[i], sigma, np.random.default_rng([int(seed), start + i]))

    sub = volume.slab(start, stop) if (start, stop) != (0, z) else None
    affine = sub.affine if sub is not None else volume.affine.copy()
    meta = sub.meta if sub is not None else dict(volume.meta)
    provenance = {
        "source": volume.meta.get("source"),
        "series_uid": volume.meta.get("series_uid"),
        "command": command if command is not None else (
            f"medrecon.simulate(volume, {operator_name!r}, {params!r}, noise_std={noise_std!r}, "
            f"seed={int(seed)}, relative={bool(relative)}, slices={slices!r})"),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "medrecon_version": medrecon.__version__,
        "simulated": True,
        "operator": operator_name,
        "noise_mode": "relative" if relative else "absolute",
        "noise_arg": noise_std,
        "seed": int(seed),
        "slices": [int(start), int(stop)],
    }
    ref = {k: v for k, v in meta.items() if k != "source_files"}
    return Measurement(
        y=y, operator_spec=op.spec(), noise_std=float(sigma), volume_shape=(stop - start, ny, nx),
        affine=affine, units=volume.meta.get("units"), provenance=provenance, reference_meta=ref,
    )
