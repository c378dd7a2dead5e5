"""Small statistics without heavy imports (the window draws with them before torch loads)."""

from __future__ import annotations

import math


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson score), for the accuracy band."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def latency_ratio(optimized_ms: float, original_ms: float) -> float:
    """An optimized model's median over the original's, both from one timing in turns: the figure
    that holds where a machine's speed changes between timings. The report, the sweep and the
    window's pane all give this one."""
    return round(optimized_ms / original_ms, 4)
