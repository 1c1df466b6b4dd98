"""On-device latency runner for vitedge: ``python3 runner.py PLAN.json RESULT.json``.

Self-contained: imports only the standard library and numpy at import time; the runtime
(``onnxruntime``, LiteRT: ai-edge-litert or tflite-runtime, ...) is imported lazily when a model
is opened.  The file is
copied as-is to a Raspberry Pi / phone and must never import torch or vitedge (Python >= 3.8).

Protocol (after TVM auto_scheduler ``measure.py`` and TFLite ``benchmark_model``)
  * One session per model file, created once and reused by every point naming that file
    (a model with a dynamic token axis serves all token counts).
  * Per model file, as TFLite ``benchmark_model`` reports: the session's creation time, one first
    inference (before any warm-up, on the first point's first input set), the file size and the
    process's peak resident memory (the "footprint" section below).
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
                {"name": "img", "model": "m.onnx", "inputs_npz": "img.npz",
                 "outputs_npz": "img_out.npz"}],              # optional: save the outputs
     "runtime_options": {"binary": "./benchmark_model"}}   # optional: factory keyword arguments

``inputs`` arrays are seeded standard-normal for float dtypes and zeros otherwise;
``inputs_npz`` arrays are used as stored (loaded with allow_pickle=False); a list of npz files
is cycled round-robin (e.g. several images).  Without ``inputs``, the model's inputs that no npz
array names are filled the same way (their shapes must be static).  Feeds meet the model's inputs
by one rule, :func:`match_feeds` (the host uses it too): an input's name (LiteRT: the signature
input name), else its tensor name, else -- when no feed names an input and they are as many as the
inputs -- their order; a feed that matches no input fails the point with a one-line error
(error_code 3).  Self-timed runtimes ("benchmark_model", "command": see
"self-timed tools" below) add ``statistic`` and ``tool`` to their rows.

``runtime_options`` of "litert": ``{"interpreter": "auto" | "ai-edge-litert" | "tflite-runtime"}``
(default "auto": ai-edge-litert, else tflite-runtime); the result's ``runtime_version`` names the
one used ("tflite-runtime 2.14.0").  ``outputs_npz`` (relative to the plan file): after timing,
the model runs once per input set and its outputs are written there (see :func:`save_outputs`;
read with ``np.load(path, allow_pickle=False)``); the row gets ``outputs_npz``, or
``outputs_error`` when they could not be saved (the timing stands).

Result JSON::

    {"format": "vitedge-runner/1", "environment": {...}, "config": {...}, "reference": name,
     "order": [names in execution order], "started": unix_s, "finished": unix_s,
     "points": [{"name", "samples_ms", "median_ms", "p90_ms", "mad_ms", "runs", "error_code",
                 "error", "timestamp", "index" (position in the plan), "model", "tags"}],
     "drift": {"detected", "reference_medians_ms", "max_rel_dev", "tolerance"},
     "runtime_info": {model: {...}},    # only when a runtime reports details, e.g. LiteRT's
                                        # {"interpreter", "delegation": {"nodes", "delegate_partitions"}}
     "models": {model: {"file_bytes", "load_ms", "first_inference_ms", "rss_before_mib",
                        "peak_rss_mib", "model_rss_mib", "memory_source", "peak_isolated"}}}
                                        # per model file: see the "footprint" section

``points`` are in plan order.  On error median/p90/mad are null.  ``--progress-jsonl`` also
writes each row to stdout as ``{"point": ROW}`` when it is measured (the host's resumable
profiles).  Exit codes of ``main``: 0 ok, 1 result could not be written, 2 bad plan (one line on
stderr), 3 runtime missing, 4 the progress stream closed (the host went away).
"""
from __future__ import annotations

import contextlib
import enum
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
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
# name -> factory(model_path, threads, **runtime_options)
#         -> (run_fn(feeds) -> list[np.ndarray], input_specs, version[, info dict])
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
        i.type[len("tensor("):-1] if i.type.startswith("tensor(") else i.type, i.type)}
        for i in sess.get_inputs()]  # (no str.removeprefix: the runner keeps Python 3.8)
    outputs = [o.name for o in sess.get_outputs()]
    return (lambda feeds: sess.run(outputs, feeds)), specs, ort.__version__


LITERT_INTERPRETERS = ("auto", "ai-edge-litert", "tflite-runtime")
_LITERT_PIP = {"ai-edge-litert": "python3 -m pip install ai-edge-litert",
               "tflite-runtime": "python3 -m pip install tflite-runtime 'numpy<2'"}  # 2.14 needs numpy 1


def _import_interpreter(package: str):
    """(Interpreter class, "PACKAGE VERSION") of one TFLite interpreter package; raises what the import raises."""
    if package == "ai-edge-litert":
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert " + version("ai-edge-litert")
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter
    return Interpreter, "tflite-runtime " + getattr(tflite_runtime, "__version__", "?")


