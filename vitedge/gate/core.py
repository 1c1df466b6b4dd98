"""The latency gate's measurement and decision: :class:`Gate` (``vitedge bench``).

No click and no torch here (the CLI in :mod:`vitedge.cli.bench` is a thin wrapper); the device side
is :mod:`vitedge.devices`, so every registered device (local, remote) works through
``Device.measure_model``.

Modes
  * **single** -- ``bench MODEL``: MODEL is timed in ``rounds`` rounds, each one call of
    ``device.measure_model`` with the profiler's protocol: warm-up, then a fixed number of timed
    runs -- whole cycles through the images, >= ``runs`` and lasting >= ``min_time_s`` (sized by
    one calibration round).  Samples are pooled; round medians give the stability check.
  * **baseline** -- ``bench MODEL --baseline FILE``: as single, then the ratio of medians
    new / baseline with a *cluster bootstrap* confidence interval (rounds are resampled with
    replacement on each side, their samples pooled, medians taken), so that the interval
    reflects round-to-round variation and not only sample-to-sample noise.
  * **A/B** -- ``bench MODEL --against OTHER``: rounds of MODEL ("new") and OTHER ("base")
    interleaved in counterbalanced pairs (new base, base new, new base, ...), ratio per pair
    r_i = median(new_i) / median(base_i), estimate median(r), percentile-bootstrap CI of the
    median over pairs (fixed seed).  Machine drift slower than one pair cancels in r_i; this is
    the recommended mode on shared CI machines.  While the comparison is inconclusive, pairs are
    added in batches up to ``max_rounds`` (sequential sampling; see docs/latency-gate.md).

Decision rule, for a confidence interval [lo, hi] of the ratio new/base and a threshold t
  * regression gate (t = 1 + max_regression): FAIL if lo > t, PASS if hi <= t, else INCONCLUSIVE;
  * speed-up gate (``expect_faster``, t = 1 / min_speedup): PASS if hi < t, FAIL if lo >= t,
    else INCONCLUSIVE;
  * budget (``budget_ms``): FAIL if the ``quantile`` (0.5: median) of the new model's samples
    exceeds the budget, PASS otherwise -- except a close call (the budget inside the quantile's
    cluster-bootstrap CI) on an unstable measurement, which is UNSTABLE;
  * stability: the robust CV (1.4826 * MAD / median) of the round medians must be <= ``max_cv``
    and ``detect_drift`` over the round medians must not fire.  (Not the samples' CV: a
    threshold-pruned model's latency varies with the image, which is not noise.)  It gates the
    verdicts that rest on absolute timings without an interval covering the machine's state: a
    plain measurement, a baseline comparison, saving a baseline.  An A/B comparison (its CI carries the noise) and a
    clear budget decision do not depend on it: there it is reported ("skipped" when unstable).

Exit codes: 0 pass, 1 a check failed (regression, budget, speed-up not reached), 2 usage or bad
input, 3 unstable measurement or inconclusive comparison (re-run, pin cores, more rounds).
Precedence: unstable (3) > fail (1) > inconclusive (3) > pass (0).

The package :mod:`vitedge.gate` is split by concern (its ``__init__`` exports the public names):
:mod:`~vitedge.gate.stats` (statistics), :mod:`~vitedge.gate.settings` (settings, errors),
:mod:`~vitedge.gate.inputs` (models and images), :mod:`~vitedge.gate.baseline` (baseline files),
:mod:`~vitedge.gate.report` (text, JSON, JUnit); the measurement (:class:`Gate`) is here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vitedge.devices import Device, DeviceError, PlanError, RuntimeMissingError, get_device
from vitedge.devices.base import file_sha256
from vitedge.devices.runner import detect_drift
from vitedge.footprint import combine, memory_check

from .baseline import check_baseline, load_baseline
from .inputs import RUNTIMES_FOR_SUFFIX, load_feeds, read_input_spec, runtime_for
from .settings import BenchError, BenchSettings
from .stats import (STATISTICS, bootstrap_median, bootstrap_quantile, bootstrap_ratio_of_medians, decide, pair_ratios,
                    robust_cv, summary)

RESULT_FORMAT = "vitedge-bench-result"
RESULT_VERSION = 1

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_UNSTABLE = 0, 1, 2, 3

BATCH_PAIRS = 10            # A/B: pairs added per step while the comparison is inconclusive
STABILITY_ADVICE = ("re-run on an idle machine, pin the process to cores (e.g. `taskset -c 1 vitedge bench ... "
                    "--threads 1`), or use --against (A/B) on shared machines")


# ============================================================================ measurement
@dataclass
class _Model:
    role: str                    # "new" or "base"
    path: Path
    spec: dict
    sha256: str
    rounds: list = field(default_factory=list)     # per-round samples (ms)
    footprints: list = field(default_factory=list)  # per round: load time, first inference, memory (vitedge.footprint)
    environment: dict | None = None

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "input": self.spec}


class Gate:
    """One gate run: open the device, read the models and images, measure, decide.

    ``log`` receives progress lines (stderr in the CLI). Raise BenchError for bad input.
    """

    def __init__(self, model: str | Path, settings: BenchSettings, *, against: str | Path | None = None,
                 baseline: str | Path | None = None, log: Callable[[str], None] | None = None,
                 device_factory: Callable[..., Device] | None = None):
        settings.validate()
        if baseline is not None and against is not None:
            raise BenchError("give --baseline or --against, not both")
        self.s, self.log = settings, log or (lambda _m: None)
        self.mode = "ab" if against is not None else "baseline" if baseline is not None else "single"
        for p in (model, against):
            if p is not None and not Path(p).is_file():
                raise BenchError(f"model file {p} does not exist: give the path of an exported .onnx or .tflite")
        runtime = runtime_for(model, settings.runtime)
        if against is not None and runtime_for(against, settings.runtime) != runtime:
            raise BenchError(f"{model} and {against} need different runtimes ({runtime} vs "
                             f"{runtime_for(against, None)}): compare models of the same format, or give --runtime")
        self.new = _Model("new", Path(model), read_input_spec(model), "")
        self.new.sha256 = file_sha256(self.new.path)
        self.base = None
        if against is not None:
            self.base = _Model("base", Path(against), read_input_spec(against), "")
            self.base.sha256 = file_sha256(self.base.path)
            if self.base.spec["shape"] != self.new.spec["shape"] or self.base.spec["name"] != self.new.spec["name"]:
                raise BenchError(f"{against} takes {self.base.spec['name']!r} {self.base.spec['shape']}, {model} takes "
                                 f"{self.new.spec['name']!r} {self.new.spec['shape']}: A/B needs the same input")
        self.baseline_path = baseline
        self.baseline = load_baseline(baseline) if baseline is not None else None
        self.images = load_feeds(self.new.spec, settings)
        self.device = self._open_device(device_factory or get_device, runtime)
        default = 30 if self.mode == "ab" else 10
        self.rounds = settings.rounds or min(default, settings.max_rounds or default)
        self.max_rounds = max(settings.max_rounds or (3 * self.rounds if self.mode == "ab" else self.rounds), self.rounds)
        self.notes: list[str] = []
        if self.baseline is not None:  # refuse before measuring (the CPU model is checked again after)
            check_baseline(self.baseline, device=self.device_info(), spec=self.new.spec, images=self.images,
                           environment=None, force=settings.force, source=str(baseline))

    def _open_device(self, factory, runtime: str) -> Device:
        """The device with ``--runtime``; without it, the device preset's runtime when it can run
        this file (e.g. benchmark_model for .tflite on a phone), else the extension's runtime."""
        s = self.s
        try:
            kw = dict(threads=s.threads, config=s.config(), **s.device_settings)
            if s.runtime is None:
                dev = factory(s.device, runtime=None, **kw)
                if dev.runtime not in RUNTIMES_FOR_SUFFIX.get(self.new.path.suffix.lower(), {runtime}):
                    dev = factory(s.device, runtime=runtime, **kw)
            else:
                dev = factory(s.device, runtime=runtime, **kw)
            self.runtime_version = str(dev.runtime_version())
        except (DeviceError, PlanError) as e:
            raise BenchError(" ".join(str(e).split())) from None
        except RuntimeMissingError as e:
            raise BenchError(f"{' '.join(str(e).split())} (needed to run {self.new.path.name})") from None
        return dev

    # -- measuring ------------------------------------------------------------------------------------------
    def _round(self, m: _Model, k: int) -> None:
        try:
            res = self.device.measure_model(m.path, self.images.rotated(7 * k), name=f"{m.role}{k}")
        except (DeviceError, PlanError) as e:
            raise BenchError(f"cannot measure {m.path} on {self.s.device}: {' '.join(str(e).split())}") from None
        except RuntimeMissingError as e:
            raise BenchError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the runtime's own error for a model it cannot load or run
            raise BenchError(f"cannot run model {m.path} with {self.device.runtime}: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from None
        samples = [float(x) for x in res.get("samples_ms") or []]
        if not samples:
            raise BenchError(f"measuring {m.path} on {self.s.device} returned no samples: {res.get('error')}")
        m.rounds.append(samples)
        m.footprints.append(res.get("footprint"))
        if m.environment is None:
            m.environment = res.get("environment")

    def _calibrate(self) -> int:
        """Timed runs per round: the smallest multiple of the image count that is >= ``runs`` and
        lasts >= ``min_time_s`` for every model (from one calibration round each, not recorded).

        Whole cycles through the images give every round the same image mix: a threshold-pruned
        model's latency depends on the image, and a time-based stop would change the mix (and the
        round's median) from round to round and between the two models of a pair.
        """
        n = len(self.images.feeds)
        runs = n * math.ceil(self.s.runs / n)
        self._set_runs(runs)
        need = runs
        for m in (self.new, self.base):
            if m is not None:
                probe = _Model(m.role, m.path, m.spec, m.sha256)
                self._round(probe, 0)
                med = float(np.median(probe.rounds[0]))
                if m.environment is None:
                    m.environment = probe.environment
                if med > 0:
                    need = max(need, math.ceil(self.s.min_time_s * 1000.0 / med))
        self.runs_per_round = n * math.ceil(need / n)
        self._set_runs(self.runs_per_round)
        self.log(f"{self.runs_per_round} timed runs per round ({self.runs_per_round // n} cycles of {n} images)")
        return self.runs_per_round

    def _set_runs(self, runs: int) -> None:
        cfg = self.s.config(runs)
        with_config = getattr(self.device, "with_config", None)
        if callable(with_config):
            self.device = with_config(cfg)
        else:
            self.device.config = cfg

    def measure(self) -> None:
        """Single/baseline: ``rounds`` rounds of MODEL. A/B: counterbalanced pairs, extended in
        batches of BATCH_PAIRS while the comparison is inconclusive, up to ``max_rounds``."""
        t0 = time.time()
        self._calibrate()
        if self.base is None:
            for k in range(self.rounds):
                self._round(self.new, k)
                self.log(f"round {k + 1}/{self.rounds}: {np.median(self.new.rounds[-1]):.4f} ms")
            self.seconds_measuring = time.time() - t0
            return
        target, k = self.rounds, 0
        while True:
            while k < target:
                first, second = (self.new, self.base) if k % 2 == 0 else (self.base, self.new)
                self._round(first, k)
                self._round(second, k)
                k += 1
            est, lo, hi = self.ab_interval()
            self.log(f"pairs {k}: ratio new/base {est:.4f}, {100 * self.s.confidence:g}% CI [{lo:.4f}, {hi:.4f}]")
            status = decide(lo, hi, self.threshold(), expect_faster=self.s.expect_faster)
            if status != "inconclusive" or k >= self.max_rounds:
                break
            target = min(k + BATCH_PAIRS, self.max_rounds)
        self.seconds_measuring = time.time() - t0

    def pair_ratios(self) -> np.ndarray:
        return pair_ratios(self.new.rounds, self.base.rounds, STATISTICS[self.s.statistic])

    def ab_interval(self) -> tuple[float, float, float]:
        return bootstrap_median(self.pair_ratios(), confidence=self.s.confidence, n_boot=self.s.n_boot, seed=self.s.seed)

    def threshold(self) -> float:
        return 1.0 / self.s.min_speedup if self.s.expect_faster else 1.0 + self.s.max_regression

    # -- deciding ----------------------------------------------------------------------------------------------
    def _stability_problems(self) -> tuple[list, dict]:
        st = summary(self.new.rounds)
        drift = detect_drift(st["round_medians_ms"], self.s.drift_tolerance)
        problems = []
        if st["round_cv"] > self.s.max_cv:
            problems.append(f"round-median CV {100 * st['round_cv']:.1f} % > {100 * self.s.max_cv:g} %")
        if drift["detected"]:
            problems.append(f"drift: round medians moved {100 * drift['max_rel_dev']:.1f} % > {100 * self.s.drift_tolerance:g} %")
        return problems, {"round_cv": st["round_cv"], "max_cv": self.s.max_cv, "drift": drift}

    def _stability(self, gating: bool) -> dict:
        problems, values = self._stability_problems()
        st, drift = {"round_cv": values["round_cv"]}, values["drift"]
        if not problems:
            return {"name": "stability", "status": "pass", "values": values,
                    "message": f"round-median CV {100 * st['round_cv']:.1f} % <= {100 * self.s.max_cv:g} %, round medians within "
                               f"{100 * drift['max_rel_dev']:.1f} % (tolerance {100 * self.s.drift_tolerance:g} %)"}
        if not gating:
            why = ("interleaving cancels drift, the CI carries the noise" if self.mode == "ab" else
                   "the budget is outside the CI of the measured latency")
            return {"name": "stability", "status": "skipped", "values": values,
                    "message": f"not gating ({why}): {'; '.join(problems)}"}
        return {"name": "stability", "status": "unstable", "values": values,
                "message": f"measurement unstable: {'; '.join(problems)}: {STABILITY_ADVICE}"}

    def _comparison(self) -> dict | None:
        s, t = self.s, self.threshold()
        if self.mode == "single":
            return None
        if self.mode == "ab":
            ratios = self.pair_ratios()
            est, lo, hi = self.ab_interval()
            method = (f"median of {len(ratios)} interleaved pair ratios {s.statistic}(new)/{s.statistic}(base), "
                      f"percentile bootstrap ({s.n_boot} resamples, seed {s.seed})")
            extra = {"pairs": len(ratios), "pair_ratios": [float(r) for r in ratios], "ratio_cv": robust_cv(ratios)}
        else:
            est, lo, hi = bootstrap_ratio_of_medians(self.new.rounds, self.baseline["samples_ms"],
                                                     q=STATISTICS[s.statistic], confidence=s.confidence,
                                                     n_boot=min(s.n_boot, 4000), seed=s.seed)
            method = (f"ratio {s.statistic}(new)/{s.statistic}(baseline) of pooled samples, cluster bootstrap over "
                      f"rounds ({min(s.n_boot, 4000)} resamples, seed {s.seed})")
            extra = {"new_rounds": len(self.new.rounds), "baseline_rounds": len(self.baseline["samples_ms"])}
        status = decide(lo, hi, t, expect_faster=s.expect_faster)
        c = f"{100 * s.confidence:g}%"
        ci = f"ratio {est:.3f} ({c} CI [{lo:.3f}, {hi:.3f}])"
        if s.expect_faster:
            name, want = "speedup", f"CI upper < {t:.3f}" + (f" (speed-up >= x{s.min_speedup:g})" if s.min_speedup != 1 else "")
            msg = {"pass": f"new is faster with {c} confidence: {ci}, {want}",
                   "fail": f"new is not faster than required: {ci}, CI lower >= {t:.3f}",
                   "inconclusive": f"speed-up not shown: {ci} contains {t:.3f}: more --rounds, or an idle machine"}[status]
        else:
            name, tol = "regression", f"{100 * s.max_regression:g} %"
            msg = {"pass": f"no regression above {tol}: {ci}, CI upper <= {t:.3f}",
                   "fail": f"regression: new is slower than base by more than {tol} with {c} confidence: {ci}, CI lower > {t:.3f}",
                   "inconclusive": f"inconclusive: {ci} contains the threshold {t:.3f}: re-run with more --rounds or "
                                   f"--max-rounds, on an idle machine or pinned cores (taskset)"}[status]
        return {"name": name, "status": status, "message": msg,
                "values": {"ratio": est, "ci": [lo, hi], "confidence": s.confidence, "threshold": t,
                           "statistic": s.statistic,
                           "rule": ("pass if CI upper < t, fail if CI lower >= t" if s.expect_faster else
                                    "fail if CI lower > t, pass if CI upper <= t") + ", else inconclusive",
                           "method": method, **extra}}

    def _memory(self) -> dict | None:
        """``--max-memory-regression``: the model's own memory against the other model's or the baseline's."""
        if self.s.max_memory_regression is None or self.mode == "single":
            return None
        base = combine(self.base.footprints) if self.base is not None else self.baseline.get("footprint")
        against = "the base model" if self.base is not None else "the baseline"
        return memory_check(combine(self.new.footprints), base, self.s.max_memory_regression, against=against)

    def _budget(self, stable: bool) -> dict | None:
        """Pass when the quantile is <= the budget, fail when above. When the budget lies inside the
        quantile's CI (a close call) the point estimate decides only if the measurement is stable;
        otherwise the check is "unstable" (exit 3)."""
        s = self.s
        if s.budget_ms is None:
            return None
        est, lo, hi = bootstrap_quantile(self.new.rounds, s.quantile, confidence=s.confidence,
                                         n_boot=min(s.n_boot, 4000), seed=s.seed)
        q = "median" if s.quantile == 0.5 else f"p{100 * s.quantile:g}"
        ok, close = est <= s.budget_ms, lo <= s.budget_ms <= hi
        msg = (f"{q} {est:.4f} ms {'<=' if ok else '>'} budget {s.budget_ms:g} ms "
               f"({100 * s.confidence:g}% CI [{lo:.4f}, {hi:.4f}] ms{', a close call' if close else ''})")
        status = "pass" if ok else "fail"
        if close and not stable:
            status, msg = "unstable", f"the budget is inside the CI and the measurement is unstable: {msg}: {STABILITY_ADVICE}"
        elif not ok:
            msg = f"over budget: {msg}"
        return {"name": "budget", "status": status, "message": msg,
                "values": {"quantile": s.quantile, "value_ms": est, "ci_ms": [lo, hi], "budget_ms": s.budget_ms,
                           "close_call": close}}

    def run(self, stability_gates: bool | None = None) -> dict:
        """Measure and decide; returns the result dict (``exit_code`` in it).

        ``stability_gates``: whether an unstable measurement makes the verdict "unstable". Default:
        yes where the verdict rests on absolute timings without an interval that covers the noise --
        a plain measurement and a baseline comparison (another job, another machine state); no for
        an A/B comparison (its CI carries the noise) and a budget check (unstable only for a close
        call, see :meth:`_budget`). Saving a baseline passes True.
        """
        t0 = time.time()
        self.measure()
        stable = not self._stability_problems()[0]
        checks = [c for c in (self._budget(stable), self._comparison(), self._memory()) if c is not None]
        if stability_gates is None:
            stability_gates = self.mode == "baseline" or (self.mode == "single" and self.s.budget_ms is None)
        checks.append(self._stability(stability_gates))
        if self.baseline is not None:
            dev = self.device_info()
            self.notes += check_baseline(self.baseline, device=dev, spec=self.new.spec, images=self.images,
                                         environment=self.environment(), force=self.s.force,
                                         source=str(self.baseline_path))
            if self.baseline["model"].get("sha256") == self.new.sha256:
                self.notes.append("the baseline measured this same model file")
        statuses = [c["status"] for c in checks]
        if "unstable" in statuses:
            verdict, code = "unstable", EXIT_UNSTABLE
        elif "fail" in statuses:
            verdict, code = "fail", EXIT_FAIL
        elif "inconclusive" in statuses:
            verdict, code = "inconclusive", EXIT_UNSTABLE
        else:
            verdict, code = "pass", EXIT_PASS
        s = self.s
        result = {
            "format": RESULT_FORMAT, "version": RESULT_VERSION, "mode": self.mode, "verdict": verdict, "exit_code": code,
            "checks": checks, "notes": self.notes,
            "device": self.device_info(),
            "protocol": {"warmup": s.warmup, "runs": s.runs, "min_time_s": s.min_time_s, "rounds": self.rounds,
                         "runs_per_round": self.runs_per_round,
                         "statistic": s.statistic,
                         "max_rounds": self.max_rounds, "confidence": s.confidence, "n_boot": s.n_boot, "seed": s.seed,
                         "max_cv": s.max_cv, "drift_tolerance": s.drift_tolerance},
            "images": {"source": self.images.source, "count": len(self.images.feeds), "hash": self.images.hash},
            "new": self._side(self.new),
            "base": self._side(self.base) if self.base is not None else None,
            "baseline": None if self.baseline is None else {
                "path": str(self.baseline_path), "created": self.baseline.get("created"), "model": self.baseline["model"],
                "stats": summary(self.baseline["samples_ms"]), "footprint": self.baseline.get("footprint")},
            "environment": self.environment(),
            "seconds": round(time.time() - t0, 2),
        }
        return result

    def device_info(self) -> dict:
        return {"name": self.device.name, "runtime": self.device.runtime, "runtime_version": self.runtime_version,
                "threads": self.device.threads}

    def environment(self) -> dict:
        if self.new.environment:
            return self.new.environment
        from vitedge.devices.runner import environment

        return environment(self.device.runtime, self.device.threads, self.runtime_version)

    @staticmethod
    def _side(m: _Model) -> dict:
        return {"model": m.describe(), "stats": summary(m.rounds), "footprint": combine(m.footprints), "samples_ms": m.rounds}

