"""Statistics of the latency gate (pure numpy): robust CV, summaries, bootstrap CIs, the decision rule.

Part of :mod:`vitedge.gate` (the public names are importable from there).
"""
from __future__ import annotations

import numpy as np

STATISTICS = {"median": 0.5, "p25": 0.25, "p10": 0.10, "min": 0.0}
MAD_TO_SIGMA = 1.4826


def robust_cv(samples) -> float:
    """1.4826 * MAD / median: the CV of a normal sample, robust to the outliers of timings."""
    a = np.asarray(samples, np.float64)
    if a.size == 0:
        return float("nan")
    med = float(np.median(a))
    return float(MAD_TO_SIGMA * np.median(np.abs(a - med)) / med) if med > 0 else float("inf")


def summary(rounds: list) -> dict:
    """Median, p90 (linear), MAD, robust CV of the samples ("cv") and of the round medians
    ("round_cv"), runs and round medians of per-round samples (ms)."""
    flat = np.concatenate([np.asarray(r, np.float64) for r in rounds]) if rounds else np.zeros(0)
    if flat.size == 0:
        raise ValueError("no samples")
    med = float(np.median(flat))
    round_medians = [float(np.median(r)) for r in rounds]
    return {"median_ms": med, "p90_ms": float(np.percentile(flat, 90)), "mean_ms": float(flat.mean()),
            "min_ms": float(flat.min()), "mad_ms": float(np.median(np.abs(flat - med))), "cv": robust_cv(flat),
            "round_cv": robust_cv(round_medians), "runs": int(flat.size), "rounds": len(rounds),
            "round_medians_ms": round_medians}


def _interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_median(values, *, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Median of ``values`` and its percentile-bootstrap CI (i.i.d. resampling, fixed seed).

    Used for the per-pair ratios of an A/B run.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    boot = np.median(v[rng.integers(0, v.size, size=(n_boot, v.size))], axis=1)
    return (float(np.median(v)), *_interval(boot, confidence))


def _padded(rounds: list) -> np.ndarray:
    width = max(len(r) for r in rounds)
    out = np.full((len(rounds), width), np.nan)
    for i, r in enumerate(rounds):
        out[i, :len(r)] = r
    return out


def _cluster_boot(rounds: list, q: float, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Quantile ``q`` of the pooled samples of ``len(rounds)`` rounds drawn with replacement."""
    pad = _padded(rounds)
    pick = rng.integers(0, len(rounds), size=(n_boot, len(rounds)))
    vals = np.sort(pad[pick].reshape(n_boot, -1), axis=1)        # NaN padding sorts last
    count = (~np.isnan(vals)).sum(axis=1)
    pos = q * (count - 1)                                          # linear interpolation, as np.quantile
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, count - 1)
    rows = np.arange(n_boot)
    return vals[rows, lo] + (pos - lo) * (vals[rows, hi] - vals[rows, lo])


def bootstrap_quantile(rounds: list, q: float = 0.5, *, confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Quantile ``q`` of the pooled samples and its cluster-bootstrap CI (rounds resampled)."""
    flat = np.concatenate([np.asarray(r, np.float64) for r in rounds])
    boot = _cluster_boot(rounds, q, n_boot, np.random.default_rng(seed))
    return (float(np.quantile(flat, q)), *_interval(boot, confidence))


def bootstrap_ratio_of_medians(new_rounds: list, base_rounds: list, *, q: float = 0.5, confidence: float = 0.95,
                               n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(new) / median(base) over pooled samples (quantile ``q``: 0.5 median, 0 min) and its
    cluster-bootstrap CI.

    Each side's rounds are resampled independently (fixed seed); a round is the unit, so the
    interval carries the round-to-round variation of the machine, not only per-run noise.
    """
    rng = np.random.default_rng(seed)
    new_flat = np.concatenate([np.asarray(r, np.float64) for r in new_rounds])
    base_flat = np.concatenate([np.asarray(r, np.float64) for r in base_rounds])
    boot = _cluster_boot(new_rounds, q, n_boot, rng) / _cluster_boot(base_rounds, q, n_boot, rng)
    return (float(np.quantile(new_flat, q) / np.quantile(base_flat, q)), *_interval(boot, confidence))


def pair_ratios(new_rounds: list, base_rounds: list, q: float = 0.5) -> np.ndarray:
    """Per-pair ratios quantile_q(new_i) / quantile_q(base_i) of interleaved rounds (A/B)."""
    n = min(len(new_rounds), len(base_rounds))
    return np.array([np.quantile(new_rounds[i], q) / np.quantile(base_rounds[i], q) for i in range(n)])


def decide(lo: float, hi: float, threshold: float, *, expect_faster: bool = False) -> str:
    """"pass", "fail" or "inconclusive" for a CI [lo, hi] of the ratio new/base.

    Regression gate (threshold = 1 + max_regression): fail if lo > t, pass if hi <= t.
    Speed-up gate (threshold = 1 / min_speedup): pass if hi < t, fail if lo >= t.
    """
    if expect_faster:
        return "pass" if hi < threshold else "fail" if lo >= threshold else "inconclusive"
    return "fail" if lo > threshold else "pass" if hi <= threshold else "inconclusive"