def _litert_interpreter(choice: str = "auto"):
    """(Interpreter class, version string, e.g. "tflite-runtime 2.14.0") for the "litert" runtime.

    ``choice``: "auto" (ai-edge-litert, else tflite-runtime, what Raspberry Pi guides install),
    "ai-edge-litert" or "tflite-runtime".  Raises PlanError for another choice and
    RuntimeMissingError (one line naming the pip command) when the package cannot be imported.
    """
    if choice not in LITERT_INTERPRETERS:
        raise PlanError(f"unknown LiteRT interpreter {choice!r}: set runtime_options.interpreter to one of "
                        f"{', '.join(LITERT_INTERPRETERS)}")
    failed = []
    for package in (("ai-edge-litert", "tflite-runtime") if choice == "auto" else (choice,)):
        try:
            return _import_interpreter(package)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in ("ai_edge_litert", "tflite_runtime"):
                failed.append((package, e))  # installed, but a dependency is missing
        except Exception as e:  # noqa: BLE001 - e.g. a numpy 1 build under numpy 2
            failed.append((package, e))
    if failed:
        package, e = failed[0]
        raise RuntimeMissingError(f"{package} is installed on this device but cannot be imported "
                                  f"({_one_line(e)[:200]}): run `{_LITERT_PIP[package]}`")
    if choice == "auto":
        raise RuntimeMissingError("neither ai-edge-litert nor tflite-runtime is installed on this device: run "
                                  f"`{_LITERT_PIP['ai-edge-litert']}`")
    raise RuntimeMissingError(f"{choice} is not installed on this device (LiteRT interpreter {choice!r} "
                              f"requested): run `{_LITERT_PIP[choice]}`")


def _default_delegation(interp) -> dict:
    """Coverage of the primary subgraph by the default delegate (XNNPACK), after allocate_tensors:
    {"nodes", "delegated", "delegate_partitions", "not_delegated": {op name: count}}, or {"error"}.

    The interpreter lists the original nodes, then one DELEGATE node per partition.  An original
    node still runs on its own when a tensor needed by a DELEGATE node or a graph output (walked
    back transitively) comes from it.  Uses the interpreter's private wrapper (both packages).
    """
    try:
        w = interp._interpreter
        names = [w.NodeName(i) for i in range(w.NumNodes())]
        parts = [i for i, n in enumerate(names) if n == "DELEGATE"]
        producer = {int(t): i for i, n in enumerate(names) if n != "DELEGATE" for t in w.NodeOutputs(i)}
        from_parts = {int(t) for d in parts for t in w.NodeOutputs(d)}
        todo = [int(t) for d in parts for t in w.NodeInputs(d)] + [int(t) for t in w.OutputIndices()]
    except Exception as e:  # noqa: BLE001 - a private API: report, never fail the run
        return {"error": _one_line(e)}
    own: set = set()
    while todo:
        t = todo.pop()
        node = producer.get(t)
        if node is not None and t not in from_parts and node not in own:
            own.add(node)
            todo.extend(int(v) for v in w.NodeInputs(node))
    left: dict = {}
    for i in sorted(own):
        left[names[i]] = left.get(names[i], 0) + 1
    nodes = len(names) - len(parts)
    return {"nodes": nodes, "delegated": nodes - len(own), "delegate_partitions": len(parts),
            "not_delegated": dict(sorted(left.items()))}


def litert_signature_inputs(interp) -> dict:
    """{signature key: [input spec, ...]} of an opened LiteRT/TFLite interpreter, in signature input order.

    A spec is {"name": the signature input name (e.g. "args_0"), "tensor": its tensor name (e.g.
    "serving_default_args_0:0", what ``Interpreter.get_input_details`` lists), "shape",
    "shape_signature" (-1 for a dynamic size), "dtype": numpy dtype name, and for a quantized integer input
    (full-integer int8) "quantization": [scale, zero point]}.  Used by the runner and by
    the host (``vitedge bench``) so both name a model's inputs the same way.  Only APIs that
    ai-edge-litert 1.4/2.x and tflite-runtime 2.14 share.
    """
    out = {}
    sigs = interp.get_signature_list()
    for key in sigs:
        details = interp.get_signature_runner(key).get_input_details()
        specs = []
        for n in sigs[key]["inputs"]:
            d = details[n]
            shape = [int(v) for v in d["shape"]]
            spec = {"name": n, "tensor": str(d.get("name") or n), "shape": shape,
                    "shape_signature": [int(v) for v in d.get("shape_signature", shape)],
                    "dtype": np.dtype(d["dtype"]).name}
            scale, zero = (tuple(d.get("quantization") or ()) + (0.0, 0))[:2]
            if np.dtype(d["dtype"]).kind in "iu" and scale:  # a full-integer file's quantized input
                spec["quantization"] = [float(scale), int(zero)]
            specs.append(spec)
        out[key] = specs
    return out


def match_feeds(feeds: dict, specs: list, model: str = "the model") -> dict:
    """``feeds`` keyed by the input names of ``specs``: the one rule by which feeds meet a model's inputs.

    A feed takes the input whose ``name`` equals its key (for LiteRT the signature input name, e.g.
    "args_0"), else the input whose ``tensor`` name equals it (LiteRT's tensor name, e.g.
    "serving_default_args_0", what ``Interpreter.get_input_details`` lists).  When no key names any
    input and there are as many feeds as inputs, they take the inputs in order (a plan's ONNX names
    "tokens", "scores" for a converted signature's "args_0", "args_1"; an image fed as "image" to a
    one-input model).  Inputs named by no feed are left out: the caller fills them.  No specs (a
    runtime that lists none): ``feeds`` as given.  Raises ValueError (one line) when a feed matches
    no input or two feeds match the same input.
    """
    if not specs:
        return dict(feeds)
    by_key = {s["name"]: s["name"] for s in specs}
    for s in specs:
        by_key.setdefault(s.get("tensor") or s["name"], s["name"])
    if len(feeds) == len(specs) and not any(k in by_key for k in feeds):
        return {s["name"]: v for s, v in zip(specs, feeds.values())}
    out: dict = {}
    for key, value in feeds.items():
        name = by_key.get(key)
        if name is None:
            listed = ", ".join(repr(s["name"]) + (f" (tensor {s['tensor']!r})" if s.get("tensor", s["name"]) != s["name"]
                                                  else "") for s in specs)
            raise ValueError(f"feed {key!r} matches no input of {model} (inputs: {listed}): name each feed by an "
                             f"input's name or tensor name, or give all {len(specs)} inputs in order")
        if name in out:
            raise ValueError(f"two feeds match input {name!r} of {model}: give each input once")
        out[name] = value
    return {s["name"]: out[s["name"]] for s in specs if s["name"] in out}  # in the model's input order


