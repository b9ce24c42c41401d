"""Numbers as people read them: floats without binary noise (0.0005, not 0.0005000000000000001).

Noise comes from arithmetic on floats: a step schedule gives 0.05 × 0.1 × 0.1 = 0.0005000000000000001, a linear
lr scaling 0.05 × 48 / 256 = 0.009375000000000001. Twelve significant digits keep every value a person can
choose and drop the last-bit error of the arithmetic.
"""

from __future__ import annotations

import math
import re
from typing import Any

SIGNIFICANT_DIGITS = 12
_EXPONENT = re.compile(r"e([+-])0*(\d+)")


def clean_float(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN and ±inf unchanged)."""
    if not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def format_number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A number as text: ints as they are, floats with at most ``digits`` significant digits and no trailing
    zeros or noise ('0.0005', '4', '5e-5', '1e13'); booleans 'true'/'false'; anything else ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = f"{clean_float(value, digits):.{digits}g}"
        text = _EXPONENT.sub(lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)
        return "0" if text == "-0" else text
    return str(value)


def format_value(value: Any) -> str:
    """A hyper-parameter value as text: numbers by :func:`format_number`, lists as '[a, b]', dicts as
    '{k: v}', None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {format_value(item)}" for key, item in value.items()) + "}"
    return format_number(value)


def param_text(value: Any) -> str:
    """A value as an MLflow param: ``str(value)``, except that floats (also inside lists) lose their noise.

    A float keeps Python's own spelling ('0.0005', '4.0', '5e-05'), so a value logged before this existed
    reads the same unless it carried noise.
    """
    if isinstance(value, float) and not isinstance(value, bool):
        return repr(clean_float(value))
    if isinstance(value, (list, tuple)) and any(isinstance(item, float) for item in value):
        return "[" + ", ".join(param_text(item) if isinstance(item, float) else repr(item) for item in value) + "]"
    return str(value)
