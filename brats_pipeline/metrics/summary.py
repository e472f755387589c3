"""Summary statistics of per-case metrics: :func:`aggregate` and the :data:`STAT_NAMES` it reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

#: Statistics :func:`aggregate` reports (``p5``/``p95``: the 90 % interval; ``n``: finite values used).
STAT_NAMES = ("mean", "median", "std", "min", "max", "p5", "p95", "n")


def aggregate(cases: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Summary statistics over cases, per region and metric.

    Non-finite values (NaN, inf) are left out and ``n`` counts the values used; with no
    finite value every statistic is NaN. ``std`` is the sample standard deviation
    (``ddof=1``; 0 for a single value); ``p5``/``p95`` are the 5th and 95th percentiles
    (linear interpolation), the 90 % interval.

    Args:
        cases: per-case results as returned by :func:`case_metrics` (same regions and metrics).

    Returns:
        ``{region: {metric: {stat: value}}}`` with the stats of :data:`STAT_NAMES`.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("aggregate needs at least one case")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region, metrics in cases[0].items():
        out[region] = {}
        for metric in metrics:
            try:
                values = np.array([float(c[region][metric]) for c in cases])
            except KeyError as exc:
                raise ValueError(f"a case lacks region/metric {region}/{metric}") from exc
            out[region][metric] = _stats(values[np.isfinite(values)])
    return out


def _stats(v: np.ndarray) -> dict[str, float]:
    if v.size == 0:
        return {**{s: float("nan") for s in STAT_NAMES}, "n": 0}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "p5": float(np.percentile(v, 5)),
        "p95": float(np.percentile(v, 95)),
        "n": int(v.size),
    }
