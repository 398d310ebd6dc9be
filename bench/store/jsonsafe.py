"""JSON that is JSON: no ``NaN``, ``Infinity`` or ``-Infinity`` (Python's json writes them by
default, and strict parsers, browsers' ``JSON.parse`` and jq reject the file).

:func:`json_safe` replaces every non-finite float (at any depth, including numpy scalars) with
``None`` (``null``: "no value"); :func:`dumps` is ``json.dumps`` of that with ``allow_nan=False``,
so a non-finite value that slipped past fails loudly instead of writing invalid JSON.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None``; mappings, lists and tuples are copied
    (tuples become lists, as JSON writes them), other values are returned unchanged."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, numbers.Integral):  # numpy integers
        return int(obj)
    if isinstance(obj, numbers.Real):  # numpy floats that are not Python floats (float32)
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Mapping):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(json_safe(obj), allow_nan=False, **kwargs)``."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
