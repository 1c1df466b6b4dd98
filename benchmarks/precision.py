"""INT8 / FP16 pruned exports: latency, accuracy, agreement and INT8 table prediction (issue 13).

For each model and runtime, one run, 1 thread, the files timed interleaved (every round times every file once):
unpruned fp32, unpruned int8, pruned fp32, pruned int8 (same schedule: the budget the fp32 search chose), plus
ONNX static int8 and TFLite fp16. Reported: median of the round medians, ratio to unpruned fp32, test top-1
(shipped model: 600 test digits), top-1 agreement with the fp32 pruned model, and the latency table's prediction
error at int8 (a table profiled on int8 parts, predicting the pruned int8 file at its real kept counts).

    taskset -c 1 python benchmarks/precision.py --threads 1           # writes results/precision.{json,md,png}
    python benchmarks/precision.py --quick --skip-vit-small --skip-tflite --out OUT   # a smoke run (tiny settings)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, md_table, save_plot, write_results
from vitedge.devices import MeasureConfig, get_device
from vitedge.devices.runner import measure_feeds, open_session
from vitedge.exporters.quantize import int8_ops
from vitedge.exporters.registry import get_exporter
from vitedge.quantized import quantize_file

RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}


def outputs(path, fmt: str, images: np.ndarray) -> list:
    """Each image's outputs ([logits, kept?]) from ``path`` in its runtime (1 thread)."""
    from vitedge.exporters.quantize import _runner

    run = _runner(path, RUNTIME[fmt])
    return [run(images[i:i + 1]) for i in range(len(images))]


def variants(model, schedule, fmt: str, work: Path, feeds: list) -> dict[str, Path]:
    """Write the files compared: {name: path}."""
    exp = get_exporter(fmt)
    files = {}
    for pruned in (False, True):
        tag = "pruned" if pruned else "unpruned"
        fp32 = work / f"{tag}_fp32{exp.suffix}"
        with model.pruning(schedule if pruned else None):
            exp.export(model, fp32, pruned=pruned)
        files[f"{tag} fp32"] = fp32
        quant = [("int8 dynamic", "int8", "dynamic"), ("int8 static", "int8", "static")] + \
            ([] if fmt == "onnx" else [("fp16", "fp16", "dynamic")])  # TFLite static: full-integer
        for name, precision, method in quant:
            path = work / f"{tag}_{name.replace(' ', '_')}{exp.suffix}"
            quantize_file(fp32, path, feeds, fmt=fmt, precision=precision, method=method)
            files[f"{tag} {name}"] = path
    return files


def interleaved(files: dict, fmt: str, feeds: list, rounds: int, cfg: MeasureConfig) -> dict:
    sessions = {k: open_session(RUNTIME[fmt], str(p), 1) for k, p in files.items()}
    meds = {k: [] for k in files}
    for _ in range(rounds):
        for k, s in sessions.items():
            meds[k].append(measure_feeds(s, feeds, cfg).median_ms)
    return {k: float(np.median(v)) for k, v in meds.items()}, meds


def table_error(model, schedule, fmt: str, precision: str, kept: np.ndarray, measured: float, cfg, tokens_step) -> dict:
    """Profile a table at ``precision`` and compare its prediction at the real kept counts with ``measured``."""
    from vitedge.profiling import profile

    dev = get_device("local", runtime=RUNTIME[fmt], threads=1, config=cfg)
    t0 = time.time()
    table = profile(model, dev, progress=False, precision=precision, quantization="dynamic", tokens_step=tokens_step)
    pred = float(table.predict_ms(kept, np.array(schedule.selectors), mode=schedule.mode).mean())
    return {"precision": precision, "predicted_ms": pred, "measured_ms": measured,
            "error_pct": 100 * (pred - measured) / measured, "profile_seconds": round(time.time() - t0, 1)}


def run_model(label: str, model, schedule, fmt: str, calib, test, *, rounds: int, cfg, table_cfg, tokens_step,
              tables: bool = True) -> dict:
    from vitedge.evaluate import evaluate_schedule

    feeds = [{"image": calib.images[i:i + 1]} for i in range(min(64, len(calib)))]
    with tempfile.TemporaryDirectory(prefix="vitedge-precision-") as tmp:
        files = variants(model, schedule, fmt, Path(tmp), feeds)
        med, rounds_ms = interleaved(files, fmt, feeds[:16], rounds, cfg)
        rows = {}
        ref = outputs(files["pruned fp32"], fmt, test.images)
        ref_top = np.array([np.argmax(o[0]) for o in ref])
        for name, path in files.items():
            outs = ref if name == "pruned fp32" else outputs(path, fmt, test.images)
            top = np.array([np.argmax(o[0]) for o in outs])
            rows[name] = {"median_ms": med[name], "ratio_to_unpruned_fp32": med[name] / med["unpruned fp32"],
                          "test_top1": float((top == test.labels).mean()) if test.labels is not None else None,
                          "agreement_with_pruned_fp32": float((top == ref_top).mean()),
                          "round_medians_ms": rounds_ms[name], "size_bytes": path.stat().st_size}
            if name.startswith("pruned") and len(outs[0]) > 1:
                rows[name]["kept_counts_differ"] = float(np.mean([not np.array_equal(np.ravel(o[1]), np.ravel(r[1]))
                                                                   for o, r in zip(outs, ref)]))
            if fmt == "onnx" and "int8" in name:
                rows[name]["int8_ops"] = int8_ops(path)["int8"]
            if fmt == "tflite":
                from vitedge.exporters.tflite import xnnpack_delegation

                rows[name]["xnnpack"] = xnnpack_delegation(path).to_dict()
        kept = evaluate_schedule(model, calib, schedule, limit=64).kept if tables else None
        errors = [] if not tables else [table_error(model, schedule, fmt, p, kept, med[f"pruned {'fp32' if p == 'fp32' else 'int8 dynamic'}"],
                              table_cfg, tokens_step) for p in ("fp32", "int8")]
    return {"model": label, "format": fmt, "runtime": RUNTIME[fmt], "mode": schedule.mode,
            "schedule": {"thresholds": schedule.thresholds, "capacities": schedule.capacities}, "rows": rows,
            "table_prediction": errors}