@register_runtime("litert")
def _litert_factory(model_path: str, threads: int, interpreter: str = "auto"):
    """LiteRT (TFLite) interpreter with its default delegate (XNNPACK in ai-edge-litert).

    ``interpreter`` (plan ``runtime_options.interpreter``): "auto" (default: ai-edge-litert, else
    tflite-runtime), "ai-edge-litert" or "tflite-runtime"; the version string names the one used.
    A model may hold several signatures (e.g. one per token count, since converted graphs have
    static shapes): each call runs the signature whose inputs take the feeds, matched by
    :func:`match_feeds`, with the feeds' shapes.  ``input_specs`` are the first signature's
    (:func:`litert_signature_inputs`).
    A full-integer file (int8 inputs with a scale and zero point) takes float32 feeds: they are quantized
    with the input's own scale and zero point, and its quantized outputs are returned dequantized (float32).
    Also returns ``info``: {"interpreter", "delegation": see :func:`_default_delegation`}.
    """
    Interpreter, version = _litert_interpreter(interpreter)
    interp = Interpreter(model_path=model_path, num_threads=int(threads) if threads else None)
    interp.allocate_tensors()  # the default delegate is applied here
    info = {"interpreter": version.split(" ")[0], "delegation": _default_delegation(interp)}
    inputs = litert_signature_inputs(interp)
    if not inputs:
        raise PlanError(f"{model_path} has no signatures: convert it with signatures (litert-torch does)")
    model = os.path.basename(model_path)
    sigs = [(interp.get_signature_runner(key), specs) for key, specs in inputs.items()]
    # feeds already named and ordered as a signature's inputs (what match_feeds returns): one lookup per run
    exact = {tuple((s["name"], tuple(s["shape"])) for s in specs): r for r, specs in sigs}

    def pick(feeds: dict):
        """(signature runner, feeds named for it): the first signature whose inputs take the feeds."""
        problem, named = None, False
        for _, specs in sigs:
            try:
                kw = match_feeds(feeds, specs, model)
            except ValueError as e:
                problem = problem or e
                continue
            named = True
            r = exact.get(tuple((k, tuple(np.shape(v))) for k, v in kw.items()))
            if r is not None:
                return r, kw
        if not named:
            raise problem
        given = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
        takes = "; ".join(", ".join(f"{x['name']} {x['shape']}" for x in specs) for _, specs in sigs)
        raise ValueError(f"no signature of {model} takes the feeds {given} (signatures take: {takes}): "
                         "feed every input of one signature, with its shape")

    # full-integer files (int8 inputs and outputs with a scale and zero point): float feeds are quantized with the
    # input's own parameters (once per feed array, outside the timed call after the first), outputs dequantized
    quant_in = {s["name"]: (s["quantization"], np.dtype(s["dtype"])) for _, specs in sigs for s in specs
                if "quantization" in s}
    quant_out = {id(r): {k: tuple(d["quantization"]) for k, d in r.get_output_details().items()
                         if np.dtype(d["dtype"]).kind in "iu" and (tuple(d.get("quantization") or ()) + (0.0,))[0]}
                 for r, _ in sigs} if quant_in else {}
    cast: dict = {}

    def quantized(name: str, v):
        if name not in quant_in or np.asarray(v).dtype.kind != "f":
            return v
        hit = cast.get(id(v))
        if hit is None or hit[0] is not v:
            (scale, zero), dtype = quant_in[name]
            info_ = np.iinfo(dtype)
            hit = cast[id(v)] = (v, np.clip(np.round(np.asarray(v) / scale) + zero, info_.min, info_.max).astype(dtype))
            if len(cast) > 256:
                cast.pop(next(iter(cast)))
        return hit[1]

    def run(feeds: dict):
        r = exact.get(tuple((k, tuple(np.shape(v))) for k, v in feeds.items()))
        if r is None:
            r, feeds = pick(feeds)
        if quant_in:
            feeds = {k: quantized(k, v) for k, v in feeds.items()}
        out = r(**feeds)
        deq = quant_out.get(id(r)) or {}
        return [(out[k].astype(np.float32) - deq[k][1]) * deq[k][0] if k in deq else out[k] for k in sorted(out)]

    return run, next(iter(inputs.values())), version, info


class Session:
    """An opened model: ``.run(feeds) -> list[np.ndarray]``, ``.input_specs``, ``.version``, ``.info``
    (runtime details, e.g. the LiteRT interpreter and its delegation; {} if none).

    Self-timed runtimes (external tools, see :class:`ToolSession`) also have
    ``measure_point(point, cfg) -> (Measurement, extra row fields)``, used instead of the timed loop.
    """

    measure_point = None

    def __init__(self, runtime: str, model_path: str, run_fn: Callable, input_specs: list,
                 version: str, info: dict | None = None):
        self.runtime, self.model_path, self._run = runtime, model_path, run_fn
        self.input_specs, self.version, self.info = input_specs, version, dict(info or {})

    def run(self, feeds: dict) -> list:
        return list(self._run(feeds))


def open_session(runtime: str, model_path: str, threads: int = 1,
                 options: dict | None = None) -> Session:
    """Open ``model_path`` with a registered runtime.

    ``options`` (the plan's ``runtime_options``) are passed to the factory as keyword arguments
    (e.g. ``binary`` for "benchmark_model", ``template`` for "command").  A factory may return a
    ready :class:`Session` (self-timed tools) instead of ``(run_fn, input_specs, version[, info])``.

    Raises PlanError (unknown runtime), RuntimeMissingError (runtime not importable), and
    whatever the runtime raises for an unreadable model.
    """
    if runtime not in _RUNTIMES:
        raise PlanError(f"unknown runtime {runtime!r}: use one of {available_runtimes()}")
    made = _RUNTIMES[runtime](model_path, threads, **(options or {}))
    if isinstance(made, Session):
        return made
    run_fn, specs, version, *info = made
    return Session(runtime, model_path, run_fn, specs, str(version), info[0] if info else None)


