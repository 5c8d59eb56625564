"""medrecon-ct: the CT plugin.

Registered through entry points (see ``pyproject.toml``): operators ``ct.parallel``
(:class:`~medrecon_ct.parallel.ParallelBeam2D`) and ``ct.fan``
(:class:`~medrecon_ct.fan.FanBeam2D`), ``ct.cone`` (:class:`~medrecon_ct.cone.ConeBeam3D`), importer ``ct.dxchange``
(:class:`~medrecon_ct.dxchange.DataExchangeImporter`).  Importing this package
does not import torch; the classes load on first access.
"""

__all__ = ["ConeBeam3D", "DataExchangeImporter", "FanBeam2D", "ParallelBeam2D"]

from medrecon.registry import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "ParallelBeam2D": "medrecon_ct.parallel",
    "FanBeam2D": "medrecon_ct.fan",
    "ConeBeam3D": "medrecon_ct.cone",
    "DataExchangeImporter": "medrecon_ct.dxchange",
})
