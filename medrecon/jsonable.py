"""JSON for values that hold numpy scalars and arrays (run plans, volume metadata).

>>> import json, numpy as np
>>> json.dumps({"a": np.float32(0.5), "b": np.arange(2), "c": {1}}, default=json_default)
'{"a": 0.5, "b": [0, 1], "c": "{1}"}'
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["json_default"]


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)``: a numpy scalar as its Python value, an array as a list, anything
    else as its ``str``."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
