"""Fixtures of the MRI plugin tests: a small complex phantom and synthetic coil maps."""

from __future__ import annotations

import numpy as np
import pytest


def phantom(n: int = 64, complex_phase: bool = True) -> np.ndarray:
    """Shepp-Logan ``(n, n)`` (float64), with a smooth phase when ``complex_phase``."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    x = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    if not complex_phase:
        return x
    yy, xx = np.mgrid[:n, :n] / n
    return x * np.exp(1j * (1.0 * yy + 0.5 * xx))


@pytest.fixture(scope="session")
def sl64():
    return phantom(64, complex_phase=False)


@pytest.fixture(scope="session")
def sl64c():
    return phantom(64, complex_phase=True)
