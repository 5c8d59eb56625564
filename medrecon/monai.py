"""MONAI dictionary transforms: load a series, simulate or import a measurement, reconstruct it.

A MONAI pipeline passes dictionaries of :class:`monai.data.MetaTensor` images through a
:class:`monai.transforms.Compose`; these transforms let medrecon be one step of it:

    from monai.transforms import Compose
    from medrecon.monai import LoadVolumed, SimulateMeasurementd, Reconstructd

    pipeline = Compose([
        LoadVolumed("image"),                                    # DICOM folder / NIfTI -> MetaTensor
        SimulateMeasurementd("image", "ct.parallel", {"n_views": 16}, noise_std=0.005, relative=True),
        Reconstructd("image_measurement", sampler="tv"),         # -> "image_measurement_recon"
    ])
    out = pipeline({"image": "series/"})

Geometry convention
-------------------
A medrecon :class:`~medrecon.volume.Volume` holds ``data`` shaped ``(Z, Y, X)`` and a 4x4
affine taking voxel ``(i=column, j=row, k=slice)`` to RAS+ mm.  MONAI's NIfTI loader gives
the same image channel-first as ``(1, X, Y, Z)`` with the same RAS affine
(``meta["space"] == "RAS"``), so the two are related by a transpose only:
``metatensor[0, i, j, k] == volume.data[k, j, i]`` and ``metatensor.affine == volume.affine``.

:func:`to_metatensor` and :func:`to_volume` convert exactly (values and affine unchanged;
a ``meta["space"] == "LPS"`` MetaTensor, e.g. from ITKReader with ``affine_lps_to_ras=False``,
is converted with ``diag(-1, -1, 1, 1)``).  medrecon's own metadata (units, modality, the DICOM
tags a derived series keeps) travels in ``metatensor.meta["medrecon"]``.

The transforms accept, under their keys, a MetaTensor ``(1, X, Y, Z)`` or ``(X, Y, Z)`` (what
``LoadImaged`` gives with or without ``EnsureChannelFirstd``) or a ``Volume``; measurements are
:class:`~medrecon.measurement.Measurement` objects (a dictionary may hold any object).

``import medrecon`` does not import MONAI; importing this module does (MONAI is a dependency of
medrecon's priors).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from medrecon.errors import InputError
from medrecon.volume import LPS_TO_RAS, Volume

__all__ = ["to_metatensor", "to_volume", "LoadVolumed", "LoadMeasurementd", "SimulateMeasurementd",
           "Reconstructd"]

#: key of ``MetaTensor.meta`` holding medrecon's :attr:`Volume.meta`
META_KEY = "medrecon"


def to_metatensor(volume: Volume) -> MetaTensor:
    """A :class:`~medrecon.volume.Volume` as a channel-first MONAI MetaTensor ``(1, X, Y, Z)``.

    ``out[0, i, j, k] == volume.data[k, j, i]`` (float32), ``out.affine == volume.affine``
    (float64, RAS+ mm), ``out.meta["space"] == "RAS"``, and ``out.meta["medrecon"]`` a copy of
    ``volume.meta``.  The volume is not modified.

    >>> import numpy as np, medrecon
    >>> from medrecon.monai import to_metatensor, to_volume
    >>> vol = medrecon.Volume(np.arange(24.0).reshape(2, 3, 4), np.diag([0.5, 0.7, 3.0, 1.0]))
    >>> t = to_metatensor(vol)
    >>> tuple(t.shape), bool(t[0, 3, 1, 0] == vol.data[0, 1, 3])
    ((1, 4, 3, 2), True)
    >>> back = to_volume(t)
    >>> np.array_equal(back.data, vol.data), np.array_equal(back.affine, vol.affine)
    (True, True)
    """
    if not isinstance(volume, Volume):
        raise InputError(f"to_metatensor needs a medrecon Volume, got {type(volume).__name__}")
    arr = torch.from_numpy(np.ascontiguousarray(volume.data.transpose(2, 1, 0))[None].copy())
    affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    source = volume.meta.get("source")
    meta = {
        "space": "RAS",
        "original_affine": affine.clone(),
        "spatial_shape": np.asarray(arr.shape[1:]),
        "original_channel_dim": "no_channel",
        META_KEY: copy.deepcopy(volume.meta),
    }
    if isinstance(source, str):
        meta["filename_or_obj"] = source
    return MetaTensor(arr, affine=affine, meta=meta)


def to_volume(image: Any, meta: Mapping[str, Any] | None = None) -> Volume:
    """A MetaTensor ``(1, X, Y, Z)`` or ``(X, Y, Z)`` (or a Volume) as a :class:`~medrecon.volume.Volume`.

    The affine is ``image.affine`` (RAS+ mm; an LPS MetaTensor is converted), the data the
    transpose ``data[k, j, i] = image[0, i, j, k]`` as float32, and ``meta`` the medrecon
    metadata the MetaTensor carries (``image.meta["medrecon"]``, empty for one loaded by MONAI)
    updated with the ``meta`` given here (e.g. ``{"units": "HU", "modality": "CT"}``).
    """
    if isinstance(image, Volume):
        if not meta:
            return image
        vol = image.copy()
        vol.meta.update(copy.deepcopy(dict(meta)))
        return vol
    if not isinstance(image, MetaTensor):
        raise InputError(f"a medrecon MONAI transform needs a MetaTensor or a medrecon Volume, "
                         f"got {type(image).__name__} (load images with LoadImaged or LoadVolumed)")
    arr = image.detach().cpu()
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise InputError(f"a medrecon MONAI transform needs one channel, got shape {tuple(arr.shape)} "
                             "(channel-first (1, X, Y, Z))")
        arr = arr[0]
    elif arr.ndim != 3:
        raise InputError(f"a medrecon MONAI transform needs a 3D image (1, X, Y, Z) or (X, Y, Z), "
                         f"got shape {tuple(arr.shape)}")
    if arr.is_complex():
        raise InputError("a medrecon MONAI transform needs a real image, got a complex MetaTensor")
    affine = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"a 3D MetaTensor needs a 4x4 affine, got shape {affine.shape}")
    if str(image.meta.get("space", "RAS")).upper() == "LPS":
        affine = LPS_TO_RAS @ affine
    vmeta = copy.deepcopy(dict(image.meta.get(META_KEY) or {}))
    source = image.meta.get("filename_or_obj")
    if isinstance(source, str) and source and "source" not in vmeta:
        vmeta["source"] = source
    vmeta.update(copy.deepcopy(dict(meta or {})))
    data = np.ascontiguousarray(arr.numpy().astype(np.float32, copy=False).transpose(2, 1, 0))
    return Volume(data, affine, vmeta)


def _output_keys(keys: tuple[Hashable, ...], output_keys: KeysCollection | None, postfix: str) -> tuple:
    if output_keys is None:
        return tuple(f"{k}{postfix}" for k in keys)
    out = (output_keys,) if isinstance(output_keys, (str, bytes)) or not hasattr(output_keys, "__iter__") \
        else tuple(output_keys)
    if len(out) != len(keys):
        raise InputError(f"output_keys must name one key per input key: {len(keys)} keys, {len(out)} output keys")
    return out


class LoadVolumed(MapTransform):
    """Read the path under each key with :func:`medrecon.load_volume` (DICOM series folder or
    file, NIfTI) and replace it with a channel-first MetaTensor ``(1, X, Y, Z)``
    (:func:`to_metatensor`: RAS affine, medrecon's metadata in ``meta["medrecon"]``).

    Unlike MONAI's ``LoadImaged`` it keeps what a derived DICOM series needs (patient, study and
    frame-of-reference tags), applies medrecon's DICOM checks (gaps, mixed orientations) and
    reports bad input as one :class:`~medrecon.errors.MedreconError` sentence.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **load_options: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.load_options = dict(load_options)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.io import load_volume

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, (str, os.PathLike)):
                raise InputError(f"LoadVolumed needs a path under {key!r}, got {type(value).__name__}")
            d[key] = to_metatensor(load_volume(value, **self.load_options))
        return d


