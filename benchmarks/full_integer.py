"""Full-integer int8 TFLite (int8 activations, ai-edge-quantizer's static recipe) next to dynamic-range int8 and fp32 on
the shipped model in LiteRT, unpruned and pruned (a fixed capacity schedule), 1 thread, files timed interleaved: median,
ratio to unpruned fp32, test top-1, agreement with the pruned fp32 file, XNNPACK delegation (issue 13). No tables.

    taskset -c 1 python benchmarks/full_integer.py --threads 1      # writes results/full_integer.{json,md,png}
    python benchmarks/full_integer.py --quick --out OUT               # a smoke run (tiny settings)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import RESULTS, environment, write_results
from precision import plot, report_md, run_model
from table_error import capacity_schedule
from vitedge.devices import MeasureConfig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 images, short measurements")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vitedge.data.digits import digits_split
    from vitedge.models.adapter import PrunableViT
    from vitedge.models.reference import build_reference

    cfg = MeasureConfig(warmup=1, min_runs=3, min_time_s=0) if args.quick else MeasureConfig(warmup=3, min_runs=20, min_time_s=0.2)
    calib, test = digits_split("calib"), digits_split("test")
    if args.quick:
        calib, test = calib.subset(32), test.subset(32)
    model = PrunableViT(build_reference())
    L, P = model.depth, model.num_tokens - model.num_prefix
    sched = capacity_schedule(L, P, [None] * (L // 4) + [0.7 - 0.4 * i / max(L - L // 4 - 1, 1) for i in range(L - L // 4)])
    run = run_model("shipped (digits), fixed capacity schedule", model, sched, "tflite", calib, test,
                    rounds=2 if args.quick else args.rounds, cfg=cfg, table_cfg=None, tokens_step=None, tables=False)
    results = {"environment": environment(), "runs": [run]}
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        write_results("full_integer", results, report_md(results).replace(
            "# INT8 / FP16 pruned exports (issue 13)", "# Full-integer int8 TFLite (issue 13)"), out)
        plot(results, out / "full_integer.png")
    return results


if __name__ == "__main__":
    main()
