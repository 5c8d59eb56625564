"""medrecon-ultrasound: the ultrasound plugin.

Registered through entry points (see ``pyproject.toml``): operators ``us.planewave``
(plane-wave RF forward model whose adjoint is delay-and-sum,
:class:`~medrecon_us.planewave.PlaneWaveRF`) and ``us.haze`` (tissue + haze,
:class:`~medrecon_us.haze.TissueHaze`), sampler ``dehaze``
(:class:`~medrecon_us.dehaze.Dehaze`), importer ``us.rf``
(:class:`~medrecon_us.importer.RFImporter`), priors ``us-tissue`` and ``us-haze``
(:mod:`medrecon_us.priors`), metric set ``us.regions`` (gCNR, KS, speckle size, B-mode display,
:class:`~medrecon_us.regions.RegionMetrics`) and intensity kind ``mulaw``
(:data:`~medrecon_us.intensity.MULAW`).  Importing this package does not import torch; the
classes load on first access.
"""

__all__ = ["Dehaze", "PlaneWaveRF", "RFImporter", "TissueHaze"]

from medrecon.registry import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "PlaneWaveRF": "medrecon_us.planewave",
    "TissueHaze": "medrecon_us.haze",
    "Dehaze": "medrecon_us.dehaze",
    "RFImporter": "medrecon_us.importer",
})
