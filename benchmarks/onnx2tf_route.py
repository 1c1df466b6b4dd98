"""Threshold mode in TFLite through onnx2tf (the optional route, ``--tflite-converter onnx2tf``).

    VITEDGE_ONNX2TF=/work/venv-onnx2tf/bin/onnx2tf taskset -c 1 python benchmarks/onnx2tf_route.py
    VITEDGE_ONNX2TF=... taskset -c 1 python benchmarks/onnx2tf_route.py --quick --out /tmp/o2t   # smoke

onnx2tf (TensorFlow) lives in its own venv (its pins conflict with the tflite extra):
``python3 -m venv /work/venv-onnx2tf && /work/venv-onnx2tf/bin/pip install onnx2tf`` (1.29.24 pulls
tensorflow 2.19, ai-edge-litert 2.1, numpy 1.26, onnx 1.19; 2.6 GB).

Reference model (shipped weights), calibration on the digits calibration split. Variants: no pruning
(the pruned-model graph with no selector: static shapes) and threshold schedules from RCTP's FLOPs
search at ``--flops`` (fractions of the blocks' FLOPs). For each, vitedge's own route
(:func:`vitedge.exporters.onnx2tf.export_tflite_onnx2tf`): ONNX at opset 20 -> Slice bounds clamped
-> onnx2tf CLI -> op audit -> parity against the ONNX model (ONNX Runtime vs ai-edge-litert); then
parity against PyTorch (:func:`check_parity_tflite`, ``--images`` images), op counts, XNNPACK
delegation (nodes the default delegate took), and latency at ``--threads`` (default 1) of the same
ONNX file in ONNX Runtime and the .tflite in ai-edge-litert, interleaved (ORT, LiteRT, ORT, ...)
over ``--rounds`` rounds on 32 calibration images cycled; medians of the round medians.

Writes ``onnx2tf.{json,md}`` in ``--out`` (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, md_table, write_results
from vitedge.calibration import calibrate
from vitedge.data.digits import digits_split
from vitedge.data.images import image_set_hash
from vitedge.devices import MeasureConfig
from vitedge.devices.runner import measure_feeds, open_session
from vitedge.exporters.graphs import export_pruned
from vitedge.exporters.onnx2tf import ONNX2TF_OPSET, export_tflite_onnx2tf, find_onnx2tf
from vitedge.exporters.tflite import check_parity_tflite, xnnpack_delegation
from vitedge.models.loading import load_prunable, model_hash
from vitedge.search.planner import Planner


def onnx2tf_versions(exe: str) -> dict:
    """onnx2tf and TensorFlow versions of the venv the executable belongs to."""
    py = Path(exe).parent / "python"
    code = "import importlib.metadata as m; print(m.version('onnx2tf'), m.version('tensorflow'), m.version('ai-edge-litert'))"
    try:
        out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
        return {"onnx2tf": out[0], "tensorflow": out[1], "ai_edge_litert_in_converter_venv": out[2]}
    except (OSError, subprocess.SubprocessError, IndexError):
        return {"onnx2tf": "unknown"}


def schedules(model, images, flops: list[float]) -> dict:
    cal = calibrate(model, images, model_hash=model_hash(model.vit), image_set_hash=image_set_hash(images),
                    progress=False)
    out = {"no pruning": [None] * model.depth}
    planner = Planner(cal, "flops")
    for r in flops:
        out[f"threshold, {r:.0%} FLOPs"] = planner.solve(r).thresholds
    return out


def latency(onnx_path, tflite_path, feeds, threads: int, rounds: int, cfg: MeasureConfig) -> dict:
    ort = open_session("onnxruntime", str(onnx_path), threads)
    lit = open_session("litert", str(tflite_path), threads)
    meds = {"onnxruntime": [], "litert": []}
    p90 = {"onnxruntime": [], "litert": []}
    for _ in range(rounds):
        for name, sess in (("onnxruntime", ort), ("litert", lit)):
            m = measure_feeds(sess, feeds, cfg)
            meds[name].append(m.median_ms)
            p90[name].append(m.p90_ms)
    ratio = np.array(meds["litert"]) / np.array(meds["onnxruntime"])
    return {"ort_median_ms": float(np.median(meds["onnxruntime"])), "litert_median_ms": float(np.median(meds["litert"])),
            "ort_p90_ms": float(np.median(p90["onnxruntime"])), "litert_p90_ms": float(np.median(p90["litert"])),
            "litert_over_ort_median": float(np.median(ratio)), "litert_over_ort_p10_p90": [float(np.percentile(ratio, 10)),
                                                                                          float(np.percentile(ratio, 90))],
            "rounds": rounds, "round_medians_ms": meds}


def run_variant(name, model, thresholds, work: Path, images, args, cfg) -> dict:
    model.set_thresholds(thresholds)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    onnx_path, tfl = work / f"{slug}.onnx", work / f"{slug}.tflite"
    t0 = time.time()
    export_pruned(model, onnx_path, opset=ONNX2TF_OPSET)
    export_s = time.time() - t0
    feeds = [{"image": images.images[i:i + 1]} for i in range(min(16, len(images)))]
    res = export_tflite_onnx2tf(onnx_path, tfl, feeds=feeds)
    torch_parity = check_parity_tflite(model, tfl, images, limit=args.images).to_dict()
    deleg = xnnpack_delegation(tfl, threads=args.threads).to_dict()
    with torch.no_grad():
        kept = np.array([[int(k) for k in model.forward_with_info(torch.from_numpy(images.images[i:i + 1])).kept]
                         for i in range(min(64, len(images)))])
    lat_feeds = [{"image": images.images[i:i + 1]} for i in range(32)]
    lat = latency(onnx_path, tfl, lat_feeds, args.threads, args.rounds, cfg)
    row = {"variant": name, "thresholds": thresholds, "mean_kept_per_block": kept.mean(axis=0).round(2).tolist(),
           "onnx_export_seconds": round(export_s, 2), "convert_seconds": res.convert_seconds,
           "slice_bounds_clamped": res.slice_bounds_clamped, "parity_vs_onnx": res.parity,
           "parity_vs_pytorch": torch_parity, "op_types": res.op_types, "xnnpack": deleg, "latency": lat,
           "tflite_bytes": tfl.stat().st_size}
    print(f"{name}: convert {res.convert_seconds:.1f} s, parity vs ONNX {res.parity['max_abs_diff']:.1e}, vs PyTorch "
          f"{torch_parity['max_abs_diff']:.1e}, XNNPACK {deleg['delegated']}/{deleg['nodes']}, ORT {lat['ort_median_ms']:.3f} ms, "
          f"LiteRT {lat['litert_median_ms']:.3f} ms", flush=True)
    return row


def markdown(data: dict) -> str:
    env, rows = data["environment"], data["variants"]
    head = ["# Threshold mode in TFLite through onnx2tf (reference model)\n",
            f"onnx2tf {data['converter'].get('onnx2tf')} (TensorFlow {data['converter'].get('tensorflow')}, own venv), "
            f"ai-edge-litert {data['ai_edge_litert']} and ONNX Runtime {data['onnxruntime']} in vitedge's venv; "
            f"{data['threads']} thread(s), process affinity {env.get('cpu_affinity')} CPU(s) of {env.get('cpu_count')}; "
            f"load average at start {env['load_average_1_5_15min']}, at end {data['load_average_end']} (a shared machine: "
            f"p90s are in the JSON). Command: `{env['command']}`.\n",
            "Latency: the same opset-20 ONNX file in ONNX Runtime vs its onnx2tf .tflite in ai-edge-litert (XNNPACK default "
            f"delegate), interleaved, median of {data['rounds']} round medians over 32 calibration images.\n"]
    t = md_table(["variant", "mean kept / block", "convert s", "max diff vs ONNX", "max diff vs PyTorch", "kept equal",
                  "XNNPACK nodes", "not delegated", "ORT ms", "LiteRT ms", "LiteRT/ORT"],
                 [[r["variant"], str(r["mean_kept_per_block"]), r["convert_seconds"], f"{r['parity_vs_onnx']['max_abs_diff']:.1e}",
                   f"{r['parity_vs_pytorch']['max_abs_diff']:.1e}", f"{r['parity_vs_pytorch']['kept_match']:.2f}",
                   f"{r['xnnpack']['delegated']}/{r['xnnpack']['nodes']} ({r['xnnpack']['partitions']} partitions)",
                   ", ".join(f"{k} {v}" for k, v in r["xnnpack"]["not_delegated"].items()) or "-",
                   r["latency"]["ort_median_ms"], r["latency"]["litert_median_ms"], r["latency"]["litert_over_ort_median"]]
                  for r in rows])
    ops = md_table(["variant", "op counts (TFLite)"], [[r["variant"], ", ".join(f"{k} {v}" for k, v in r["op_types"].items())]
                                                       for r in rows])
    return "\n".join(head) + "\n" + t + "\n" + ops


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", type=float, nargs="+", default=[0.75, 0.5], help="FLOPs fractions of the threshold schedules")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--images", type=int, default=64, help="images of the PyTorch parity check")
    ap.add_argument("--quick", action="store_true", help="smoke: one schedule, 3 rounds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.flops, args.rounds, args.images = args.flops[:1], 3, 8
    torch.manual_seed(0)
    exe = find_onnx2tf()
    env = environment()
    model = load_prunable(None)
    images = digits_split("calib")
    cfg = MeasureConfig(warmup=5, min_runs=32, min_time_s=0.05 if args.quick else 0.2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx2tf-route-") as tmp:
        for name, thr in schedules(model, images, args.flops).items():
            rows.append(run_variant(name, model, thr, Path(tmp), images, args, cfg))
    import os

    from importlib.metadata import version
    data = {"environment": env, "converter": onnx2tf_versions(exe), "onnx2tf_executable": exe,
            "ai_edge_litert": version("ai-edge-litert"), "onnxruntime": version("onnxruntime"), "threads": args.threads,
            "rounds": args.rounds, "opset": ONNX2TF_OPSET, "variants": rows,
            "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    write_results("onnx2tf", data, markdown(data), args.out)
    print(f"-> {args.out}/onnx2tf.json, .md")


if __name__ == "__main__":
    main()
