"""Pareto fronts of measured configurations: the best accuracy for a given latency or size."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: dict, b: dict, x: str, y: str, lower_x_better: bool = True) -> bool:
    """``a`` is at least as good as ``b`` on both axes and strictly better on one."""
    ax, bx = (a[x], b[x]) if lower_x_better else (-a[x], -b[x])
    return ax <= bx and a[y] >= b[y] and (ax < bx or a[y] > b[y])


def pareto_front(points: Sequence[dict], x: str = "latency_ms", y: str = "top1",
                 lower_x_better: bool = True) -> list[int]:
    """Indices (in input order) of the points no other point dominates: none has ``x`` as low
    (as high, when ``lower_x_better`` is False) and ``y`` as high, with one strictly better.
    Equal points do not dominate each other, so both stay; points whose ``x`` or ``y`` is
    missing or None are left out. ``x="size_bytes"`` gives the size front."""
    valid = [i for i, p in enumerate(points) if p.get(x) is not None and p.get(y) is not None]
    return [i for i in valid
            if not any(dominates(points[j], points[i], x, y, lower_x_better) for j in valid if j != i)]


def accuracy_key(rows: Sequence[dict]) -> str:
    """"top1" when every row has a top-1 (labelled images), else "agreement" with the original."""
    return "top1" if rows and all(r.get("top1") is not None for r in rows) else "agreement"
