"""On-device latency runner for vitedge: ``python3 runner.py PLAN.json RESULT.json``.

Self-contained: imports only the standard library and numpy at import time; the runtime
(``onnxruntime`` now, LiteRT later) is imported lazily when a model is opened.  The file is
copied as-is to a Raspberry Pi / phone and must never import torch or vitedge (Python >= 3.9).

Protocol (after TVM auto_scheduler ``measure.py`` and TFLite ``benchmark_model``)
  * One session per model file, created once and reused by every point naming that file
    (a model with a dynamic token axis serves all token counts).
  * Per point: ``warmup`` untimed runs, then timed runs (``time.perf_counter_ns`` around each
    run) until ``runs >= min_runs`` and timed wall time ``>= min_time_s``, or ``max_runs``.
    A point whose wall time passes ``timeout_s`` (checked between runs: a run in progress is
    never interrupted) stops with error_code 2 and keeps the samples it has.
  * Statistics in ms: median, p90 (linear interpolation, as ``numpy.percentile``) and the
    unscaled MAD, ``median(|x - median|)``.
  * Points run in a seeded shuffled order.  The reference point (plan ``reference``, default
    the first point) runs first, again after every ``reference_every`` other points, and
    last.  Drift: the largest relative deviation of those reference medians from their own
    median; ``detected`` when it exceeds ``drift_tolerance``.  The reference's row in
    ``points`` is its first measurement; the re-measurements are only in ``drift``.
  * An exception while running a point is recorded in its row (error_code != 0) and the
    profile goes on.  A missing runtime aborts the whole run (exit 3).

Plan JSON::

    {"runtime": "onnxruntime", "threads": 4,          # threads 0 = the runtime's default
     "config": {"warmup": 5, "min_runs": 20, ...},    # any MeasureConfig field
     "reference": "attn_t197",                        # optional, default: first point
     "points": [{"name": "attn_t197", "model": "attn.onnx",   # relative to the plan file
                 "inputs": {"x": {"shape": [1, 197, 384], "dtype": "float32"}},
                 "tags": {"part": "attention", "tokens": 197}},      # passed through
                {"name": "img", "model": "m.onnx", "inputs_npz": "img.npz"}]}

``inputs`` arrays are seeded standard-normal for float dtypes and zeros otherwise;
``inputs_npz`` arrays are used as stored (loaded with allow_pickle=False).  Without either,
the model's input shapes must be static and are filled the same way.

Result JSON::

    {"format": "vitedge-runner/1", "environment": {...}, "config": {...}, "reference": name,
     "order": [names in execution order], "started": unix_s, "finished": unix_s,
     "points": [{"name", "samples_ms", "median_ms", "p90_ms", "mad_ms", "runs", "error_code",
                 "error", "timestamp", "index" (position in the plan), "model", "tags"}],
     "drift": {"detected", "reference_medians_ms", "max_rel_dev", "tolerance"}}

``points`` are in plan order.  On error median/p90/mad are null.  Exit codes of ``main``:
0 ok, 1 result could not be written, 2 bad plan (one line on stderr), 3 runtime missing.
"""
from __future__ import annotations

import contextlib
import enum
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import numpy as np

FORMAT = "vitedge-runner/1"
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


class RuntimeMissingError(RuntimeError):
    """The requested runtime cannot be imported on this device (message names the install)."""


class PlanError(ValueError):
    """The plan is invalid; the one-line message names the problem and the fix."""


class ErrorCode(enum.IntEnum):
    """``Measurement.error_code`` values."""
    OK = 0
    RUNTIME_ERROR = 1   # the runtime raised while running the point (e.g. wrong input shape)
    TIMEOUT = 2         # the point ran past MeasureConfig.timeout_s
    INPUT_ERROR = 3     # the inputs could not be built or loaded
    SESSION_ERROR = 4   # the model could not be loaded by the runtime


@dataclass
class MeasureConfig:
    warmup: int = 5                 # untimed runs before timing
    min_runs: int = 20              # at least this many timed runs
    min_time_s: float = 0.1         # and at least this much timed wall time (s)
    max_runs: int = 100000          # hard cap on timed runs
    reference_every: int = 16       # re-measure the reference after every k points (0: ends only)
    drift_tolerance: float = 0.10   # relative change of the reference median that flags drift
    seed: int = 0                   # shuffled point order and random inputs
    timeout_s: float = 300.0        # per-point wall-time budget (s), 0 disables


