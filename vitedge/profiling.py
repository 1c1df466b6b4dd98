"""Profile a model's parts on a device into a :class:`~vitedge.tables.latency.LatencyTable` (SPViT §3.4).

The parts are exported once with a dynamic token axis; the device's runner times each part at every
token count n (shuffled order, reference point re-measured for drift, raw samples kept).
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .devices import Device, DeviceError
from .devices.runner import detect_drift
from .devices.runtimes import has_dynamic_shapes, profile_format
from .errors import DeviceFailure
from .footprint import table_footprint
from .exporters.graphs import export_parts
from .models.adapter import PrunableViT
from .partial import PartialProfile, fingerprint
from .precision import describe
from .tables.latency import FIXED, IN_GRAPH, IN_GRAPH_REPEATS, PARTS, LatencyTable


class ProfileError(RuntimeError):
    """A part could not be measured on the device."""


class PartsFailedError(ProfileError, DeviceFailure):
    """Parts failed while being measured on the device (exit 4); the message names the device."""


def model_shape(model: PrunableViT) -> dict:
    """The shape facts a latency table is valid for, plus an architecture hash (weights excluded)."""
    arch = hashlib.sha256(repr(model.vit).encode()).hexdigest()[:16]
    return {"dim": model.dim, "num_heads": model.num_heads, "mlp_ratio": round(model.mlp_ratio, 4),
            "depth": model.depth, "num_tokens": model.num_tokens, "num_prefix": model.num_prefix,
            "input_size": list(model.input_size), "arch_hash": arch}


def token_grid(model: PrunableViT, runtime: str, step: int | None = None) -> list[int]:
    """Token counts to measure: every n for ONNX Runtime (one dynamic-shape graph serves all);
    for static-shape runtimes (LiteRT: one signature per n, ~1-2 s of conversion each) every
    ``step``-th n (default: about 33 points), always including 1, p + 1 and N."""
    N, p = model.num_tokens, model.num_prefix
    if step is None:
        step = 1 if has_dynamic_shapes(runtime) else max(1, round(N / 32))
    return sorted(set(range(1, N + 1, step)) | {1, min(p + 1, N), N})


def build_plan(model: PrunableViT, files: dict, tokens: list[int]) -> dict:
    """Runner plan: every profiled part at every n of ``tokens`` (selectors from n = p + 1), fixed parts once, and
    the in-graph reference (:data:`~vitedge.tables.latency.IN_GRAPH`) at two n, ``IN_GRAPH_REPEATS`` times each,
    when ``files`` has it.

    Args:
        files: {(part, n or None): model file} from the exporter.
    """
    from .exporters.graphs import in_graph_tokens, min_tokens, part_inputs

    N = model.num_tokens
    parts = sorted({part for part, _ in files if part in PARTS}, key=PARTS.index)
    points = []
    for part in parts:
        for n in tokens:
            if n < min_tokens(model, part):
                continue
            path = files.get((part, n)) or files[(part, None)]
            inputs = {k: {"shape": list(v), "dtype": "float32"} for k, v in part_inputs(model, part, n).items()}
            points.append({"name": f"{part}@{n}", "model": str(path), "inputs": inputs, "tags": {"part": part, "tokens": n}})
    for part in FIXED:
        inputs = {k: {"shape": list(v), "dtype": "float32"} for k, v in part_inputs(model, part, N).items()}
        points.append({"name": part, "model": str(files[(part, None)]), "inputs": inputs, "tags": {"part": part}})
    for n in in_graph_tokens(model, tokens) if any(q == IN_GRAPH for q, _ in files) else []:
        path = files.get((IN_GRAPH, n)) or files[(IN_GRAPH, None)]
        inputs = {k: {"shape": list(v), "dtype": "float32"} for k, v in part_inputs(model, IN_GRAPH, n).items()}
        points += [{"name": f"{IN_GRAPH}@{n}#{k}", "model": str(path), "inputs": inputs,
                    "tags": {"part": IN_GRAPH, "tokens": n, "repeat": k}} for k in range(IN_GRAPH_REPEATS)]
    return {"points": points, "reference": f"attention@{N}"}


def profile(model: PrunableViT, device: Device, *, model_name: str = "", progress: bool = True,
            workdir: str | Path | None = None, tokens_step: int | None = None,
            partial: str | Path | None = None, resume: bool = False, precision: str = "fp32",
            quantization: str = "static") -> LatencyTable:
    """Measure the latency table of ``model`` on ``device``.

    With ``partial`` (a path, e.g. ``OUT.partial.jsonl``) every point is saved there as soon as it
    is measured (:mod:`vitedge.partial`); ``resume`` continues from such a file, measuring only the
    points it lacks (the reference point is measured again for the drift check).  The caller
    deletes the file once the table is saved.

    The parts are exported in the device runtime's format (ONNX for onnxruntime; TFLite for litert,
    where the threshold selector cannot exist and token counts are measured on a grid).
    ``precision`` ("fp32", "fp16", "int8"; ``quantization`` "static" or "dynamic" for int8): the part files are
    quantized as the exported model is (:func:`vitedge.quantized.quantize_part_files`), so the table predicts the
    quantized graph; the table's ``meta`` records it.

    Returns:
        A table with, for n = 1..N, median/p90 (ms) of the attention, selector(s) and MLP parts
        (interpolated between measured n when measured on a grid; raw samples of measured n kept),
        and the fixed parts (embed, head, run overhead).

    Raises:
        ProfileError: a part failed on the device (the runner's error is named).
        DeviceError / RuntimeMissingError / TFLiteUnavailableError: from the device or exporter.
    """
    fmt = profile_format(device.runtime)
    if fmt is None:
        raise ProfileError(f"profiling with runtime {device.runtime!r} is not supported: use onnxruntime or litert")
    tokens = token_grid(model, device.runtime, tokens_step)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="vitedge-parts-") as tmp:
        folder = Path(workdir) if workdir else Path(tmp)
        if fmt == "onnx":
            files = export_parts(model, folder, tokens=tokens)
        else:
            from .exporters.tflite import export_parts_tflite

            files = export_parts_tflite(model, folder, tokens)
        if precision != "fp32":  # the parts at the exported model's precision (vitedge.quantized)
            from .quantized import quantize_part_files

            quantize_part_files(files, model, fmt=fmt, precision=precision, method=quantization)
        export_s = time.time() - t0
        plan = build_plan(model, files, tokens)
        store = None
        if partial is not None:  # resumable: every measured point saved at once (vitedge.partial)
            fp = fingerprint({**model_shape(model), **({} if precision == "fp32" else describe(precision, quantization))}, device.name, device.runtime, device.threads, device.config,
                             [(q["name"], q.get("inputs"), q["tags"]) for q in plan["points"]])
            store = PartialProfile.open(partial, {"fingerprint": fp, "points": len(plan["points"]),
                                                  "device": device.name, "runtime": device.runtime}, resume=resume)
        done = dict(store.rows) if store else {}
        todo = [q for q in plan["points"] if q["name"] not in done or q["name"] == plan["reference"]]
        bar = tqdm(total=len(plan["points"]), initial=len(done), desc=f"profile ({device.name}, {device.runtime})",
                   unit="pt", disable=not progress, leave=False)

        def on_point(row):
            if store is None or store.append(row):
                bar.update(1)
        try:
            result = device.run_plan(dict(plan, points=todo), on_point=on_point)
        except DeviceError as e:
            if store is None or not store.rows:
                raise
            raise type(e)(f"{e}; the {len(store.rows)} points measured so far are saved in {store.path}: "
                          "run the same command with --resume to continue") from None
        except KeyboardInterrupt:
            if store is not None and store.rows:
                sys.stderr.write(f"\ninterrupted: the {len(store.rows)} points measured so far are saved in "
                                 f"{store.path}: run the same command with --resume to continue\n")
            raise
        finally:
            bar.close()
            if store is not None:
                store.close()
    if done:  # resumed: the saved rows stand; the reference's medians of both sessions judge drift
        fresh = {r["name"]: r for r in result["points"]}
        result = dict(result, points=[dict(done.get(q["name"]) or fresh[q["name"]], index=i)
                                      for i, q in enumerate(plan["points"])])
        ref = done.get(plan["reference"])
        if ref is not None:
            result["drift"] = detect_drift([ref["median_ms"], *result["drift"]["reference_medians_ms"]],
                                           result["drift"]["tolerance"])
    failed = [r for r in result["points"] if r["error_code"] != 0]
    if failed:
        kept = f" (the {len(store.rows)} measured points are saved in {store.path}: --resume re-measures the rest)" \
            if store is not None and store.rows else ""
        raise PartsFailedError(f"{len(failed)} of {len(result['points'])} parts failed on {device.name}, e.g. "
                           f"{failed[0]['name']}: {failed[0]['error']}{kept}")
    return table_from_result(model, device, result, tokens, model_name=model_name,
                             meta={"profile_seconds": round(time.time() - t0, 2), "export_seconds": round(export_s, 2),
                                   "points": len(plan["points"]), "format": fmt, "resumed_points": len(done),
                                   **describe(precision, quantization)})


def table_from_result(model: PrunableViT, device: Device, result: dict, tokens: list[int], *, model_name: str = "",
                      meta: dict | None = None) -> LatencyTable:
    """Assemble a :class:`LatencyTable` from a runner result (medians interpolated between measured n)."""
    N = model.num_tokens
    rows = {(r["tags"]["part"], r["tags"].get("tokens")): r for r in result["points"] if r["tags"]["part"] != IN_GRAPH}
    parts_out = {}
    for part in PARTS:
        measured = sorted(n for (q, n) in rows if q == part and n is not None)
        if not measured:
            continue
        grid = np.arange(1, N + 1)
        entry = {}
        for key in ("median_ms", "p90_ms"):
            vals = [rows[(part, n)][key] for n in measured]
            entry[key] = [float(v) for v in np.interp(grid, measured, vals)]  # constant below the first n
        entry["measured_tokens"] = measured
        entry["samples_ms"] = {str(n): rows[(part, n)]["samples_ms"] for n in measured}
        parts_out[part] = entry
    fixed = {name: {k: rows[(name, None)][k] for k in ("median_ms", "p90_ms", "samples_ms")} for name in FIXED}
    reps: dict = {}  # the in-graph reference: each n timed IN_GRAPH_REPEATS times; the median of their medians
    for r in result["points"]:
        if r["tags"]["part"] == IN_GRAPH:
            reps.setdefault(r["tags"]["tokens"], []).append(r)
    in_graph = {"tokens": sorted(reps)} if reps else {}
    for n in in_graph.get("tokens", []):
        for key in ("median_ms", "p90_ms"):
            in_graph.setdefault(key, []).append(float(np.median([r[key] for r in reps[n]])))
        in_graph.setdefault("samples_ms", []).append([x for r in reps[n] for x in r["samples_ms"]])
    env = result["environment"]
    return LatencyTable(
        model={"name": model_name, **model_shape(model)},
        device={"name": device.name, "runtime": device.runtime, "runtime_version": env.get("runtime_version"),
                "threads": device.threads, "environment": env},
        parts=parts_out, fixed=fixed, protocol=result["config"], drift=result["drift"], in_graph=in_graph,
        meta={**(meta or {}), "measured_tokens": [n for n in tokens if n > model.num_prefix], "reference": result["reference"],
              "token_score": model.token_score,  # the attention part computes it (a few element-wise ops per token)
              "footprint": table_footprint(result),  # per part: file size, load, first inference, memory
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
