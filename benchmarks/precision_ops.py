"""Which ops stay float in the ONNX int8 export: accuracy (shipped model, pruned) and speed (vit_small_patch16_224).

Variants of :func:`vitedge.exporters.quantize.quantize_onnx`: static QDQ over MatMul/Gemm/Conv with the selector's
score path (q·kᵀ MatMul of blocks with a selector) float or quantized, static over every op type ONNX Runtime
quantizes, dynamic with the score path float or quantized. Accuracy: a threshold schedule of the shipped model
(the fp32 search's fastest within ``--drop`` points, or the fixed aggressive one with ``--aggressive``), 600 test
digits; speed: ViT-S (random weights) unpruned, 1 thread, interleaved rounds, median of round medians.

    taskset -c 1 python benchmarks/precision_ops.py --threads 1    # writes results/precision_ops.{json,md}
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, md_table, write_results
from precision import interleaved, outputs
from vitedge.devices import MeasureConfig
from vitedge.exporters.graphs import export_pruned, export_unpruned
from vitedge.exporters.quantize import int8_ops, quantize_onnx

ALL_OPS = None  # every op type ONNX Runtime's QDQ quantizer handles
VARIANTS = {
    "static, MatMul/Gemm/Conv, score path float": dict(method="static"),
    "static, MatMul/Gemm/Conv, score path int8": dict(method="static", score_path_float=False),
    "static, every op ORT quantizes": dict(method="static", op_types=ALL_OPS, score_path_float=False),
    "dynamic, score path float": dict(method="dynamic"),
    "dynamic, score path int8": dict(method="dynamic", score_path_float=False),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import timm

    from vitedge.calibration import calibrate
    from vitedge.data.digits import digits_split
    from vitedge.models.adapter import PrunableViT
    from vitedge.models.reference import build_reference

    calib, test = digits_split("calib"), digits_split("test")
    if args.quick:
        calib, test = calib.subset(32), test.subset(32)
    feeds = [{"image": calib.images[i:i + 1]} for i in range(min(128, len(calib)))]
    ref = PrunableViT(build_reference())
    cal = calibrate(ref, calib.subset(64), model_hash="x", image_set_hash="y", num_candidates=21, progress=False)
    # a fixed schedule pruning every block from block 1 on (~60 % of the patch tokens gone at the last block)
    cand = [0, 8, 10, 10, 12, 12]
    thresholds = [None if c == 0 else float(cal.thresholds[l, c]) for l, c in enumerate(cand)]
    res = {"environment": environment(), "schedule_thresholds": thresholds, "accuracy": {}, "speed": {}}
    with tempfile.TemporaryDirectory(prefix="vitedge-qops-") as tmp:
        tmp = Path(tmp)
        with ref.pruning(thresholds=thresholds):
            export_pruned(ref, tmp / "p32.onnx")
        base = outputs(tmp / "p32.onnx", "onnx", test.images)
        btop = np.array([np.argmax(o[0]) for o in base])
        res["accuracy"]["fp32 pruned"] = {"test_top1": float((btop == test.labels).mean()), "agreement": 1.0, "kept_counts_differ": 0.0}
        for name, kw in VARIANTS.items():
            path = tmp / f"p_{len(res['accuracy'])}.onnx"
            quantize_onnx(tmp / "p32.onnx", path, feeds, **kw)
            outs = outputs(path, "onnx", test.images)
            top = np.array([np.argmax(o[0]) for o in outs])
            res["accuracy"][name] = {"test_top1": float((top == test.labels).mean()), "agreement": float((top == btop).mean()),
                                     "kept_counts_differ": float(np.mean([not np.array_equal(o[1], b[1]) for o, b in zip(outs, base)]))}
        torch.manual_seed(0)
        vs = PrunableViT(timm.create_model("vit_small_patch16_224", pretrained=False).eval())
        x = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
        vfeeds = [{"image": x[i:i + 1]} for i in range(len(x))]
        export_unpruned(vs, tmp / "vs32.onnx")
        files = {"fp32": tmp / "vs32.onnx"}
        for i, (name, kw) in enumerate(VARIANTS.items()):
            if "score path int8" in name and "every op" not in name:
                continue  # unpruned: no selector, the same file as its score-path-float twin
            files[name] = tmp / f"vs_{i}.onnx"
            quantize_onnx(tmp / "vs32.onnx", files[name], vfeeds, **kw)
        cfg = MeasureConfig(warmup=2, min_runs=3 if args.quick else 10, min_time_s=0 if args.quick else 0.5)
        med, rounds = interleaved(files, "onnx", vfeeds[:4], 2 if args.quick else args.rounds, cfg)
        for name, path in files.items():
            res["speed"][name] = {"median_ms": med[name], "ratio_to_fp32": med[name] / med["fp32"], "round_medians_ms": rounds[name],
                                  **({"int8_ops": int8_ops(path)["int8"]} if name != "fp32" else {})}
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        env = res["environment"]
        md = ["# Which ops stay float in the ONNX int8 export\n",
              f"`{env['command']}`, {env['date']}, 1 thread pinned to one core of a 2-core machine shared with two other "
              f"agents' jobs (load {env['load_average_1_5_15min']}).\n\n## Accuracy: shipped model, fixed threshold schedule "
              f"(blocks 1-5 pruned), 600 test digits, ONNX Runtime\n",
              md_table(["variant", "test top-1 %", "agreement with fp32 pruned %", "kept counts differ %"],
                       [[k, 100 * v["test_top1"], 100 * v["agreement"], 100 * v["kept_counts_differ"]] for k, v in res["accuracy"].items()]),
              "\n## Speed: vit_small_patch16_224 unpruned (random weights), 1 thread, interleaved\n",
              md_table(["variant", "median ms", "x fp32", "int8 ops"],
                       [[k, v["median_ms"], v["ratio_to_fp32"], str(v.get("int8_ops", "-"))] for k, v in res["speed"].items()])]
        write_results("precision_ops", res, "".join(md), out)
    return res


if __name__ == "__main__":
    main()
