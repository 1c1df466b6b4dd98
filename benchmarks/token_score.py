"""How the selectors score patch tokens: the head-averaged CLS attention (RCTP, POMT), the ATS significance score, and
the significance averaged over the blocks since the previous selector (``cumulative-significance``).

    taskset -c 0 python benchmarks/token_score.py --threads 1
    python benchmarks/token_score.py --quick            # smoke run

The significance score (Fayyaz et al., ECCV 2022, eq. (3); ``--token-score significance``) weights the CLS
attention to a token by the norm of its value vector, summed over heads: what the token adds to the CLS output.
``cumulative-significance`` ranks by its mean over the blocks from the previous selector (or the embedding) to the
selector's block (vitedge.models.pruning.window_mean).
Per model (the shipped one and the seed-1 one), ONNX, ``--mode auto``, every search knob at its default and
``--search-seconds`` unbounded; one latency table per model serves both scores (predicted latency, nothing timed,
so the CPU load does not change the result):

1. single cuts (top-K at one block l, l = 0, 1, 2, K = 14..45 of 64): test top-1 with each score (at block 0 the
   cumulative score equals the significance);
2. the measured search with each score (its own calibration), at budgets of 45 to 97.5 % of the predicted
   unpruned latency: each pick's test top-1, the mean over budgets, and the fastest pick / the fastest of every
   evaluated candidate (chosen on test, the search space's ceiling) within 1 point of the unpruned test top-1.

Test: the 600 held-out test digits (batched evaluator; equals the deployed forward). Writes
results/token_score.{json,md,png}.
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

SCORES = ("cls-attention", "significance", "cumulative-significance")  # the first is the reference of the gains
SITES, KS = (0, 1, 2), (14, 20, 27, 35, 45)


def _search_rows(ctx, table, test_set, fractions) -> dict:
    """The measured search at the model's current token score: its picks per budget and the ceiling."""
    search, _ = make_search(ctx, ctx.calibration(), table, log=lambda m: None)
    test = QualityEvaluator(ctx.model, test_set)
    full, target = search.full, test.unpruned_accuracy - 0.01 - 1e-9
    picks = []
    for f in fractions:
        try:
            c = search.best(f / 100 * full)
        except ValueError:  # below every candidate (BudgetUnreachableError)
            picks.append({"fraction": f, "pick": None})
            continue
        picks.append({"fraction": f, "pick": {"mode": c.mode, "family": c.family, "candidates": [int(i) for i in c.indices],
                                              "predicted_relative": c.predicted_ms / full, "calib_top1": c.top1,
                                              "test_top1": test.evaluate(c.mode, search.values(c.indices, c.mode)).accuracy}})
    cands = {(c.mode, c.indices): c for c in search.candidates}
    pts = [(c.predicted_ms / full, test.evaluate(c.mode, search.values(c.indices, c.mode)).accuracy) for c in cands.values()]
    answered = [p["pick"] for p in picks if p["pick"]]
    return {"picks": picks, "mean_test_top1": float(np.mean([p["test_top1"] for p in answered])),
            "fastest_pick_within_1_point": min((p["predicted_relative"] for p in answered if p["test_top1"] >= target), default=None),
            "ceiling_fastest_within_1_point": min((r for r, a in pts if a >= target), default=None),
            "candidates": len(pts), "seconds": round(search.seconds, 1)}


def run_model(name: str, ckpt, args, cache: Path) -> dict:
    opts = Options(checkpoint=ckpt, threads=args.threads, format="onnx", mode="auto", progress=False, cache_dir=str(cache),
                   calib_limit=args.calib_limit, search_seconds=1e9, search_knobs=args.knobs,
                   **profile_options(args))
    ctx = Context(opts, log=lambda m: None)
    model, table = ctx.model, ctx.latency_table()
    test_set = digits_split("test").subset(args.test_limit) if args.test_limit else digits_split("test")
    L, P = model.depth, model.num_patches
    out = {"model": name, "checkpoint": ckpt or "shipped", "calibration_images": len(ctx.images), "test_images": len(test_set),
           "single_cuts": [], "search": {}}
    t0 = time.time()
    for score in SCORES:
        with model.pruning(token_score=score):
            test = QualityEvaluator(model, test_set)
            out["unpruned_test_top1"] = test.unpruned_accuracy
            for site in args.sites:
                for k in args.ks:
                    caps = [None] * site + [k] * (L - site)
                    out["single_cuts"].append({"score": score, "site": site, "K": k, "of": P,
                                               "test_top1": test.evaluate("capacity", caps).accuracy})
            out["search"][score] = _search_rows(ctx, table, test_set, args.fractions)
    cuts = {s: [c["test_top1"] for c in out["single_cuts"] if c["score"] == s] for s in SCORES}
    out["single_cut_gain_points"] = {s: [100 * (b - a) for a, b in zip(cuts[SCORES[0]], cuts[s])] for s in SCORES[1:]}
    print(f"{name}: {time.time() - t0:.0f} s; mean pick test top-1 "
          f"{ {s: round(100 * out['search'][s]['mean_test_top1'], 2) for s in SCORES} }", flush=True)
    return out


