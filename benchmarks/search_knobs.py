"""The measured search's knobs and what they buy: calibration images, grid, refinement rounds.

    taskset -c 0 python benchmarks/search_knobs.py --threads 1
    python benchmarks/search_knobs.py --quick            # smoke run

Per model (the shipped one and the seed-1 one), ONNX, ``--mode auto``: one latency table per model, profiled once
and shared by every setting, so that only the knobs differ. For each setting (N calibration images, the first N of
the 200 calibration digits, ``--calib-limit N``; ``--search-grid G``; ``--search-refine R``; the defaults are
N = 200, G = 24, R = 2) a fresh measured search with ``--search-seconds`` unbounded: its picks at budgets of 45 to
97.5 % of the predicted unpruned latency, each pick's top-1 on the 600 held-out test digits (batched evaluator;
equals the deployed forward), their mean, the schedules it measured and the seconds it spent measuring them.
Selection only: nothing is exported or timed after the table, so the CPU load does not change the picks.
Writes results/search_knobs.{json,md,png}.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import md_table, plot_per_model, profile_options, run_selection_study, selection_parser, study_header
from vitedge.context import Context, Options
from vitedge.data.digits import digits_split
from vitedge.pipeline import make_search
from vitedge.quality import QualityEvaluator

# (calibration images, grid, refinement rounds); the first is vitedge's default
SETTINGS = [(200, 24, 2), (200, 24, 0), (200, 24, 4), (200, 12, 2), (100, 24, 2), (50, 24, 2)]


def label(setting) -> str:
    n, g, r = setting
    return f"N={n} G={g} R={r}"


def run_model(name: str, ckpt, args, cache: Path) -> dict:
    def context(n=None, knobs=None):
        return Context(Options(checkpoint=ckpt, threads=args.threads, format="onnx", mode="auto", progress=False,
                               cache_dir=str(cache), calib_limit=n, search_seconds=1e9, search_knobs=knobs or {},
                               **profile_options(args)), log=lambda m: None)

    ctx = context()
    table = ctx.latency_table()  # profiled once: every setting reads this table from the cache
    test = QualityEvaluator(ctx.model, digits_split("test").subset(args.test_limit) if args.test_limit else digits_split("test"))
    out = {"model": name, "checkpoint": ckpt or "shipped", "test_images": len(test),
           "unpruned_test_accuracy": test.unpruned_accuracy, "settings": []}
    for n, g, r in args.settings:
        t0 = time.time()
        c = context(n, {"grid": g, "refine": r})
        search, evaluator = make_search(c, c.calibration(), table, log=lambda m: None)
        full, picks = search.full, []
        for f in args.fractions:
            try:
                cand = search.best(f / 100 * full)
            except ValueError:  # below every candidate (BudgetUnreachableError)
                picks.append({"fraction": f, "pick": None})
                continue
            picks.append({"fraction": f, "pick": {
                "mode": cand.mode, "family": cand.family, "candidates": [int(i) for i in cand.indices],
                "predicted_relative": cand.predicted_ms / full, "calib_top1": cand.top1,
                "test_top1": test.evaluate(cand.mode, search.values(cand.indices, cand.mode)).accuracy}})
        answered = [p["pick"]["test_top1"] for p in picks if p["pick"]]
        out["settings"].append({"images": len(evaluator), "grid": search.knobs.grid, "refine": search.knobs.refine,
                                "picks": picks, "mean_test_top1": float(np.mean(answered)),
                                "schedules": len(search.candidates), "search_seconds": round(search.seconds, 1),
                                "wall_seconds": round(time.time() - t0, 1)})
        print(f"{name} {label((n, g, r))}: mean test top-1 {100 * np.mean(answered):.2f} %, {len(search.candidates)} "
              f"schedules in {search.seconds:.0f} s", flush=True)
    return out


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = ["# The measured search's knobs: calibration images (N), grid (G), refinement rounds (R)", "",
             study_header(env) +
             "ONNX, `--mode auto`, the default token score and ranking; one latency table per model shared by every "
             "setting; test: held-out test digits (600 unless the model's heading says otherwise). Budgets and latency: the table's prediction / its unpruned "
             "prediction (selection only, nothing timed). Each cell: test top-1 % of the search's pick. Seconds: time "
             "spent measuring candidates on this 2-core machine (1 thread).", ""]
    for m in data["models"]:
        sets = m["settings"]
        heads = [f"N={s['images']} G={s['grid']} R={s['refine']}" for s in sets]
        lines += [f"## {m['model']}: unpruned test top-1 {100 * m['unpruned_test_accuracy']:.1f} % on {m['test_images']} test images",
                  "", *(["The first column is vitedge's default.", ""] if (sets[0]["images"], sets[0]["grid"], sets[0]["refine"])
                         == SETTINGS[0] else [])]
        rows = []
        for i, p in enumerate(sets[0]["picks"]):
            rows.append([f"{p['fraction']:g} %", *["–" if s["picks"][i]["pick"] is None
                                                  else f"{100 * s['picks'][i]['pick']['test_top1']:.1f}" for s in sets]])
        rows.append(["**mean**", *[f"**{100 * s['mean_test_top1']:.2f}**" for s in sets]])
        rows.append(["vs the first column (points)", *[f"{100 * (s['mean_test_top1'] - sets[0]['mean_test_top1']):+.2f}" for s in sets]])
        rows.append(["schedules measured", *[str(s["schedules"]) for s in sets]])
        rows.append(["seconds measuring", *[f"{s['search_seconds']:.0f}" for s in sets]])
        lines += [md_table(["budget", *heads], rows)]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    def draw(ax, m):
        for s in m["settings"]:
            pts = [(p["fraction"], 100 * p["pick"]["test_top1"]) for p in s["picks"] if p["pick"]]
            ax.plot(*zip(*pts), "-o", ms=3, label=f"N={s['images']} G={s['grid']} R={s['refine']}")
        ax.axhline(100 * m["unpruned_test_accuracy"], color="grey", lw=0.8, label="unpruned")

    plot_per_model(data, path, draw, "budget, % of the predicted unpruned latency", "test top-1 % of the pick")


def main(argv=None) -> None:
    ap = selection_parser(__doc__, "smoke: shipped model, 2 settings (32 and 16 images, grid 4), 3 budgets, 64 test images", budgets=True)
    args = ap.parse_args(argv)
    args.settings = SETTINGS
    if args.quick:
        args.models, args.fractions, args.test_limit = ["shipped"], [50, 70, 90], 64
        args.settings = [(32, 4, 1), (16, 4, 0)]
    args.fractions = [float(f) for f in args.fractions]
    run_selection_study("search_knobs", args, run_model, markdown, plot)


if __name__ == "__main__":
    main()
