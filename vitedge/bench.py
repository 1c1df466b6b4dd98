"""Latency gate: measure an exported model on a device, compare it, decide (``vitedge bench``).

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
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

import numpy as np

from .devices import Device, DeviceError, MeasureConfig, PlanError, RuntimeMissingError, get_device
from .devices.runner import detect_drift

BASELINE_FORMAT = "vitedge-bench-baseline"
BASELINE_VERSION = 1
RESULT_FORMAT = "vitedge-bench-result"
RESULT_VERSION = 1

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_UNSTABLE = 0, 1, 2, 3

RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert"}
# runtimes that can run a file of this kind (a device preset's default runtime is kept when it fits)
RUNTIMES_FOR_SUFFIX = {".onnx": {"onnxruntime", "command"}, ".tflite": {"litert", "benchmark_model", "command"}}
STATISTICS = {"median": 0.5, "p25": 0.25, "p10": 0.10, "min": 0.0}
MAD_TO_SIGMA = 1.4826
BATCH_PAIRS = 10            # A/B: pairs added per step while the comparison is inconclusive
STABILITY_ADVICE = ("re-run on an idle machine, pin the process to cores (e.g. `taskset -c 1 vitedge bench ... "
                    "--threads 1`), or use --against (A/B) on shared machines")


class BenchError(ValueError):
    """Bad input or usage (exit 2); a one-line message naming the problem and the fix."""


# ============================================================================ statistics (pure numpy)
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


# ============================================================================ settings
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


# ============================================================================ models and inputs
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 2: "uint8", 3: "int8"}


def runtime_for(path: str | Path, runtime: str | None) -> str:
    if runtime:
        return runtime
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIME_BY_SUFFIX:
        raise BenchError(f"cannot tell the runtime of {path} from its extension: use .onnx or .tflite, or give --runtime")
    return RUNTIME_BY_SUFFIX[suffix]


def read_input_spec(path: str | Path) -> dict:
    """The image input of an .onnx or .tflite file: {"name", "shape" (batch 1), "dtype", "layout"}.

    Raises BenchError: missing file, unreadable model, not exactly one image input, dynamic H/W.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"model file {path} does not exist: give the path of an exported .onnx or .tflite")
    if path.suffix.lower() == ".tflite":
        name, shape, dtype = _tflite_input(path)
    else:
        name, shape, dtype = _onnx_input(path)
    if len(shape) != 4:
        raise BenchError(f"{path}: input {name!r} has shape {shape}: vitedge bench feeds one image (N, C, H, W) or (N, H, W, C)")
    shape = [1 if (i == 0 and (d is None or d < 1)) else d for i, d in enumerate(shape)]
    if any(d is None or d < 1 for d in shape):
        raise BenchError(f"{path}: input {name!r} has a dynamic size {shape}: export the model with a fixed input size")
    layout = "NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None
    if layout is None:
        raise BenchError(f"{path}: input {name!r} of shape {shape} is not an image with 1 or 3 channels")
    return {"name": name, "shape": [int(d) for d in shape], "dtype": dtype, "layout": layout}


