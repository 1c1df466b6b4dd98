"""Time of the measured search with the default knobs: the shipped reference model and vit_small_patch16_224.

    python benchmarks/search_time.py --threads 2             # both models (ViT-S: 256 calibration images)
    python benchmarks/search_time.py --models reference --threads 1

Per model: calibration (RCTP stages 1-3), the latency table (ONNX Runtime, this CPU), then the measured
search (:class:`vitedge.search.measured.MeasuredSearch` through ``vitedge.pipeline.make_search``, the knobs
``plan_knobs`` picks for ``--search-seconds``) answering budgets at 50, 70 and 90 % of the predicted
unpruned latency, as ``vitedge export`` would (first budget: every family measured; later ones: the cache
plus refinement). vit_small_patch16_224 has random weights (no download offline): its 256 calibration
images are the digits (calibration split, then test) resized to 224 px; timing does not depend on the weights.
Writes results/search_time.{json,md}.
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
from vitedge.context import Context, Options
from vitedge.data.digits import ImageSet, digits_split
from vitedge.pipeline import make_search

MODELS = {"reference": None, "vit_small": "vit_small_patch16_224"}


def digits_at(size: int, n: int, mean, std) -> ImageSet:
    """``n`` digit canvases (calibration split, then test) resized to ``size`` px and normalised."""
    x = np.concatenate([digits_split("calib").images, digits_split("test").images])[:n]
    x = x * 0.5 + 0.5  # the digits are normalised with mean = std = 0.5
    t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return ImageSet(t.numpy().astype(np.float32), None, f"digits resized to {size} px [:{n}]")


def run(key: str, args, cache: Path) -> dict:
    name = MODELS[key]
    opts = Options(model=name, threads=args.threads, progress=False, cache_dir=str(cache), search_seconds=args.search_seconds)
    images = None
    if name is not None:
        import timm

        cfg = timm.get_pretrained_cfg(name)
        images = digits_at(224, args.images, cfg.mean, cfg.std)
    ctx = Context(opts, log=print, images=images)
    t0 = time.perf_counter()
    cal = ctx.calibration()
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = ctx.latency_table()
    t_table = time.perf_counter() - t0
    t0 = time.perf_counter()
    search, evaluator = make_search(ctx, cal, table, log=print)
    t_eval_init = time.perf_counter() - t0
    budgets = []
    for f in (0.5, 0.7, 0.9):
        t1 = time.perf_counter()
        s = search.solve(f * search.full)
        q = s.meta["calibration_quality"]
        budgets.append({"fraction": f, "seconds": round(time.perf_counter() - t1, 1), "evaluations": len(search.candidates),
                        "family": s.meta["family"], "predicted_ms": s.predicted, "agreement": q["agreement"],
                        "accuracy": q["accuracy"], "mean_kept": [round(k, 1) for k in s.predicted_kept]})
        print(f"{key}: budget {f:.0%} answered in {budgets[-1]['seconds']} s ({len(search.candidates)} schedules so far)")
    t_search = time.perf_counter() - t0
    return {"model": ctx.model.model_name, "calibration_images": len(ctx.images), "search_images": len(evaluator),
            "knobs": {"grid": search.knobs.grid, "sweep": search.knobs.sweep, "refine": search.knobs.refine},
            "search_seconds_budget": args.search_seconds, "calibration_s": round(t_cal, 1), "latency_table_s": round(t_table, 1),
            "search_total_s": round(t_search, 1), "evaluator_init_s": round(t_eval_init, 1),
            "measuring_s": round(search.seconds, 1), "evaluations": len(search.candidates), "budgets": budgets}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2, help="torch and runtime threads (default 2: this machine's cores)")
    ap.add_argument("--images", type=int, default=256, help="calibration images of the ViT-S run")
    ap.add_argument("--search-seconds", type=float, default=240.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitedge-searchtime-") as tmp:
        for key in args.models:
            rows.append(run(key, args, Path(tmp)))
    data = {"runs": rows, "threads": args.threads, "environment": environment()}
    md = ["# Measured search time, default knobs", "",
          f"Command: `{data['environment']['command']}`; {args.threads} threads; load average at the end "
          f"{data['environment']['load_average_1_5_15min']}. Search = the evaluator's setup (one unpruned forward over the "
          "search images) + answering budgets of 50, 70, 90 % of the predicted unpruned latency (the first measures every "
          "family; later ones reuse them).", "",
          md_table(["model", "calibration images", "search images", "grid / sweep / refine", "calibration s", "latency table s",
                    "search s (total)", "of which measuring s", "schedules measured", "first budget s", "next budgets s"],
                   [[r["model"], r["calibration_images"], r["search_images"], f"{r['knobs']['grid']} / {r['knobs']['sweep']} / {r['knobs']['refine']}",
                     r["calibration_s"], r["latency_table_s"], r["search_total_s"], r["measuring_s"], r["evaluations"],
                     r["budgets"][0]["seconds"], " / ".join(str(b["seconds"]) for b in r["budgets"][1:])] for r in rows])]
    write_results("search_time", data, "\n".join(md) + "\n", args.out)
    print(f"wrote {args.out / 'search_time'}.{{json,md}}")


if __name__ == "__main__":
    main()
