"""Nearest-rank percentiles: an observed value, so tests can expect exact figures."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[int], p: float) -> int | None:
    """The value at rank ceil(p * n) of an ascending sequence; None when it is empty."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]