# ---------------------------------------------------------------- self-timed tools
# Runtimes that time themselves: an external program does its own warm-up and timed runs and
# prints statistics; the runner builds its argument list (never a shell line), runs it and parses
# its output.  ``execute(argv, timeout_s) -> (returncode, output)`` runs the program; by default on
# this machine (:func:`run_argv`), over ``adb shell`` when the host drives a phone without Python.
#
# "benchmark_model": TFLite's benchmark tool (tensorflow/lite/tools/benchmark).  Flags used:
#   --graph --num_threads --warmup_runs --warmup_min_secs=0 --num_runs (= min_runs)
#   --min_secs (= min_time_s) --max_secs (= timeout_s) [--input_layer --input_layer_shape]
#   plus the user's ``args``.  Parsed: the summary line, either
#   "Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3,
#    Inference (avg): 14575.2" or the older "Average inference timings in us: Warmup: 83235,
#   Init: 38467, Inference: 79760.9", and the last "count=50 first=.. curr=.. min=.. max=..
#   avg=.. std=.. [p5=.. median=.. p95=..]" line before it.  The tool reports no per-run samples:
#   ``median_ms`` is its median when printed, else its mean (``statistic`` says which);
#   ``p90_ms`` is its p95, else its max (an upper bound of the p90); ``samples_ms`` is empty;
#   the parsed numbers are kept in the row's ``tool`` field.
#
# "command": a user command template for vendor stacks (e.g. Vitis AI on a ZCU102), a list of
#   arguments with placeholders {model} {threads} {warmup} {runs} {min_time} {timeout} {name}
#   {input_names} ("tokens,scores") {input_shapes} ("1,65,64:1,64").  It must print (stdout,
#   anywhere among other lines) one JSON line, the last one wins:
#       {"vitedge": 1, "samples_ms": [1.92, 1.90, ...], "median_ms": 1.91, "version": "vart-3.5"}
#   "vitedge": 1 is required; "samples_ms" (per-run times in ms, >= 1) and/or "median_ms";
#   optional "p90_ms" and "version".  With samples, median/p90/MAD are computed from them.
COMMAND_JSON_KEY = "vitedge"
_SUMMARY_NEW = re.compile(r"Inference timings in us: Init: (?P<init>[\d.eE+-]+), First inference: "
                          r"(?P<first>[\d.eE+-]+), Warmup \(avg\): (?P<warmup>[\d.eE+-]+), "
                          r"Inference \(avg\): (?P<avg>[\d.eE+-]+)")
_SUMMARY_OLD = re.compile(r"Average inference timings in us: Warmup: (?P<warmup>[\d.eE+-]+), "
                          r"Init: (?P<init>[\d.eE+-]+), Inference: (?P<avg>[\d.eE+-]+)")
_MEMORY_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init=(?P<init>[\d.eE+-]+) "
                           r"overall=(?P<overall>[\d.eE+-]+)")
_MEMORY_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>[\d.eE+-]+)")
_STAT_PAIR = re.compile(r"\b(count|first|curr|min|max|avg|std|p5|median|p95)=([\d.eE+-]+)")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")
TEMPLATE_KEYS = ("model", "threads", "warmup", "runs", "min_time", "timeout", "name",
                 "input_names", "input_shapes")


def run_argv(argv: list, timeout_s: float | None = None) -> tuple:
    """Run ``argv`` (a list, no shell) here; returns (returncode, stdout + stderr text)."""
    try:
        p = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=timeout_s or None)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        return -9, out + f"\n(timed out after {timeout_s} s)"
    except OSError as e:
        return 127, _one_line(e)
    return p.returncode, p.stdout


def _num(v: str) -> float:
    return float(v)


def parse_benchmark_model(text: str) -> dict:
    """Statistics (us) from benchmark_model's output; raises ValueError if it has no timings."""
    lines = text.replace("\r", "").splitlines()
    summary, at = None, None
    for i, ln in enumerate(lines):
        m = _SUMMARY_NEW.search(ln) or _SUMMARY_OLD.search(ln)
        if m:
            summary, at = m, i
    if summary is None:
        tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")
        raise ValueError("no 'Inference timings in us' line in benchmark_model output; "
                         f"last line: {tail[:300]}")
    out = {"init_us": _num(summary["init"]), "warmup_avg_us": _num(summary["warmup"]),
           "avg_us": _num(summary["avg"])}
    if "first" in summary.groupdict():
        out["first_us"] = _num(summary["first"])
    for ln in lines:  # optional memory lines (MB), printed after the summary by newer builds
        m = _MEMORY_DELTA.search(ln) or _MEMORY_PEAK.search(ln)
        if m and "peak" in m.groupdict():
            out["peak_memory_mb"] = _num(m["peak"])
        elif m:
            out["memory_delta_mb"] = _num(m["overall"])
    for ln in reversed(lines[:at]):
        pairs = dict(_STAT_PAIR.findall(ln))
        if "count" in pairs and "avg" in pairs:
            names = {"count": "count", "first": "first_timed_us"}  # "first_us": the summary's first inference
            out.update({names.get(k, f"{k}_us"): (int(_num(v)) if k == "count" else _num(v))
                        for k, v in pairs.items()})
            out["avg_us"] = _num(summary["avg"])  # the summary line is authoritative
            break
    return out


