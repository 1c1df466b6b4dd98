"""Tool speed: calibration per image vs a plain forward+backward, profiling time, search time.

    python benchmarks/speed.py              # reference model (+ synthetic L=12, M=201 search)

Writes benchmarks/results/speed.{json,md}.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import RESULTS, environment, md_table, write_results
from vitedge.calibration.fisher import collect_stage1
from vitedge.calibration.store import build_calibration
from vitedge.context import Context, Options
from vitedge.search import BudgetUnreachableError, MonotoneViterbi
from vitedge.search.planner import Planner


def accepted_min(solve, lo: float) -> float:
    """The smallest budget ``solve`` accepts (ceil quantisation can put it above the exact minimum)."""
    try:
        solve(lo)
        return lo
    except BudgetUnreachableError as e:
        return e.min_budget


def plain_fwd_bwd(model, images, batch_size: int) -> float:
    """Seconds for forward + backward (w.r.t. the weights) of timm's own model over all images."""
    t = time.perf_counter()
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images.images[s:s + batch_size])
        y = model(x).argmax(-1)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(Options(progress=False, cache_dir=tmp), log=print)
        images, model = ctx.images, ctx.model
        calib_s, plain_s = [], []
        for _ in range(args.repeats):  # interleaved
            t = time.perf_counter()
            collect_stage1(model, images, batch_size=32, progress=False)
            calib_s.append(time.perf_counter() - t)
            plain_s.append(plain_fwd_bwd(model.vit, images, 32))
        s1 = collect_stage1(model, images, batch_size=32, progress=False)
        t = time.perf_counter()
        cal = build_calibration(s1.scores, s1.fisher, s1.labels, dim=model.dim, num_prefix=model.num_prefix,
                                meta={"model": "ref", "model_hash": "x", "image_set_hash": "y", "label_source": s1.label_source})
        stages23_s = time.perf_counter() - t
        t = time.perf_counter()
        table = ctx.latency_table()
        profile_s = time.perf_counter() - t
        t = time.perf_counter()
        planner = Planner(cal, "latency", table)
        build_s = time.perf_counter() - t
        budgets = np.linspace(accepted_min(planner.solve, planner.min_budget), planner.full, 100)
        t = time.perf_counter()
        for b in budgets:
            planner.solve(float(b))
        sweep_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    loss = np.sort(rng.random((12, 201)), axis=1).cumsum(axis=1)
    cost = np.sort(rng.random((12, 201)), axis=1)[:, ::-1] * 3
    t = time.perf_counter()
    v = MonotoneViterbi(loss, cost)
    big_build = time.perf_counter() - t
    t = time.perf_counter()
    v.sweep(np.linspace(accepted_min(v.solve, v.min_cost), v.max_cost, 100))
    big_sweep = time.perf_counter() - t
    D = len(images)
    res = {"images": D, "calibration_stage1_s": calib_s, "plain_fwd_bwd_s": plain_s,
           "stage1_per_image_ms": 1000 * float(np.median(calib_s)) / D,
           "plain_fwd_bwd_per_image_ms": 1000 * float(np.median(plain_s)) / D,
           "stage1_over_plain": float(np.median(calib_s) / np.median(plain_s)),
           "stages23_s": stages23_s, "profile_s": profile_s, "profile_points": table.meta["points"],
           "planner_build_s": build_s, "sweep_100_budgets_s": sweep_s,
           "synthetic_L12_M201_build_s": big_build, "synthetic_L12_M201_sweep_100_s": big_sweep}
    rows = [["stage 1 (Fisher + CLS scores) per image", f"{res['stage1_per_image_ms']:.2f} ms"],
            ["plain forward + backward per image (timm)", f"{res['plain_fwd_bwd_per_image_ms']:.2f} ms"],
            ["stage 1 / plain", f"{res['stage1_over_plain']:.2f}x"],
            [f"stages 2-3 (M=201, {D} images)", f"{stages23_s:.3f} s"],
            [f"profile ({table.meta['points']} points, local ORT)", f"{profile_s:.1f} s"],
            ["search: build tables (L=6, M=201)", f"{1000 * build_s:.1f} ms"],
            ["search: 100 budgets (L=6)", f"{1000 * sweep_s:.1f} ms"],
            ["search: build tables (L=12, M=201, synthetic)", f"{1000 * big_build:.1f} ms"],
            ["search: 100 budgets (L=12, M=201)", f"{1000 * big_sweep:.1f} ms"]]
    md = "# Tool speed (reference model, 2 CPU threads)\n\n" + md_table(["what", "time"], rows)
    write_results("speed", {"environment": environment(), "results": res}, md, args.out)
    print(md)


if __name__ == "__main__":
    main()