@dataclass
class Measurement:
    name: str
    samples_ms: list = field(default_factory=list)
    median_ms: float | None = None
    p90_ms: float | None = None
    mad_ms: float | None = None
    runs: int = 0
    error_code: int = ErrorCode.OK
    error: str | None = None
    timestamp: float = 0.0          # time.time() when the point started

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- runtime registry
# name -> factory(model_path, threads) -> (run_fn(feeds) -> list[np.ndarray], input_specs, version)
# input_specs: [{"name": str, "shape": [int | str | None, ...], "dtype": numpy dtype name}]
_RUNTIMES: dict[str, Callable] = {}


def register_runtime(name: str, factory: Callable | None = None):
    """Register a runtime factory under ``name``; usable as a decorator.  Warns on overwrite."""
    def _register(fn: Callable) -> Callable:
        if name in _RUNTIMES:
            warnings.warn(f"overwriting runtime {name!r} in the runner registry", stacklevel=3)
        _RUNTIMES[name] = fn
        return fn
    return _register(factory) if factory is not None else _register


def available_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


_ORT_TYPES = {"float": "float32", "double": "float64"}  # other ORT names equal numpy's


@register_runtime("onnxruntime")
def _onnxruntime_factory(model_path: str, threads: int):
    """ONNX Runtime, CPUExecutionProvider, sequential, ORT_ENABLE_ALL.

    intra_op threads = ``threads`` (0: ORT's default), inter_op = 1.  Intra-op spinning is left
    on (``session.intra_op.allow_spinning = "1"``, ORT's default): idle worker threads busy-wait
    between ops, lowering latency at the cost of CPU use; set explicitly so results do not change
    silently if ORT's default does.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeMissingError("onnxruntime is not installed on this device: run "
                                  "`python3 -m pip install onnxruntime`") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    sess = ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])
    specs = [{"name": i.name, "shape": list(i.shape), "dtype": _ORT_TYPES.get(
        i.type.removeprefix("tensor(").removesuffix(")"), i.type)} for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    return (lambda feeds: sess.run(outputs, feeds)), specs, ort.__version__


class Session:
    """An opened model: ``.run(feeds) -> list[np.ndarray]``, ``.input_specs``, ``.version``."""

    def __init__(self, runtime: str, model_path: str, run_fn: Callable, input_specs: list,
                 version: str):
        self.runtime, self.model_path, self._run = runtime, model_path, run_fn
        self.input_specs, self.version = input_specs, version

    def run(self, feeds: dict) -> list:
        return list(self._run(feeds))


def open_session(runtime: str, model_path: str, threads: int = 1) -> Session:
    """Open ``model_path`` with a registered runtime.

    Raises PlanError (unknown runtime), RuntimeMissingError (runtime not importable), and
    whatever the runtime raises for an unreadable model.
    """
    if runtime not in _RUNTIMES:
        raise PlanError(f"unknown runtime {runtime!r}: use one of {available_runtimes()}")
    run_fn, specs, version = _RUNTIMES[runtime](model_path, threads)
    return Session(runtime, model_path, run_fn, specs, str(version))


# ---------------------------------------------------------------- measurement
def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:1000]


def summarize(name: str, samples_ms: list, timestamp: float, error_code: int = ErrorCode.OK,
              error: str | None = None) -> Measurement:
    """Measurement from samples (ms): median, p90 (linear), unscaled MAD; None if no samples."""
    m = Measurement(name, [float(s) for s in samples_ms], runs=len(samples_ms),
                    error_code=int(error_code), error=error, timestamp=timestamp)
    if samples_ms:
        a = np.asarray(samples_ms, dtype=np.float64)
        med = float(np.median(a))
        m.median_ms, m.p90_ms = med, float(np.percentile(a, 90))
        m.mad_ms = float(np.median(np.abs(a - med)))
    return m


def measure(run_fn: Callable[[], Any], cfg: MeasureConfig | None = None,
            name: str = "") -> Measurement:
    """Time the zero-argument ``run_fn`` per the protocol; samples in ms.

    Never raises for errors of ``run_fn``: they give error_code 1 (RUNTIME_ERROR) and no samples;
    passing ``cfg.timeout_s`` gives error_code 2 (TIMEOUT) with the samples taken so far.
    """
    cfg = cfg or MeasureConfig()
    ts, clock = time.time(), time.perf_counter_ns
    deadline = clock() + int(cfg.timeout_s * 1e9) if cfg.timeout_s > 0 else None
    min_ns = int(cfg.min_time_s * 1e9)
    samples: list[float] = []
    try:
        for _ in range(cfg.warmup):
            run_fn()
            if deadline is not None and clock() > deadline:
                return summarize(name, [], ts, ErrorCode.TIMEOUT,
                                 f"warmup exceeded timeout_s={cfg.timeout_s}")
        start = clock()
        while True:
            t0 = clock()
            run_fn()
            t1 = clock()
            samples.append((t1 - t0) / 1e6)
            if len(samples) >= cfg.max_runs or (
                    len(samples) >= cfg.min_runs and t1 - start >= min_ns):
                break
            if deadline is not None and t1 > deadline:
                return summarize(name, samples, ts, ErrorCode.TIMEOUT,
                                 f"exceeded timeout_s={cfg.timeout_s} after {len(samples)} runs")
    except Exception as e:  # noqa: BLE001 - recorded, the profile goes on
        return summarize(name, [], ts, ErrorCode.RUNTIME_ERROR, _one_line(e))
    return summarize(name, samples, ts)


def measure_feeds(session: Session, feeds_list: list, cfg: MeasureConfig | None = None,
                  name: str = "") -> Measurement:
    """Time ``session.run`` cycling round-robin through ``feeds_list`` (e.g. several images);
    warmup runs cycle too.  Samples in ms; errors recorded as in :func:`measure`."""
    if not feeds_list:
        raise ValueError("feeds_list is empty: give at least one input dict")
    feeds = itertools.cycle(feeds_list)
    return measure(lambda: session.run(next(feeds)), cfg, name)


def detect_drift(reference_medians_ms: list, tolerance: float) -> dict:
    """Drift of the reference point: max |m - median(ms)| / median(ms) over its medians (ms).

    None entries (failed reference runs) are ignored; fewer than two valid medians: no drift.
    """
    vals = [float(v) for v in reference_medians_ms if v is not None]
    center = float(np.median(vals)) if vals else 0.0
    dev = max((abs(v - center) / center for v in vals), default=0.0) if center > 0 else 0.0
    return {"detected": bool(len(vals) >= 2 and dev > tolerance),
            "reference_medians_ms": list(reference_medians_ms), "max_rel_dev": float(dev),
            "tolerance": float(tolerance)}


# ---------------------------------------------------------------- environment
def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip("\x00\n ")
    return ""


def environment(runtime: str, threads: int, runtime_version: str | None = None) -> dict:
    """Describe this device: runtime + version, threads, CPU, OS, python, numpy, hostname."""
    if runtime_version is None:  # best effort when no session was opened
        try:
            runtime_version = str(__import__(runtime).__version__)
        except Exception:  # noqa: BLE001
            pass
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.lower().startswith("model name") and ":" in ln), None)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"runtime": runtime, "runtime_version": runtime_version, "threads": threads,
            "cpu_model": cpu or platform.processor() or None, "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity, "machine": platform.machine(), "system": platform.system(),
            "release": platform.release(), "python": platform.python_version(),
            "numpy": np.__version__, "hostname": platform.node(),
            "board": _read("/proc/device-tree/model") or None,      # e.g. Raspberry Pi 4 Model B
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or None}


# ---------------------------------------------------------------- plans
def _config_from_dict(d: Any) -> MeasureConfig:
    if not isinstance(d, dict):
        raise PlanError("plan 'config' must be an object: e.g. {\"min_runs\": 20}")
    names = {f.name: f for f in fields(MeasureConfig)}
    for k, v in d.items():
        if k not in names:
            raise PlanError(f"unknown config key {k!r}: use one of {sorted(names)}")
        ok_int = isinstance(v, int) and not isinstance(v, bool)
        if not (ok_int or (names[k].type == "float" and isinstance(v, float))):
            raise PlanError(f"config {k!r} must be a {names[k].type}, got {v!r}")
    cfg = MeasureConfig(**d)
    for ok, what in ((cfg.warmup >= 0, "warmup >= 0"), (cfg.min_runs >= 1, "min_runs >= 1"),
                     (cfg.max_runs >= cfg.min_runs, "max_runs >= min_runs"),
                     (cfg.min_time_s >= 0, "min_time_s >= 0"),
                     (cfg.timeout_s >= 0, "timeout_s >= 0"),
                     (cfg.reference_every >= 0, "reference_every >= 0"),
                     (cfg.drift_tolerance > 0, "drift_tolerance > 0")):
        if not ok:
            raise PlanError(f"bad config: need {what}")
    return cfg


def validate_plan(plan: Any, base_dir: str | None = None) -> dict:
    """Check a plan and return it normalized (defaults filled, paths resolved against
    ``base_dir``, default cwd, as "model_path"/"npz_path").  Raises PlanError."""
    if not isinstance(plan, dict):
        raise PlanError("plan must be a JSON object with a 'points' list")
    base = base_dir or os.getcwd()
    runtime = plan.get("runtime", "onnxruntime")
    if runtime not in _RUNTIMES:
        raise PlanError(f"unknown runtime {runtime!r}: "
                        f"set 'runtime' to one of {available_runtimes()}")
    threads = plan.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise PlanError(f"'threads' must be an integer >= 0 (0: runtime default), got {threads!r}")
    cfg = _config_from_dict(plan.get("config", {}))
    points = plan.get("points")
    if not isinstance(points, list) or not points:
        raise PlanError("plan has no points: give a non-empty 'points' list")
    out, seen = [], set()
    for i, p in enumerate(points):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
            raise PlanError(f"point #{i} needs a non-empty string 'name'")
        name = p["name"]
        if name in seen:
            raise PlanError(f"duplicate point name {name!r}: point names must be unique")
        seen.add(name)
        if not isinstance(p.get("model"), str):
            raise PlanError(f"point {name!r} needs a 'model' path to an .onnx file")
        q = dict(p, model_path=os.path.join(base, p["model"]), tags=p.get("tags") or {})
        if not os.path.isfile(q["model_path"]):
            raise PlanError(f"point {name!r}: model file not found: {q['model_path']} "
                            "(copy it to the device or fix the path)")
        if not isinstance(q["tags"], dict):
            raise PlanError(f"point {name!r}: 'tags' must be an object")
        if "inputs_npz" in p:
            q["npz_path"] = os.path.join(base, str(p["inputs_npz"]))
            if not os.path.isfile(q["npz_path"]):
                raise PlanError(f"point {name!r}: inputs_npz not found: {q['npz_path']}")
        inputs = p.get("inputs", {})
        if not isinstance(inputs, dict):
            raise PlanError(f"point {name!r}: 'inputs' must map input names to shape/dtype")
        for iname, spec in inputs.items():
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise PlanError(f"point {name!r} input {iname!r}: 'shape' must be a list of "
                                "integers >= 0")
            if spec.get("dtype", "float32") not in DTYPES:
                raise PlanError(f"point {name!r} input {iname!r}: bad dtype "
                                f"{spec.get('dtype')!r}: use one of {list(DTYPES)}")
        out.append(q)
    reference = plan.get("reference", out[0]["name"])
    if reference not in seen:
        raise PlanError(f"reference {reference!r} is not a point name: use one of the points")
    return {"runtime": runtime, "threads": threads, "config": cfg, "points": out,
            "reference": reference}


def _make_feeds(point: dict, session: Session, rng: np.random.Generator) -> dict:
    if "npz_path" in point:
        with np.load(point["npz_path"], allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    else:
        feeds = {}
    specs = point.get("inputs") or {
        s["name"]: s for s in session.input_specs if s["name"] not in feeds}
    for iname, spec in specs.items():
        shape, dtype = spec["shape"], np.dtype(spec.get("dtype", "float32"))
        if not all(isinstance(d, int) for d in shape):
            raise ValueError(f"input {iname!r} has dynamic shape {shape}: give 'inputs' with a "
                             "concrete shape in the plan")
        feeds[iname] = (rng.standard_normal(shape).astype(dtype)
                        if dtype.kind == "f" else np.zeros(shape, dtype))
    return feeds


def run_plan(plan: dict, *, on_point: Callable[[dict], None] | None = None,
             base_dir: str | None = None,
             session_factory: Callable[[str, str, int], Session] | None = None) -> dict:
    """Profile every point of ``plan`` (see module docstring); return the result dict (ms).

    ``on_point(point_dict)`` is called once per point right after it is measured.
    ``session_factory(runtime, model_path, threads)`` defaults to :func:`open_session`.
    Raises PlanError (invalid plan) and RuntimeMissingError (runtime not importable).
    """
    p = validate_plan(plan, base_dir)
    cfg, runtime, threads, points = p["config"], p["runtime"], p["threads"], p["points"]
    factory = session_factory or open_session
    started = time.time()
    sessions: dict[str, Any] = {}  # model path -> Session or the exception opening it
    rows: dict[int, dict] = {}
    order: list[str] = []
    ref_idx = next(i for i, q in enumerate(points) if q["name"] == p["reference"])
    ref_medians: list = []

    def run_point(i: int) -> dict:
        q = points[i]
        path = os.path.abspath(q["model_path"])
        if path not in sessions:
            try:
                sessions[path] = factory(runtime, q["model_path"], threads)
            except Exception as e:  # noqa: BLE001 - recorded per point, except environment-wide
                if isinstance(e, (RuntimeMissingError, PlanError)):
                    raise
                sessions[path] = e
        sess = sessions[path]
        code, err = ErrorCode.SESSION_ERROR, sess
        if not isinstance(sess, Exception):
            try:  # same seed per plan index whatever the order: identical inputs on re-runs
                feeds = _make_feeds(q, sess, np.random.default_rng([cfg.seed, i]))
                code = None
            except Exception as e:  # noqa: BLE001
                code, err = ErrorCode.INPUT_ERROR, e
        if code is None:
            m = measure(lambda: sess.run(feeds), cfg, q["name"])
        else:
            m = Measurement(q["name"], error_code=code, error=_one_line(err),
                            timestamp=time.time())
        return dict(m.to_dict(), index=i, model=q["model"], tags=q["tags"])

    def run_reference():
        row = run_point(ref_idx)
        ref_medians.append(row["median_ms"])
        if ref_idx not in rows:
            rows[ref_idx] = row
            order.append(row["name"])
            if on_point:
                on_point(row)

    others = [i for i in range(len(points)) if i != ref_idx]
    random.Random(cfg.seed).shuffle(others)
    run_reference()
    for k, i in enumerate(others, 1):
        rows[i] = run_point(i)
        order.append(rows[i]["name"])
        if on_point:
            on_point(rows[i])
        if cfg.reference_every and k % cfg.reference_every == 0 and k < len(others):
            run_reference()
    run_reference()
    version = next((getattr(s, "version", None) for s in sessions.values()
                    if not isinstance(s, Exception)), None)
    return {"format": FORMAT, "environment": environment(runtime, threads, version),
            "config": asdict(cfg), "reference": p["reference"], "order": order,
            "points": [rows[i] for i in range(len(points))],
            "drift": detect_drift(ref_medians, cfg.drift_tolerance),
            "started": started, "finished": time.time()}


# ---------------------------------------------------------------- CLI
def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as strict JSON to ``path`` via a temp file in the same dir + os.replace."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python3 runner.py PLAN.json RESULT.json``.  Progress lines go to stderr.

    Returns 0 ok, 1 result not writable, 2 bad plan or usage, 3 runtime missing.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python3 runner.py PLAN.json RESULT.json", file=sys.stderr)
        return 2
    plan_path, result_path = args
    try:
        with open(plan_path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        print(f"runner: bad plan: cannot read {plan_path}: {_one_line(e)}", file=sys.stderr)
        return 2
    pts = plan.get("points") if isinstance(plan, dict) else None
    n = len(pts) if isinstance(pts, list) else 0
    done = []

    def progress(row: dict) -> None:
        done.append(row["name"])
        what = f"{row['median_ms']:.3f} ms" if row["error_code"] == 0 else f"error {row['error']}"
        print(f"[{len(done)}/{n}] {row['name']}: {what}", file=sys.stderr, flush=True)
    try:
        result = run_plan(plan, on_point=progress,
                          base_dir=os.path.dirname(os.path.abspath(plan_path)))
    except PlanError as e:
        print(f"runner: bad plan: {e}", file=sys.stderr)
        return 2
    except RuntimeMissingError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 3
    try:
        write_json_atomic(result_path, result)
    except OSError as e:
        print(f"runner: cannot write {result_path}: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