def _tool_measurement(name: str, ts: float, stats: dict, label: str) -> tuple:
    med = stats.get("median_us", stats["avg_us"])
    p90 = stats.get("p95_us", stats.get("max_us", med))
    m = Measurement(name, [], median_ms=med / 1000, p90_ms=p90 / 1000, mad_ms=None,
                    runs=int(stats.get("count", 0)), timestamp=ts)
    statistic = "median" if "median_us" in stats else "mean"
    return m, {"statistic": statistic, "tool": dict(stats, name=label)}


def parse_command_output(text: str) -> dict:
    """The last ``{"vitedge": 1, ...}`` JSON line of a "command" runtime's output (checked)."""
    found = None
    for ln in text.replace("\r", "").splitlines():
        ln = ln.strip()
        if ln.startswith("{") and f'"{COMMAND_JSON_KEY}"' in ln:
            try:
                d = json.loads(ln)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get(COMMAND_JSON_KEY) == 1:
                found = d
    if found is None:
        raise ValueError('the command printed no {"vitedge": 1, "samples_ms": [...]} JSON line')
    samples = found.get("samples_ms")
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and 0 <= v < 1e12  # noqa: E731
    if samples is not None and not (isinstance(samples, list) and samples and all(ok(v) for v in samples)):
        raise ValueError("'samples_ms' must be a non-empty list of numbers >= 0 (ms)")
    if samples is None and not ok(found.get("median_ms")):
        raise ValueError("the JSON line needs 'samples_ms' or a number 'median_ms'")
    return found


def _input_strings(inputs: dict) -> tuple:
    names = ",".join(inputs)
    shapes = ":".join(",".join(str(d) for d in spec["shape"]) for spec in inputs.values())
    return names, shapes


def fill_template(template: list, values: dict) -> list:
    """Substitute {key} placeholders in each argument; an unknown key raises PlanError."""
    def sub(m):
        if m.group(1) not in values:
            raise PlanError(f"unknown placeholder {{{m.group(1)}}} in the command template: "
                            f"use {', '.join('{' + k + '}' for k in TEMPLATE_KEYS)}")
        return str(values[m.group(1)])
    return [_PLACEHOLDER.sub(sub, str(a)) for a in template]


def benchmark_model_argv(binary: str, model_path: str, threads: int, cfg: "MeasureConfig",
                         inputs: dict | None = None, args=()) -> list:
    """benchmark_model's argument list for one point (see the section comment)."""
    argv = [binary, f"--graph={model_path}", f"--num_threads={threads if threads > 0 else -1}",
            f"--warmup_runs={cfg.warmup}", "--warmup_min_secs=0", f"--num_runs={cfg.min_runs}",
            f"--min_secs={cfg.min_time_s:g}"]
    if cfg.timeout_s > 0:
        argv.append(f"--max_secs={cfg.timeout_s:g}")
    if inputs:
        names, shapes = _input_strings(inputs)
        argv += [f"--input_layer={names}", f"--input_layer_shape={shapes}"]
    return argv + [str(a) for a in args]


def _file_version(label: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f"{label}-{hashlib.sha256(f.read()).hexdigest()[:12]}"
    except OSError:
        return label


class ToolSession(Session):
    """A self-timed runtime: ``measure_point`` runs the tool once per point (see above)."""

    def __init__(self, runtime: str, model_path: str, threads: int, argv_fn: Callable,
                 parse_fn: Callable, version: str, execute: Callable = run_argv):
        super().__init__(runtime, model_path, self._no_run, [], version)
        self.threads, self.argv_fn, self.parse_fn, self.execute = threads, argv_fn, parse_fn, execute

    def _no_run(self, feeds):
        raise RuntimeError(f"{self.runtime} times itself: it runs whole points, not single feeds")

    def measure_point(self, point: dict, cfg: "MeasureConfig") -> tuple:
        ts, name = time.time(), point["name"]
        try:
            argv = self.argv_fn(point, cfg)
        except PlanError:
            raise
        except Exception as e:  # noqa: BLE001
            return Measurement(name, error_code=ErrorCode.INPUT_ERROR, error=_one_line(e),
                               timestamp=ts), {}
        rc, out = self.execute(argv, cfg.timeout_s if cfg.timeout_s > 0 else None)
        if rc != 0:
            tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-2:]) or "no output"
            code = ErrorCode.TIMEOUT if rc == -9 else ErrorCode.RUNTIME_ERROR
            return Measurement(name, error_code=code, error=f"{self.runtime} exited with {rc}: "
                               f"{tail}"[:1000], timestamp=ts), {}
        try:
            return self.parse_fn(name, ts, out)
        except ValueError as e:
            return Measurement(name, error_code=ErrorCode.RUNTIME_ERROR, error=_one_line(e),
                               timestamp=ts), {}


def _resolve_binary(binary: str, label: str, hint: str) -> str:
    found = binary if os.sep in binary else shutil.which(binary)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise RuntimeMissingError(f"{label} not found or not executable at {binary!r} on this "
                                  f"device: {hint}")
    return found


@register_runtime("benchmark_model")
def _benchmark_model_factory(model_path: str, threads: int, binary: str = "benchmark_model",
                             args=(), execute: Callable | None = None, version: str | None = None):
    """TFLite's benchmark_model binary (path supplied by the user, ``binary``); self-timed."""
    if execute is None:  # on this machine: the binary must be here
        binary = _resolve_binary(binary, "benchmark_model", "download TFLite's prebuilt "
                                 "benchmark_model for this CPU and pass its path (device option "
                                 "benchmark_model=PATH)")
        version = version or _file_version("benchmark_model", binary)
    if not model_path.endswith(".tflite"):
        raise ValueError(f"benchmark_model runs .tflite models, not {os.path.basename(model_path)}")
    return ToolSession(
        "benchmark_model", model_path, threads,
        lambda point, cfg: benchmark_model_argv(binary, model_path, threads, cfg,
                                                point.get("inputs"), args),
        lambda name, ts, out: _tool_measurement(name, ts, parse_benchmark_model(out),
                                                "benchmark_model"),
        version or "benchmark_model", execute or run_argv)