class LoadMeasurementd(MapTransform):
    """Read the path under each key as a :class:`~medrecon.measurement.Measurement`: a medrecon
    measurement file (``.h5``) or a raw file an installed importer reads (k-space, projections,
    RF; ``import_options`` go to the importer, as ``medrecon import --import-option``).
    The result replaces the path unless ``output_keys`` names other keys."""

    def __init__(self, keys: KeysCollection, output_keys: KeysCollection | None = None,
                 allow_missing_keys: bool = False, **import_options: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _output_keys(self.keys, output_keys, "") if output_keys is not None else self.keys
        self.import_options = dict(import_options)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.engine.inputs import load_input

        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            value = d[key]
            if not isinstance(value, (str, os.PathLike)):
                raise InputError(f"LoadMeasurementd needs a path under {key!r}, got {type(value).__name__}")
            d[out] = load_input(value, **self.import_options)
        return d


class SimulateMeasurementd(MapTransform):
    """Simulate ``y = A x + n`` of the image under each key with :func:`medrecon.simulate`.

    The image (MetaTensor or Volume) becomes a :class:`~medrecon.volume.Volume` by
    :func:`to_volume` (``meta`` adds units / modality to a MetaTensor MONAI loaded), and the
    :class:`~medrecon.measurement.Measurement` is stored under the output key (default
    ``"{key}_measurement"``); the image itself is kept.  ``operator``, ``params``, ``noise_std``
    (absolute, or a fraction of the RMS of ``A x`` with ``relative=True``), ``seed``, ``slices``
    and ``device`` are those of :func:`medrecon.simulate`, whose result this is, bit for bit.
    """

    def __init__(self, keys: KeysCollection, operator: str, params: dict[str, Any] | None = None, *,
                 noise_std: float = 0.0, relative: bool = False, seed: int = 0, slices: Any = None,
                 device: Any = "cpu", meta: Mapping[str, Any] | None = None,
                 output_keys: KeysCollection | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _output_keys(self.keys, output_keys, "_measurement")
        self.operator, self.params = operator, dict(params or {})
        self.noise_std, self.relative, self.seed = noise_std, relative, seed
        self.slices, self.device, self.meta = slices, device, dict(meta or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.simulation import simulate

        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            vol = to_volume(d[key], self.meta)
            d[out] = simulate(vol, self.operator, self.params, noise_std=self.noise_std, seed=self.seed,
                              relative=self.relative, slices=self.slices, device=self.device)
        return d


class Reconstructd(MapTransform):
    """Reconstruct the measurement under each key with :func:`medrecon.reconstruct`.

    The key holds a :class:`~medrecon.measurement.Measurement` (or a path to a measurement
    file).  The reconstruction is stored under the output key (default ``"{key}_recon"``) as a
    channel-first MetaTensor ``(1, X, Y, Z)`` with the measurement's affine (RAS+ mm) and the
    run's record in ``meta["medrecon"]["reconstruction"]`` (sampler, settings, prior
    fingerprint).  Extra image components (``samples > 1``: ``"std"``; ``us.haze``: the haze)
    go under ``"{output key}_{name}"``.  ``sampler``, ``prior`` and the keyword options
    (``steps``, ``params``, ``device``, ``batch_size``, ``seed``, ``samples`` ...) are those of
    :func:`medrecon.reconstruct`, whose result this is; progress bars are off unless
    ``progress=True`` is given.  Nothing is written to disk unless ``output=`` is passed.
    """

    def __init__(self, keys: KeysCollection, sampler: Any = "dds", prior: Any = None, *,
                 output_keys: KeysCollection | None = None, allow_missing_keys: bool = False,
                 **options: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _output_keys(self.keys, output_keys, "_recon")
        self.sampler, self.prior = sampler, prior
        self.options = {"progress": False, **options}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medrecon.engine import reconstruct

        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            vol = reconstruct(d[key], self.sampler, self.prior, **self.options)
            if vol is None:  # a part of a split run that did not assemble the output
                raise InputError("Reconstructd needs the whole reconstruction; do not split it with num_parts")
            d[out] = to_metatensor(vol)
            for name, comp in (getattr(vol, "components", None) or {}).items():
                d[f"{out}_{name}"] = to_metatensor(comp)
        return d