def schedules(ctx_model, fmt: str, calib, drop: float, quick: bool):
    """The int8 search's schedule: the fastest whose int8 (dynamic) export keeps ``drop`` points on the calibration
    images (its table profiled at int8; vitedge.quantized_search)."""
    import vitedge

    quick_kw = dict(warmup=1, runs=3, min_time=0, search_grid=4) if quick else dict(search_grid=12)
    return vitedge.search(ctx_model, max_accuracy_drop=drop, images=calib.images, labels=calib.labels, threads=1,
                          format=fmt, precision="int8", quantization="dynamic", progress=False, log=print, **quick_kw)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--drop", type=float, default=1.5, help="accuracy drop (points) the shipped model's schedule keeps")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny settings (nothing written without --out)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--skip-vit-small", action="store_true")
    ap.add_argument("--skip-tflite", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vitedge.data.digits import digits_split
    from vitedge.models.adapter import PrunableViT
    from vitedge.models.reference import build_reference
    from vitedge.schedule import Schedule

    cfg = MeasureConfig(warmup=3, min_runs=5 if args.quick else 20, min_time_s=0 if args.quick else 0.2)
    table_cfg = MeasureConfig(warmup=1, min_runs=3, min_time_s=0) if args.quick else MeasureConfig(warmup=3, min_runs=10, min_time_s=0.03)
    rounds = 2 if args.quick else args.rounds
    calib, test = digits_split("calib"), digits_split("test")
    if args.quick:
        calib, test = calib.subset(32), test.subset(32)
    fmts = ["onnx"] + ([] if args.skip_tflite else ["tflite"])
    results = {"environment": environment(), "runs": []}
    ref = PrunableViT(build_reference())
    for fmt in fmts:
        sched = schedules(build_reference(), fmt, calib, args.drop, args.quick)
        results["runs"].append(run_model("shipped (digits)", ref, sched, fmt, calib, test, rounds=rounds, cfg=cfg,
                                         table_cfg=table_cfg, tokens_step=None))
    if not args.skip_vit_small:
        import timm

        torch.manual_seed(0)
        vs = PrunableViT(timm.create_model("vit_small_patch16_224", pretrained=False).eval())
        rng = np.random.default_rng(0)
        from vitedge.data.digits import ImageSet

        ims = ImageSet(rng.standard_normal((32 if not args.quick else 4, 3, 224, 224), dtype=np.float32), None, "random")
        caps = [None] * 3 + [int(round(196 * r)) for r in (0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3, 0.3)]
        sched = Schedule(mode="capacity", candidates=[0] * 12, thresholds=[None] * 12, capacities=caps, budget=0.0,
                         unit="ms", cost_model="latency", predicted=0.0, predicted_kept=[0.0] * 12, fisher_loss=0.0)
        for fmt in fmts:
            results["runs"].append(run_model("vit_small_patch16_224 (random weights)", vs, sched, fmt, ims, ims,
                                             rounds=rounds, cfg=cfg, table_cfg=table_cfg, tokens_step=8 if fmt == "onnx" else 16))
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_results("precision", results, report_md(results), out)
        plot(results, out / "precision.png")
    return results


def report_md(results: dict) -> str:
    env = results["environment"]
    out = ["# INT8 / FP16 pruned exports (issue 13)\n",
           f"`{env['command']}`, {env['date']}, 1 thread pinned to one core of a 2-core machine **shared with other "
           f"agents' jobs** (load average {env['load_average_1_5_15min']}); files timed interleaved, median of round medians.\n"]
    for run in results["runs"]:
        out.append(f"\n## {run['model']}, {run['runtime']} ({run['mode']} mode)\n")
        rows = [[k, r["median_ms"], r["ratio_to_unpruned_fp32"], "-" if r["test_top1"] is None else 100 * r["test_top1"],
                 100 * r["agreement_with_pruned_fp32"], "-" if "kept_counts_differ" not in r else 100 * r["kept_counts_differ"],
                 str(r.get("int8_ops") or (f"{r['xnnpack']['delegated']}/{r['xnnpack']['nodes']}" if "xnnpack" in r else "-"))]
                for k, r in run["rows"].items()]
        out.append(md_table(["file", "median ms", "x unpruned fp32", "test top-1 %", "agreement w/ pruned fp32 %",
                             "kept counts differ %", "int8 ops (ORT) / XNNPACK delegated"], rows))
        for t in run["table_prediction"]:
            out.append(f"- table at {t['precision']}: predicted {t['predicted_ms']:.3f} ms, measured {t['measured_ms']:.3f} ms, "
                       f"error {t['error_pct']:+.1f} % (profile {t['profile_seconds']} s)\n")
    return "".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["runs"]), figsize=(4.2 * len(results["runs"]), 3.6), squeeze=False)
    for ax, run in zip(axes[0], results["runs"]):
        names = list(run["rows"])
        ax.barh(names, [run["rows"][k]["ratio_to_unpruned_fp32"] for k in names], color="tab:blue")
        ax.axvline(0.4, color="tab:red", ls="--", lw=1, label="goal 0.4x")
        ax.set_title(f"{run['model'].split(' ')[0]}, {run['runtime']}", fontsize=9)
        ax.set_xlabel("latency / unpruned fp32")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    save_plot(fig, path)


if __name__ == "__main__":
    main()