def _onnx_input(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for corrupt bytes
        raise BenchError(f"cannot load model {path}: not a valid ONNX file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BenchError(f"cannot load model {path}: it has {len(inputs)} inputs; vitedge bench feeds exactly one image input")
    t = inputs[0].type.tensor_type
    if not inputs[0].type.HasField("tensor_type") or t.elem_type not in _ONNX_DTYPES:
        raise BenchError(f"{path}: input {inputs[0].name!r} is not a float or 8-bit image tensor")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return inputs[0].name, shape, _ONNX_DTYPES[t.elem_type]


def _tflite_input(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BenchError("reading a .tflite model needs ai-edge-litert (or tflite-runtime) on this host: "
                             "run `python -m pip install ai-edge-litert`") from None
    try:
        details = Interpreter(model_path=str(path)).get_input_details()
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"cannot load model {path}: not a valid TFLite file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if len(details) != 1:
        raise BenchError(f"cannot load model {path}: it has {len(details)} inputs; vitedge bench feeds exactly one image input")
    d = details[0]
    shape = [int(x) if x > 0 else None for x in d.get("shape_signature", d["shape"])]
    return d["name"], shape, np.dtype(d["dtype"]).name


def _resize_chw(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (C, H, W) array with PIL (mode "F"), channel by channel."""
    from PIL import Image

    if tuple(img.shape[1:]) == tuple(hw):
        return img
    return np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR))
                     for c in img])


def _fit_channels(x: np.ndarray, c: int) -> np.ndarray:
    if x.shape[1] == c:
        return x
    return np.repeat(x[:, :1], c, axis=1) if c > x.shape[1] else x[:, :c]


@dataclass
class ImageFeeds:
    """Input dicts (batch 1) for a model's single image input, and where they come from."""

    feeds: list
    source: str
    hash: str

    def rotated(self, k: int) -> list:
        k %= len(self.feeds)
        return self.feeds[k:] + self.feeds[:k]


def load_feeds(spec: dict, settings: BenchSettings) -> ImageFeeds:
    """Images for ``spec`` (see :func:`read_input_spec`): ``settings.data`` read with PIL, resized
    (bilinear) to the input H x W and normalised with mean/std; else the digits calibration split
    (already normalised for the reference model, resized when H x W differ).

    Raises BenchError for a missing or empty folder, an unreadable image.
    """
    n, (c, h, w) = settings.images, _chw(spec)
    if settings.data is None:
        from .data.digits import digits_split

        base = digits_split("calib").images[:n]                     # (D, 3, 32, 32), (x - 0.5) / 0.5
        x = np.stack([_resize_chw(im, (h, w)) for im in base])
        x = _fit_channels(x, c)
        source = "digits:calib" + ("" if (h, w) == tuple(base.shape[2:]) else f"@{h}x{w}")
        pixels = None
    else:
        x, source = _read_folder(Path(settings.data), (c, h, w), n, settings.mean, settings.std)
    if spec["dtype"] in ("uint8", "int8"):  # quantised input: raw pixels
        px = np.clip(np.rint((x * 0.5 + 0.5) * 255.0), 0, 255)
        pixels = px.astype(np.uint8) if spec["dtype"] == "uint8" else (px - 128).astype(np.int8)
        x = pixels
    else:
        x = x.astype(spec["dtype"])
    if spec["layout"] == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    h_ = hashlib.sha256(x.tobytes())
    h_.update(str(x.shape).encode())
    return ImageFeeds(feeds=[{spec["name"]: x[i:i + 1]} for i in range(len(x))], source=source,
                      hash=h_.hexdigest()[:16])


def _chw(spec: dict) -> tuple[int, int, int]:
    s = spec["shape"]
    return (s[1], s[2], s[3]) if spec["layout"] == "NCHW" else (s[3], s[1], s[2])


def _read_folder(root: Path, chw, limit: int, mean, std):
    from PIL import Image

    from .data.images import IMAGE_SUFFIXES

    if not root.is_dir():
        raise BenchError(f"image folder {root} does not exist: pass a folder of images to --data")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise BenchError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): add images or omit --data")
    c, h, w = chw
    if len(mean) not in (1, c):
        raise BenchError(f"--mean/--std have {len(mean)} values for a {c}-channel input")
    m = np.asarray(mean if len(mean) == c else mean * c, np.float32).reshape(c, 1, 1)
    s = np.asarray(std if len(std) == c else std * c, np.float32).reshape(c, 1, 1)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.float32) / 255.0
        except Exception as e:  # noqa: BLE001
            raise BenchError(f"cannot read image {f} ({type(e).__name__}): remove or replace it") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out.append((a - m) / s)
    return np.stack(out).astype(np.float32), str(root)


# ============================================================================ baselines
def _atomic_write(path: str | Path, text: str) -> None:
    path = Path(path)
    d = path.resolve().parent
    if not d.is_dir():
        raise BenchError(f"cannot write {path}: folder {d} does not exist")
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str | Path, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def make_baseline(result: dict) -> dict:
    """The baseline JSON of a bench result: identity of what was measured + raw samples."""
    new = result["new"]
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {k: new["model"][k] for k in ("path", "sha256", "input")},
            "device": result["device"], "images": result["images"], "protocol": result["protocol"],
            "summary": {k: v for k, v in new["stats"].items() if k != "round_medians_ms"},
            "samples_ms": new["samples_ms"], "environment": result["environment"]}


def load_baseline(path: str | Path) -> dict:
    """Read and validate a baseline file. Raises BenchError (missing, corrupt, wrong format/version)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"baseline file {path} does not exist: create it with --save-baseline {path}")
    try:
        b = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"baseline {path} is corrupt (not valid JSON: {type(e).__name__}): re-create it with --save-baseline") from None
    if not isinstance(b, dict) or b.get("format") != BASELINE_FORMAT:
        raise BenchError(f"{path} is not a vitedge bench baseline (format tag {BASELINE_FORMAT!r} missing): "
                         "re-create it with --save-baseline")
    if b.get("version") != BASELINE_VERSION:
        raise BenchError(f"baseline {path} has version {b.get('version')!r}, this vitedge reads version "
                         f"{BASELINE_VERSION}: re-create it with --save-baseline")
    try:
        rounds = [[float(x) for x in r] for r in b["samples_ms"]]
        ok = len(rounds) >= 2 and all(r and all(math.isfinite(x) and x > 0 for x in r) for r in rounds)
        dev = b["device"]
        ok = ok and all(k in dev for k in ("name", "runtime", "threads")) and isinstance(b["model"]["input"]["shape"], list)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BenchError(f"baseline {path} is corrupt (samples, device or model input missing or invalid): "
                         "re-create it with --save-baseline")
    b["samples_ms"] = rounds
    return b


def check_baseline(b: dict, *, device: dict, spec: dict, images: ImageFeeds, environment: dict, force: bool,
                   source: str) -> list[str]:
    """Refuse (BenchError) a baseline measured elsewhere; return notes for harmless differences.

    Input shape: always refused. Device name, runtime, threads, CPU model, images: refused unless
    ``force``. Runtime version, model file: notes (a new runtime or model is what a gate checks).
    """
    notes = []
    if list(b["model"]["input"]["shape"]) != list(spec["shape"]):
        raise BenchError(f"baseline {source} was measured with input shape {b['model']['input']['shape']}, "
                         f"this model takes {spec['shape']}: it measures another model; save a new baseline")
    bd = b["device"]
    diffs = [f"{k} {bd.get(k)!r} vs {device[k]!r}" for k in ("name", "runtime", "threads") if bd.get(k) != device[k]]
    cpu_b, cpu_n = (b.get("environment") or {}).get("cpu_model"), (environment or {}).get("cpu_model")
    if cpu_b and cpu_n and cpu_b != cpu_n:
        diffs.append(f"cpu {cpu_b!r} vs {cpu_n!r}")
    if (b.get("images") or {}).get("hash") != images.hash:
        diffs.append(f"images {(b.get('images') or {}).get('source')!r} vs {images.source!r}")
    if diffs:
        what = "; ".join(diffs)
        if not force:
            raise BenchError(f"baseline {source} was measured elsewhere ({what}): refusing to compare; "
                             "measure a baseline with the same settings, or pass --force")
        notes.append(f"--force: comparing across {what}")
    if bd.get("runtime_version") != device.get("runtime_version"):
        notes.append(f"runtime version changed: {bd.get('runtime_version')} (baseline) -> {device.get('runtime_version')}")
    return notes


# ============================================================================ measurement
@dataclass
class _Model:
    role: str                    # "new" or "base"
    path: Path
    spec: dict
    sha256: str
    rounds: list = field(default_factory=list)     # per-round samples (ms)
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
        checks = [c for c in (self._budget(stable), self._comparison()) if c is not None]
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
                "stats": summary(self.baseline["samples_ms"])},
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
        from .devices.runner import environment

        return environment(self.device.runtime, self.device.threads, self.runtime_version)

    @staticmethod
    def _side(m: _Model) -> dict:
        return {"model": m.describe(), "stats": summary(m.rounds), "samples_ms": m.rounds}


# ============================================================================ reports
def format_text(r: dict) -> str:
    """Human-readable report (what the CLI prints without --json)."""
    d = r["device"]
    th = f"{d['threads']} thread{'s' if d['threads'] != 1 else ''}"
    lines = [f"device   {d['name']} ({d['runtime']} {d['runtime_version']}, {th}); images {r['images']['source']} "
             f"x{r['images']['count']}"]

    def side(label, st, path):
        return (f"{label:<8} {st['median_ms']:.4f} ms median  p90 {st['p90_ms']:.4f}  MAD {st['mad_ms']:.4f}  "
                f"CV {100 * st['cv']:.1f} % (round medians {100 * st['round_cv']:.1f} %)  {st['runs']} runs in "
                f"{st['rounds']} rounds  {path}")

    lines.append(side("new", r["new"]["stats"], r["new"]["model"]["path"]))
    if r["base"]:
        lines.append(side("base", r["base"]["stats"], r["base"]["model"]["path"]))
    if r["baseline"]:
        lines.append(side("baseline", r["baseline"]["stats"], f"{r['baseline']['path']} ({r['baseline']['created']})"))
    for c in r["checks"]:
        lines.append(f"check    {c['name']:<10} {c['status'].upper():<12} {c['message']}")
    for n in r["notes"]:
        lines.append(f"note     {n}")
    e = r["environment"] or {}
    lines.append(f"env      {e.get('cpu_model')} ({e.get('cpu_count')} cpus, affinity {e.get('cpu_affinity')}, "
                 f"governor {e.get('governor')}), {e.get('system')} {e.get('release')}, python {e.get('python')}, "
                 f"host {e.get('hostname')}")
    lines.append(f"verdict  {r['verdict'].upper()} (exit {r['exit_code']}) in {r['seconds']:.1f} s")
    return "\n".join(lines)


def junit_xml(r: dict, *, suite: str = "vitedge-bench") -> str:
    """A JUnit XML report: one testsuite, one testcase per check; failing checks carry a
    ``<failure message=... type=...>`` (type: fail, unstable or inconclusive), skipped ones ``<skipped>``."""
    checks = r["checks"]
    failed = [c for c in checks if c["status"] in ("fail", "unstable", "inconclusive")]
    skipped = [c for c in checks if c["status"] == "skipped"]
    ts = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(len(failed)), errors="0",
                    skipped=str(len(skipped)), time=f"{r['seconds']:.3f}",
                    timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                    hostname=(r.get("environment") or {}).get("hostname") or platform.node())
    props = ET.SubElement(ts, "properties")
    d = r["device"]
    for k, v in (("model", r["new"]["model"]["path"]), ("model_sha256", r["new"]["model"]["sha256"]),
                 ("against", r["base"]["model"]["path"] if r["base"] else ""),
                 ("baseline", r["baseline"]["path"] if r["baseline"] else ""),
                 ("device", d["name"]), ("runtime", f"{d['runtime']} {d['runtime_version']}"), ("threads", d["threads"]),
                 ("verdict", r["verdict"]), ("exit_code", r["exit_code"])):
        ET.SubElement(props, "property", name=k, value=str(v))
    classname = f"vitedge.bench.{Path(r['new']['model']['path']).stem}"
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=c["name"], time=f"{r['seconds']:.3f}")
        if c["status"] in ("fail", "unstable", "inconclusive"):
            f = ET.SubElement(tc, "failure", message=c["message"], type=c["status"])
            f.text = json.dumps(c.get("values", {}), default=float)
        elif c["status"] == "skipped":
            ET.SubElement(tc, "skipped", message=c["message"])
        out = ET.SubElement(tc, "system-out")
        out.text = c["message"]
    ET.SubElement(ts, "system-out").text = format_text(r)
    ET.indent(ts)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit(path: str | Path, r: dict) -> None:
    _atomic_write(path, junit_xml(r))


def result_json(r: dict, *, samples: bool = False) -> dict:
    """The result for --json / -o: everything, raw samples only when ``samples``."""
    out = json.loads(json.dumps(r, default=float))
    if not samples:
        for k in ("new", "base"):
            if out.get(k):
                out[k].pop("samples_ms", None)
    return out


def check_output_paths(*paths) -> None:
    """Refuse, before measuring, output paths whose folder does not exist (no work wasted)."""
    for p in paths:
        if p is not None and not Path(p).resolve().parent.is_dir():
            raise BenchError(f"cannot write {p}: folder {Path(p).resolve().parent} does not exist")


__all__ = ["BenchError", "BenchSettings", "Gate", "STATISTICS", "bootstrap_median", "pair_ratios", "bootstrap_quantile",
           "bootstrap_ratio_of_medians", "check_baseline", "decide", "format_text", "junit_xml", "load_baseline",
           "load_feeds", "make_baseline", "parse_fraction", "read_input_spec", "robust_cv", "summary",
           "write_json", "write_junit", "EXIT_PASS", "EXIT_FAIL", "EXIT_USAGE", "EXIT_UNSTABLE"]