def _command_measurement(name: str, ts: float, out: str) -> tuple:
    d = parse_command_output(out)
    if d.get("samples_ms"):
        m = summarize(name, d["samples_ms"], ts)
    else:
        med = float(d["median_ms"])
        m = Measurement(name, [], median_ms=med, p90_ms=float(d.get("p90_ms", med)), runs=1,
                        timestamp=ts)
    return m, {"statistic": "median", "tool": {"name": "command", "version": d.get("version")}}


@register_runtime("command")
def _command_factory(model_path: str, threads: int, template=(), execute: Callable | None = None,
                     version: str | None = None):
    """A user command template (vendor stacks); self-timed, prints the documented JSON line."""
    template = list(template)
    if not template:
        raise PlanError("the command runtime needs a template: set runtime_options.template "
                        "(device option command='prog --model {model} --runs {runs}')")
    if execute is None:
        _resolve_binary(str(template[0]), f"command {template[0]!r}",
                        "install it on the device or fix the command template")

    def argv(point, cfg):
        names, shapes = _input_strings(point.get("inputs") or {})
        return fill_template(template, {
            "model": model_path, "threads": threads, "warmup": cfg.warmup, "runs": cfg.min_runs,
            "min_time": f"{cfg.min_time_s:g}", "timeout": f"{cfg.timeout_s:g}",
            "name": point["name"], "input_names": names, "input_shapes": shapes})
    return ToolSession("command", model_path, threads, argv, _command_measurement,
                       version or f"command-{os.path.basename(str(template[0]))}",
                       execute or run_argv)


# ---------------------------------------------------------------- footprint
# What TFLite's benchmark_model reports besides the steady state, per model file: its size, the time
# to create the session (``load_ms``: read, graph optimisation, delegate), the first inference
# (``first_inference_ms``, one run before any warm-up: lazy allocation and packing), and the memory
# of the process that runs it.  Memory (MiB) comes from /proc/self/status on Linux: ``rss_before_mib``
# (VmRSS just before the session is created) and ``peak_rss_mib`` (VmHWM, the process's peak, reset
# to the current RSS before each model by writing "5" to /proc/self/clear_refs, so each model's peak
# is its own); ``model_rss_mib`` = peak - before is what loading and running this model added.
# Where the peak cannot be reset the peak is the process's since it started and ``model_rss_mib``
# is None; without /proc (macOS) the peak is getrusage's ru_maxrss and the source says so; with
# neither the values are None.  ``memory_source`` names what was read.  Under qemu-user the numbers
# are the emulator process's.
MIB = 1024.0 * 1024.0


def memory_status() -> dict:
    """This process's resident memory: {"rss_mib": now, "peak_rss_mib": peak, "source"} in MiB.

    ``source``: "VmHWM" (Linux /proc/self/status), "ru_maxrss" (getrusage: peak only, rss None) or
    None (neither available: both None).  Never raises.
    """
    text = _read("/proc/self/status")
    kib = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+)\s+kB", text, re.M))
    if "VmHWM" in kib:
        return {"rss_mib": int(kib.get("VmRSS", 0)) / 1024.0, "peak_rss_mib": int(kib["VmHWM"]) / 1024.0,
                "source": "VmHWM"}
    try:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        scale = MIB if sys.platform == "darwin" else 1024.0
        return {"rss_mib": None, "peak_rss_mib": peak / scale, "source": "ru_maxrss"}
    except (ImportError, OSError, ValueError):
        return {"rss_mib": None, "peak_rss_mib": None, "source": None}


def reset_peak_memory() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def import_runtime(runtime: str, options: dict | None = None) -> None:
    """Import the runtime's package now, untimed, so that the first model's ``load_ms`` and memory do not
    include it (benchmark_model's Init excludes process start too).  Best effort: never raises (opening
    the model reports a missing runtime)."""
    with contextlib.suppress(Exception):
        if runtime == "onnxruntime":
            import onnxruntime  # noqa: F401
        elif runtime == "litert":
            _litert_interpreter((options or {}).get("interpreter", "auto"))


def load_model(open_fn: Callable[[], Any], model_path: str) -> tuple:
    """Call ``open_fn()`` (which creates the session of ``model_path``) timed, with the peak memory reset
    first; returns (session, footprint dict, see the section comment).  Raises what ``open_fn`` raises."""
    isolated = reset_peak_memory()
    before = memory_status()
    t0 = time.perf_counter_ns()
    session = open_fn()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    try:
        size = os.path.getsize(model_path)
    except OSError:
        size = None
    return session, {"file_bytes": size, "load_ms": load_ms, "first_inference_ms": None,
                     "rss_before_mib": before["rss_mib"], "peak_rss_mib": before["peak_rss_mib"],
                     "model_rss_mib": None, "memory_source": before["source"], "peak_isolated": isolated}


def first_inference(session, feeds: dict, footprint: dict) -> None:
    """Time one run of ``session`` on ``feeds`` into ``footprint["first_inference_ms"]`` (once; an error
    leaves it None: the timed runs that follow record it)."""
    if footprint.get("first_inference_ms") is not None:
        return
    t0 = time.perf_counter_ns()
    try:
        session.run(feeds)
    except Exception:  # noqa: BLE001 - the measurement records the runtime's error
        return
    footprint["first_inference_ms"] = (time.perf_counter_ns() - t0) / 1e6


