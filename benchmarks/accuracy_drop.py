"""``--max-accuracy-drop D``: the drop on held-out test images of the schedule the search ships, by bound.

    taskset -c 0 python benchmarks/accuracy_drop.py --threads 1
    python benchmarks/accuracy_drop.py --quick            # smoke run

Per model (the shipped one and the seed-1 one), ONNX, both pruning modes (``--mode auto``): the measured search
on the 200 calibration digits (every knob at its default, ``--search-seconds`` unbounded so that machine load
does not change the knobs), then for each D the fastest candidate by two rules:

- ``own``: its own one-sided 90 % bound of the paired drop fits D (vitedge before the pooled bound);
- ``pooled`` (what ``MeasuredSearch.fastest_within`` ships): also the isotonic-in-KL drop over every evaluated
  candidate, plus the same margin, fits D (:meth:`MeasuredSearch.drop_bounds`).

Each pick's predicted latency (/ the predicted unpruned latency, from this machine's latency table) and its
drop on the 600 test digits (batched evaluator; equals the deployed forward). Selection only: nothing is
exported or timed, so the CPU load does not change the result. Writes results/accuracy_drop.{json,md,png}.
"""
from __future__ import annotations

import time
from pathlib import Path

from _common import md_table, plot_per_model, profile_options, run_selection_study, selection_parser, study_header
from vitedge.context import Context, Options
from vitedge.data.digits import digits_split
from vitedge.pipeline import make_search
from vitedge.quality import QualityEvaluator



def run_model(name: str, ckpt, args, cache: Path) -> dict:
    opts = Options(checkpoint=ckpt, threads=args.threads, format="onnx", mode="auto", progress=False, cache_dir=str(cache),
                   calib_limit=args.calib_limit, search_seconds=1e9, search_knobs=args.knobs,
                   **profile_options(args))
    ctx = Context(opts, log=lambda m: None)
    search, _ = make_search(ctx, ctx.calibration(), ctx.latency_table(), log=lambda m: None)
    test = QualityEvaluator(ctx.model, digits_split("test").subset(args.test_limit) if args.test_limit else digits_split("test"))
    t0 = time.time()
    for d in args.drops:
        search.fastest_within(d)  # refinement adds the candidates either rule may pick
    rows = []
    pooled = search.drop_bounds()
    for d in args.drops:
        for rule in ("own", "pooled"):
            def fits(c):
                b = c.drop_bound if rule == "own" else pooled[id(c)]
                return b <= d + 1e-9 or all(i == 0 for i in c.indices)
            c = min(filter(fits, search.candidates), key=lambda c: (c.predicted_ms, -c.top1))
            q = test.evaluate(c.mode, search.values(c.indices, c.mode))
            rows.append({"max_drop": d, "rule": rule, "mode": c.mode, "family": c.family, "candidates": list(c.indices),
                         "predicted_relative": c.predicted_ms / search.full, "calib_drop": c.drop,
                         "own_bound": c.drop_bound, "pooled_bound": pooled[id(c)],
                         "test_drop": 100 * (test.unpruned_accuracy - q.accuracy)})
    print(f"{name}: {len(search.candidates)} candidates, {time.time() - t0:.0f} s", flush=True)
    return {"model": name, "checkpoint": ckpt or "shipped", "calibration_images": len(search.evaluator),
            "test_images": len(test), "unpruned_test_accuracy": test.unpruned_accuracy, "candidates": len(search.candidates),
            "knobs": search.knobs.__dict__, "rows": rows}


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = ["# `--max-accuracy-drop D`: test drop of the shipped pick, own bound vs pooled bound", "",
             study_header(env) +
             "ONNX, `--mode auto`, calibration: the 200 calibration digits; test: the 600 held-out test digits. "
             "Latency is the table's prediction / its unpruned prediction (selection only, nothing timed).", ""]
    for m in data["models"]:
        lines += [f"## {m['model']} (unpruned test top-1 {100 * m['unpruned_test_accuracy']:.1f} %, {m['candidates']} candidates)", ""]
        body = [[f"{r['max_drop']:g}", r["rule"], f"{r['predicted_relative']:.3f}", f"{r['calib_drop']:.1f}",
                 f"{r['own_bound']:.1f}", f"{r['pooled_bound']:.1f}", f"**{r['test_drop']:.1f}**",
                 "yes" if r["test_drop"] <= r["max_drop"] + 1e-9 else "no", f"{r['mode']} / {r['family']}"] for r in m["rows"]]
        lines += [md_table(["D (points)", "rule", "latency / unpruned", "calib drop", "own bound", "pooled bound",
                            "test drop", "test drop <= D", "mode / family"], body), ""]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    def draw(ax, m):
        for rule, mk in (("own", "o"), ("pooled", "s")):
            rs = [r for r in m["rows"] if r["rule"] == rule]
            ax.plot([r["max_drop"] for r in rs], [r["test_drop"] for r in rs], marker=mk, label=f"{rule} bound")
        ds = sorted({r["max_drop"] for r in m["rows"]})
        ax.plot(ds, ds, "k--", lw=0.8, label="test drop = D")

    plot_per_model(data, path, draw, "--max-accuracy-drop D (points)", "test drop (points)")


def main(argv=None) -> None:
    ap = selection_parser(__doc__, "smoke: shipped model, 2 drops, 32 calibration / 64 test images, grid 4")
    ap.add_argument("--drops", nargs="+", type=float, default=[0.5, 1, 2, 3, 5])
    args = ap.parse_args(argv)
    args.knobs = {}
    if args.quick:
        args.models, args.drops, args.calib_limit, args.test_limit = ["shipped"], [1, 5], 32, 64
        args.knobs = {"grid": 4, "sweep": 2, "refine": 1}
    run_selection_study("accuracy_drop", args, run_model, markdown, plot)


if __name__ == "__main__":
    main()