def markdown(data: dict) -> str:
    env = data["environment"]
    ref = SCORES[0]
    lines = ["# Token score: CLS attention (RCTP, POMT) vs ATS significance vs significance averaged over blocks", "",
             study_header(env) +
             "ONNX, `--mode auto`; calibration: the 200 calibration digits; test: the 600 held-out test digits. Budgets and "
             "latency: the table's prediction / its unpruned prediction (one table per model, profiled with the default "
             "score; selection only, nothing timed).", ""]
    for m in data["models"]:
        lines += [f"## {m['model']}: unpruned test top-1 {100 * m['unpruned_test_top1']:.1f} %", "",
                  "Single cuts (top-K at block l, K of 64 patch tokens kept from block l on), test top-1 %:", ""]
        rows = []
        for c in [c for c in m["single_cuts"] if c["score"] == ref]:
            by = {x["score"]: x["test_top1"] for x in m["single_cuts"] if x["site"] == c["site"] and x["K"] == c["K"]}
            rows.append([c["site"], c["K"], *[f"{100 * by[s]:.1f}" for s in SCORES]])
        lines += [md_table(["block l", "K", *SCORES], rows)]
        for s, g in m["single_cut_gain_points"].items():
            lines += [f"Gain of {s} over {ref}: mean {np.mean(g):+.2f} points, {sum(x > 0 for x in g)} better / "
                      f"{sum(x < 0 for x in g)} worse of {len(g)} cuts."]
        lines += ["", "The measured search with each score, test top-1 % of its pick (predicted latency / unpruned, mode):", ""]
        rows = []
        for i, pa in enumerate(m["search"][ref]["picks"]):
            cell = []
            for s in SCORES:
                p = m["search"][s]["picks"][i]
                cell.append("–" if p["pick"] is None else
                            f"{100 * p['pick']['test_top1']:.1f} ({p['pick']['predicted_relative']:.2f} {p['pick']['mode'][:3]})")
            rows.append([f"{pa['fraction']:g} %", *cell])
        rows.append(["**mean**", *[f"**{100 * m['search'][s]['mean_test_top1']:.2f}**" for s in SCORES]])
        lines += [md_table(["budget", *SCORES], rows)]

        def f(v):
            return "not reached" if v is None else f"{v:.3f}"
        lines += ["Within 1 point of the unpruned test top-1, fastest (predicted / unpruned), the search's picks: "
                  + ", ".join(f"{s} {f(m['search'][s]['fastest_pick_within_1_point'])}" for s in SCORES)
                  + "; any evaluated candidate chosen on test (the ceiling): "
                  + ", ".join(f"{s} {f(m['search'][s]['ceiling_fastest_within_1_point'])}" for s in SCORES)
                  + ". Schedules evaluated: " + ", ".join(f"{s} {m['search'][s]['candidates']} in {m['search'][s]['seconds']:.0f} s"
                                                          for s in SCORES) + ".", ""]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    def draw(ax, m):
        for s, style in zip(SCORES, ("-o", "-s", "-^")):
            pts = [(p["fraction"], 100 * p["pick"]["test_top1"]) for p in m["search"][s]["picks"] if p["pick"]]
            ax.plot(*zip(*pts), style, label=f"search pick, {s}")
        ax.axhline(100 * m["unpruned_test_top1"], color="grey", lw=0.8, label="unpruned")

    plot_per_model(data, path, draw, "budget, % of the predicted unpruned latency", "test top-1 %")


def main(argv=None) -> None:
    ap = selection_parser(__doc__, "smoke: shipped model, 3 budgets, 32 calibration / 64 test images, grid 4, 2 cuts", budgets=True)
    args = ap.parse_args(argv)
    args.knobs, args.sites, args.ks = {}, list(SITES), list(KS)
    if args.quick:
        args.models, args.fractions, args.calib_limit, args.test_limit = ["shipped"], [50, 70, 90], 32, 64
        args.knobs, args.sites, args.ks = {"grid": 4, "sweep": 2, "refine": 1}, [1], [20, 45]
    args.fractions = [float(f) for f in args.fractions]
    run_selection_study("token_score", args, run_model, markdown, plot)


if __name__ == "__main__":
    main()