def update_peak(footprint: dict) -> dict:
    """Read the peak RSS into ``footprint`` (and model_rss_mib where the peak was reset); returns it."""
    now = memory_status()
    if now["peak_rss_mib"] is not None:
        footprint["peak_rss_mib"] = max(now["peak_rss_mib"], footprint.get("peak_rss_mib") or 0.0)
        before = footprint.get("rss_before_mib")
        if footprint.get("peak_isolated") and before is not None:
            footprint["model_rss_mib"] = max(footprint["peak_rss_mib"] - before, 0.0)
    return footprint


def tool_footprint(model_path: str, tool: dict) -> dict:
    """The footprint a self-timed tool reported (benchmark_model: Init, First inference, peak memory)."""
    try:
        size = os.path.getsize(model_path)
    except OSError:
        size = None
    us = lambda k: tool[k] / 1000.0 if isinstance(tool.get(k), (int, float)) else None  # noqa: E731
    peak = tool.get("peak_memory_mb")
    return {"file_bytes": size, "load_ms": us("init_us"), "first_inference_ms": us("first_us"),
            "rss_before_mib": None, "peak_rss_mib": peak, "model_rss_mib": tool.get("memory_delta_mb"),
            "memory_source": tool.get("name") if peak is not None else None, "peak_isolated": peak is not None}


def measure_file(session_fn: Callable[[], Any], model_path: str, feeds_list: list, cfg: "MeasureConfig | None" = None,
                 name: str = "model") -> dict:
    """Open a model (``session_fn()``), run it once (first inference), time it cycling through
    ``feeds_list`` (:func:`measure_feeds`); the Measurement dict with ``footprint`` added.
    Raises what opening the model raises (RuntimeMissingError, the runtime's load error)."""
    session, fp = load_model(session_fn, model_path)
    if feeds_list:
        with contextlib.suppress(ValueError):
            first_inference(session, _named_feeds(session, feeds_list[0]), fp)
    m = measure_feeds(session, feeds_list, cfg, name).to_dict()
    m["footprint"] = update_peak(fp)
    m["runtime_version"] = getattr(session, "version", None)
    return m


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
    try:  # named once per input set, outside the timed runs
        feeds_list = [_named_feeds(session, f) for f in feeds_list]
    except ValueError as e:
        return Measurement(name, error_code=ErrorCode.INPUT_ERROR, error=_one_line(e), timestamp=time.time())
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
    options = dict(plan.get("runtime_options") or {})
    if not isinstance(plan.get("runtime_options") or {}, dict):
        raise PlanError("'runtime_options' must be an object, e.g. {\"binary\": \"./benchmark_model\"}")
    if isinstance(options.get("binary"), str) and os.path.isfile(os.path.join(base, options["binary"])):
        options["binary"] = os.path.abspath(os.path.join(base, options["binary"]))  # shipped with the plan
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
        if "inputs_npz" in p:  # one file, or a list of files cycled round-robin (e.g. images)
            many = isinstance(p["inputs_npz"], list)
            paths = [os.path.join(base, str(x)) for x in (p["inputs_npz"] if many else [p["inputs_npz"]])]
            if not paths:
                raise PlanError(f"point {name!r}: 'inputs_npz' is an empty list")
            for path in paths:
                if not os.path.isfile(path):
                    raise PlanError(f"point {name!r}: inputs_npz not found: {path}")
            q["npz_path"] = paths[0]
            if many:
                q["npz_paths"] = paths
        if "outputs_npz" in p:
            if not isinstance(p["outputs_npz"], str) or not p["outputs_npz"].endswith(".npz"):
                raise PlanError(f"point {name!r}: 'outputs_npz' must be a file name ending in .npz")
            q["outputs_path"] = os.path.join(base, p["outputs_npz"])
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
            "reference": reference, "runtime_options": options}


def _named_feeds(session, feeds: dict) -> dict:
    """``feeds`` keyed by ``session``'s input names (:func:`match_feeds`; ValueError when one matches none)."""
    model = os.path.basename(getattr(session, "model_path", "") or "") or "the model"
    return match_feeds(feeds, getattr(session, "input_specs", None) or [], model)


def _random_input(iname: str, spec: dict, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = spec["shape"], np.dtype(spec.get("dtype", "float32"))
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"input {iname!r} has dynamic shape {shape}: give 'inputs' with a "
                         "concrete shape in the plan")
    return rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)


