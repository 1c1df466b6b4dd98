"""The statistic a latency budget holds at (``vitedge export --budget-quantile Q``).

Threshold mode's latency depends on the image: the closed loop times the model cycling through the
measurement images round robin, one image per run, so every image counts equally among the per-run
samples.  A budget "at quantile Q" holds when the Q-quantile of those samples is within it: Q = 0.5
is the median the runner reports (the default, unchanged), Q = 0.9 asks that nine runs in ten are
within budget.  No torch.
"""
from __future__ import annotations

import math

import numpy as np


def check_quantile(q) -> float:
    """``q`` as a float in (0, 1); raises ValueError naming the fix otherwise."""
    try:
        v = float(q)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and 0 < v < 1):
        raise ValueError(f"--budget-quantile must be in (0, 1), e.g. 0.5 (median) or 0.9 (p90), got {q!r}")
    return v


def latency_at(m: dict, q: float) -> float:
    """The ``q``-quantile (ms, linear interpolation) of a device measurement's per-run samples.

    Q = 0.5 returns the measurement's own ``median_ms``.  A measurement without samples (self-timed
    tools such as benchmark_model report statistics only) gives its median at Q = 0.5, its ``p90_ms``
    at Q = 0.9 its ``p90_ms`` (benchmark_model's p95 or max: an upper bound), else raises ValueError naming the runtime to use.
    """
    if q == 0.5:
        return float(m["median_ms"])
    samples = m.get("samples_ms") or []
    if samples:
        return float(np.quantile(np.asarray(samples, dtype=np.float64), q))
    if q == 0.9 and m.get("p90_ms") is not None:
        return float(m["p90_ms"])
    raise ValueError(f"--budget-quantile {q:g} needs per-run samples and this device's runtime reports only statistics: "
                     "use --budget-quantile 0.5 or a runtime timed by the runner (onnxruntime, litert)")


def label(q: float) -> str:
    """"median" for 0.5, else "p90"-style."""
    return "median" if q == 0.5 else f"p{100 * q:g}"
