"""medrecon-mri: the MRI plugin.

Registered through entry points (see ``pyproject.toml``): operators ``mri.cartesian``
(:class:`~medrecon_mri.operators.CartesianMRI`) and ``mri.sense``
(:class:`~medrecon_mri.operators.SenseMRI`), sampler ``sense`` (SENSE by conjugate
gradients, :class:`~medrecon_mri.recon.SenseCG`), importer ``mri.kspace``
(:class:`~medrecon_mri.importer.KSpaceImporter`).  Masks live in
:mod:`medrecon_mri.masks`, coil maps in :mod:`medrecon_mri.coils`.  Importing this
package does not import torch; the classes load on first access.
"""

__all__ = ["CartesianMRI", "KSpaceImporter", "SenseCG", "SenseMRI"]

from medrecon.registry import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "CartesianMRI": "medrecon_mri.operators",
    "SenseMRI": "medrecon_mri.operators",
    "SenseCG": "medrecon_mri.recon",
    "KSpaceImporter": "medrecon_mri.importer",
})