def _make_feeds(point: dict, session: Session, rng: np.random.Generator) -> dict:
    """The feeds of one input set: the npz arrays and the plan's ``inputs`` (generated), named by
    :func:`match_feeds`; without ``inputs``, the session's inputs no feed names are generated."""
    if point.get("npz_path"):
        with np.load(point["npz_path"], allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    else:
        feeds = {}
    explicit = point.get("inputs") or {}
    for iname, spec in explicit.items():
        feeds[iname] = _random_input(iname, spec, rng)
    feeds = _named_feeds(session, feeds)
    if not explicit:
        for spec in session.input_specs:
            if spec["name"] not in feeds:
                feeds[spec["name"]] = _random_input(spec["name"], spec, rng)
    return feeds


def save_outputs(session: Session, feeds_list: list, path: str) -> None:
    """Run ``session`` once per input set and write ``path`` (.npz, atomic, no pickle):
    ``out{k}`` = output k of every input set stacked, shape (len(feeds_list), *output k's shape),
    in the runtime's output order (LiteRT: signature output names sorted).  Raises what the
    runtime raises, ValueError when an output's shape differs between input sets, OSError."""
    outs = [[np.asarray(o) for o in session.run(f)] for f in feeds_list]
    arrays = {f"out{k}": np.stack([o[k] for o in outs]) for k in range(len(outs[0]))}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def run_plan(plan: dict, *, on_point: Callable[[dict], None] | None = None,
             base_dir: str | None = None,
             session_factory: Callable[[str, str, int], Session] | None = None) -> dict:
    """Profile every point of ``plan`` (see module docstring); return the result dict (ms).

    ``on_point(point_dict)`` is called once per point right after it is measured.
    ``session_factory(runtime, model_path, threads)`` defaults to :func:`open_session` (with the
    plan's ``runtime_options``).
    Raises PlanError (invalid plan) and RuntimeMissingError (runtime not importable).
    """
    p = validate_plan(plan, base_dir)
    cfg, runtime, threads, points = p["config"], p["runtime"], p["threads"], p["points"]
    options = p["runtime_options"]
    factory = session_factory or (lambda rt, path, th: open_session(rt, path, th, options))
    started = time.time()
    if session_factory is None:
        import_runtime(runtime, options)
    sessions: dict[str, Any] = {}  # model path -> Session or the exception opening it
    footprints: dict[str, dict] = {}  # model path -> load time, first inference, memory (see "footprint")
    rows: dict[int, dict] = {}
    order: list[str] = []
    ref_idx = next(i for i, q in enumerate(points) if q["name"] == p["reference"])
    ref_medians: list = []
    saved: set = set()  # points whose outputs_npz is written

    def run_point(i: int) -> dict:
        q = points[i]
        path = os.path.abspath(q["model_path"])
        if path not in sessions:
            try:
                sessions[path], fp = load_model(lambda: factory(runtime, q["model_path"], threads), q["model_path"])
                footprints[path] = fp
            except Exception as e:  # noqa: BLE001 - recorded per point, except environment-wide
                if isinstance(e, (RuntimeMissingError, PlanError)):
                    raise
                sessions[path] = e
        sess = sessions[path]
        if getattr(sess, "measure_point", None) is not None:  # self-timed tool
            m, extra = sess.measure_point(q, cfg)
            if isinstance(extra.get("tool"), dict) and not footprints.get(path, {}).get("from_tool"):
                footprints[path] = dict(tool_footprint(q["model_path"], extra["tool"]), from_tool=True)  # its own timing
            if q.get("outputs_path"):
                extra = dict(extra, outputs_error=f"{runtime} times itself: it returns no outputs")
            return dict(m.to_dict(), **extra, index=i, model=q["model"], tags=q["tags"])
        code, err = ErrorCode.SESSION_ERROR, sess
        if not isinstance(sess, Exception):
            try:  # same seed per plan index whatever the order: identical inputs on re-runs
                rng = np.random.default_rng([cfg.seed, i])
                feeds_list = [_make_feeds(dict(q, npz_path=f), sess, rng)
                              for f in q.get("npz_paths") or [q.get("npz_path")]]
                code = None
            except Exception as e:  # noqa: BLE001
                code, err = ErrorCode.INPUT_ERROR, e
        extra = {}
        if code is None and path in footprints:
            with contextlib.suppress(ValueError):  # a feed naming no input: the timed runs report it
                first_inference(sess, _named_feeds(sess, feeds_list[0]), footprints[path])
        if code is None and len(feeds_list) == 1:
            feeds = feeds_list[0]
            m = measure(lambda: sess.run(feeds), cfg, q["name"])
        elif code is None:  # several input sets: cycled round-robin, warm-up included
            m = measure_feeds(sess, feeds_list, cfg, q["name"])
        else:
            m = Measurement(q["name"], error_code=code, error=_one_line(err),
                            timestamp=time.time())
        if path in footprints:
            update_peak(footprints[path])
        if code is None and q.get("outputs_path") and i not in saved:
            try:
                save_outputs(sess, feeds_list, q["outputs_path"])
                saved.add(i)
                extra["outputs_npz"] = q["outputs_npz"]
            except Exception as e:  # noqa: BLE001 - the timing stands; the row says why
                extra["outputs_error"] = _one_line(e)
        return dict(m.to_dict(), **extra, index=i, model=q["model"], tags=q["tags"])

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
    model_of = {os.path.abspath(q["model_path"]): q["model"] for q in points}
    info = {model_of[k]: s.info for k, s in sessions.items() if getattr(s, "info", None)}
    return {"format": FORMAT, "environment": environment(runtime, threads, version),
            "config": asdict(cfg), "reference": p["reference"], "order": order,
            "points": [rows[i] for i in range(len(points))],
            "drift": detect_drift(ref_medians, cfg.drift_tolerance),
            **({"runtime_info": info} if info else {}),
            "models": {model_of[k]: {x: v for x, v in fp.items() if x != "from_tool"} for k, fp in footprints.items()},
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
    """CLI: ``python3 runner.py [--progress-jsonl] PLAN.json RESULT.json``.  Progress lines go
    to stderr.  With ``--progress-jsonl`` each measured point is also written to stdout, as soon
    as it is measured, as one JSON line ``{"point": ROW}`` (ROW as in the result's ``points``) and
    flushed: the host saves it (resumable profiles), so nothing measured is lost with the link.

    Returns 0 ok, 1 result not writable, 2 bad plan or usage, 3 runtime missing, 4 the progress
    stream was closed (the host went away; measuring stops).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    jsonl = "--progress-jsonl" in args
    args = [a for a in args if a != "--progress-jsonl"]
    if len(args) != 2:
        print("usage: python3 runner.py [--progress-jsonl] PLAN.json RESULT.json", file=sys.stderr)
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
        if jsonl:
            try:
                sys.stdout.write(json.dumps({"point": row}, allow_nan=False) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # the host is gone: stop, quietly (no flush at exit)
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise SystemExit(4) from None
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
