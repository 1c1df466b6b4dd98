"""What the latency gate measures and how it decides: :class:`BenchSettings`, :class:`BenchError`,
:func:`parse_fraction`.

Part of :mod:`vitedge.gate` (the public names are importable from there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from vitedge.devices import MeasureConfig

from .stats import STATISTICS


class BenchError(ValueError):
    """Bad input or usage (exit 2); a one-line message naming the problem and the fix."""


def parse_fraction(text: str | float, what: str = "--max-regression") -> float:
    """"5%" -> 0.05, "0.05" -> 0.05. Plain numbers must be fractions in [0, 1)."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            v = float(s[:-1]) / 100.0
        else:
            v = float(s)
            if v >= 1:
                raise BenchError(f"{what} {s} is ambiguous: give a fraction below 1 (0.05) or a percentage ({s}%)")
    except ValueError as e:
        if isinstance(e, BenchError):
            raise
        raise BenchError(f"{what} must be a percentage (5%) or a fraction (0.05), got {s!r}") from None
    if not (math.isfinite(v) and 0 <= v < 1):
        raise BenchError(f"{what} must be in [0 %, 100 %), got {s!r}")
    return v


@dataclass
class BenchSettings:
    """What the gate measures and how it decides (CLI flags map 1:1; defaults are the CLI's)."""

    device: str = "local"
    device_settings: dict = field(default_factory=dict)   # host, serial, devices_file, preset keys
    runtime: str | None = None          # None: the device preset's if it runs this file, else from the extension
    threads: int = 0                    # 0: all cores (resolved by the device)
    data: str | None = None             # image folder; None: digits calibration split
    images: int = 32                    # input images cycled through
    mean: tuple = (0.5, 0.5, 0.5)       # normalisation of --data images (timm's ViT default)
    std: tuple = (0.5, 0.5, 0.5)
    warmup: int = 5                     # per round: untimed runs
    runs: int = 20                      # per round: at least this many timed runs
    min_time_s: float = 0.05            # per round: and at least this much timed time
    rounds: int | None = None           # single/baseline: 10; A/B: 30 pairs (None: mode default)
    max_rounds: int | None = None       # A/B: at most this many pairs (None: 3 x rounds)
    statistic: str = "median"           # per-round statistic compared (median, p25, p10, min)
    max_regression: float = 0.05
    max_memory_regression: float | None = None  # memory check (vitedge.footprint.memory_check); None: report only
    expect_faster: bool = False
    min_speedup: float = 1.0
    budget_ms: float | None = None
    quantile: float = 0.5
    max_cv: float = 0.05                # robust CV of the round medians (not of the samples: a
                                        # threshold-pruned model's latency varies with the image)
    drift_tolerance: float = 0.10
    confidence: float = 0.95
    n_boot: int = 10000
    seed: int = 0
    force: bool = False

    def validate(self) -> None:
        checks = [
            (self.images >= 1, f"--images must be >= 1, got {self.images}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (self.runs >= 1, f"--runs must be >= 1 (timed runs per round), got {self.runs}"),
            (self.min_time_s >= 0 and math.isfinite(self.min_time_s), f"--min-time must be >= 0 s, got {self.min_time_s}"),
            (self.rounds is None or self.rounds >= 2, f"--rounds must be >= 2, got {self.rounds}"),
            (self.max_rounds is None or self.max_rounds >= (self.rounds or 2),
             f"--max-rounds must be >= --rounds, got {self.max_rounds}"),
            (self.threads >= 0, f"--threads must be >= 0 (0: all cores), got {self.threads}"),
            (0 <= self.max_regression < 1, f"--max-regression must be in [0, 1), got {self.max_regression}"),
            (self.max_memory_regression is None or 0 <= self.max_memory_regression < 1,
             f"--max-memory-regression must be in [0, 1), got {self.max_memory_regression}"),
            (self.min_speedup > 0 and math.isfinite(self.min_speedup), f"--min-speedup must be > 0, got {self.min_speedup}"),
            (self.budget_ms is None or (self.budget_ms > 0 and math.isfinite(self.budget_ms)),
             f"--budget-ms must be > 0, got {self.budget_ms}"),
            (0 < self.quantile < 1, f"--quantile must be in (0, 1), e.g. 0.5 (median) or 0.9 (p90), got {self.quantile}"),
            (self.max_cv > 0, f"--max-cv must be > 0, got {self.max_cv}"),
            (self.drift_tolerance > 0, f"--drift-tolerance must be > 0, got {self.drift_tolerance}"),
            (0.5 <= self.confidence < 1, f"--confidence must be in [0.5, 1), got {self.confidence}"),
            (self.n_boot >= 100, f"bootstrap resamples must be >= 100, got {self.n_boot}"),
            (len(self.mean) == len(self.std) and all(s > 0 for s in self.std), "--mean/--std: same length, std > 0"),
            (self.statistic in STATISTICS, f"--statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise BenchError(msg)

    def config(self, runs: int | None = None) -> MeasureConfig:
        """The per-round protocol handed to the device (the profiler's MeasureConfig); with ``runs``,
        exactly that many timed runs (the time criterion then met by choosing ``runs``)."""
        if runs is None:
            return MeasureConfig(warmup=self.warmup, min_runs=self.runs, min_time_s=self.min_time_s,
                                 max_runs=max(self.runs, 100000), drift_tolerance=self.drift_tolerance, seed=self.seed)
        return MeasureConfig(warmup=self.warmup, min_runs=runs, max_runs=runs, min_time_s=0.0,
                             drift_tolerance=self.drift_tolerance, seed=self.seed)
