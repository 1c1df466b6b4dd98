"""Which measured quality should rank the candidates: KL divergence (``--select-by kl``) or top-1 (``top1``).

    taskset -c 0 python benchmarks/selection_rule.py --threads 1
    python benchmarks/selection_rule.py --quick            # smoke run

Per model (the shipped one and the seed-1 one), ONNX, both pruning modes (``--mode auto``): two measured
searches on the 200 calibration digits that share one evaluator (so both see the same measurements; each
refines around its own picks), every knob at its default, ``--search-seconds`` unbounded so that machine load
does not change the knobs. At budgets of 45 to 97.5 % of the predicted unpruned latency (this machine's
latency table), each search's pick and, from the same evaluated candidates, the baselines' picks by POMT's
rule (best calibration accuracy among the family's members that fit): POMT-style single cut and constant
rate. Every pick's top-1 on the 600 held-out test digits (batched evaluator; equals the deployed forward).
The search space's ceiling: every measured candidate's test top-1, i.e. what an oracle choosing on the test
images would get at each budget, and the fastest candidate within 1 point of the unpruned test top-1.
Selection only: nothing is exported or timed, so the CPU load does not change the result.
Writes results/selection_rule.{json,md,png}.
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
from vitedge.search.measured import RANKS, MeasuredSearch

BASELINES = {"pomt": ("single-cut",), "constant": ("constant-rate",)}  # family of the baseline's members
METHODS = [f"vitedge {r}" for r in RANKS] + list(BASELINES)


def run_model(name: str, ckpt, args, cache: Path) -> dict:
    opts = Options(checkpoint=ckpt, threads=args.threads, format="onnx", mode="auto", progress=False, cache_dir=str(cache),
                   calib_limit=args.calib_limit, search_seconds=1e9, search_knobs=args.knobs,
                   **profile_options(args))
    ctx = Context(opts, log=lambda m: None)
    base, evaluator = make_search(ctx, ctx.calibration(), ctx.latency_table(), log=lambda m: None)
    searches = {r: MeasuredSearch(list(base.planners.values()), evaluator, base.knobs, rank=r) for r in RANKS}
    test = QualityEvaluator(ctx.model, digits_split("test").subset(args.test_limit) if args.test_limit else digits_split("test"))
    full = searches["kl"].full
    t0 = time.time()
    rows = []
    for f in args.fractions:
        budget = f / 100 * full
        row = {"fraction": f}
        for rank, search in searches.items():
            try:
                row[f"vitedge {rank}"] = search.best(budget)
            except ValueError:  # below every candidate (BudgetUnreachableError)
                row[f"vitedge {rank}"] = None
        pool = [c for s in searches.values() for c in s.candidates if c.predicted_ms <= budget]
        for key, fams in BASELINES.items():
            members = [c for c in pool if c.family in fams or all(i == 0 for i in c.indices)]
            row[key] = max(members, key=lambda c: (c.top1, -c.quality.kl)) if members else None  # POMT's rule
        for k in METHODS:
            c = row[k]
            row[k] = None if c is None else {
                "mode": c.mode, "family": c.family, "candidates": [int(i) for i in c.indices],
                "predicted_relative": c.predicted_ms / full, "calib_top1": c.top1, "calib_kl": c.quality.kl,
                "test_top1": test.evaluate(c.mode, searches["kl"].values(c.indices, c.mode)).accuracy}
        rows.append(row)
    means = {k: float(np.mean([r[k]["test_top1"] for r in rows if r[k]])) for k in METHODS}
    ceiling = search_space_ceiling(searches, test, full, rows)
    print(f"{name}: {sum(len(s.candidates) for s in searches.values())} candidates over both searches, "
          f"{time.time() - t0:.0f} s; mean test top-1 {means}", flush=True)
    return {"model": name, "checkpoint": ckpt or "shipped", "calibration_images": len(evaluator), "test_images": len(test),
            "unpruned_test_accuracy": test.unpruned_accuracy, "unpruned_calib_accuracy": evaluator.unpruned_accuracy,
            "knobs": base.knobs.__dict__, "rows": rows, "mean_test_top1": means, "ceiling": ceiling,
            "candidates": evaluator.evaluations, "seconds": sum(s.seconds for s in searches.values())}


def search_space_ceiling(searches: dict, test: QualityEvaluator, full: float, rows: list) -> dict:
    """What no selection rule over these candidates can beat: every evaluated candidate's *test* top-1 (an oracle
    that chooses on the test images), per budget the best that fits, and the fastest (predicted, / unpruned) within
    1 point of the unpruned test top-1, next to each method's fastest pick within it (from ``rows``)."""
    cands = {(c.mode, c.indices): c for s in searches.values() for c in s.candidates}
    pts = [(c.predicted_ms / full, test.evaluate(c.mode, searches["kl"].values(c.indices, c.mode)).accuracy)
           for c in cands.values()]
    target = test.unpruned_accuracy - 0.01 - 1e-9
    per_budget = [max((a for r, a in pts if r <= row["fraction"] / 100), default=None) for row in rows]
    within = [r for r, a in pts if a >= target]
    methods = {k: min((row[k]["predicted_relative"] for row in rows if row[k] and row[k]["test_top1"] >= target), default=None)
               for k in METHODS}
    return {"candidates": len(pts), "best_test_top1_per_budget": per_budget, "fastest_within_1_point": min(within),
            "methods_fastest_within_1_point": methods}


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = ["# Ranking the measured candidates: KL divergence vs top-1", "",
             study_header(env) +
             "ONNX, `--mode auto`; calibration: the 200 calibration digits (labelled, so `top1` is the calibration accuracy); "
             "test: the 600 held-out test digits. Budget and latency: the table's prediction / its unpruned prediction "
             "(selection only, nothing timed). Baselines: the member of best calibration accuracy that fits (POMT's rule), "
             "among the same evaluated candidates, so they score tokens as the search does (`--token-score`, default significance "
             "since `token_score.md`; the results in the repo predate it: CLS attention). Each cell: test top-1 % "
             "(latency / unpruned, mode).", ""]
    for m in data["models"]:
        lines += [f"## {m['model']}: unpruned test top-1 {100 * m['unpruned_test_accuracy']:.1f} %, "
                  f"calibration {100 * m['unpruned_calib_accuracy']:.1f} %; grid {m['knobs']['grid']}, "
                  f"{m['candidates']} schedules measured in {m['seconds']:.0f} s", ""]
        body = []
        for r in m["rows"]:
            cells = []
            for k in METHODS:
                c = r[k]
                cells.append("–" if c is None else f"{100 * c['test_top1']:.1f} ({c['predicted_relative']:.2f} {c['mode'][:3]})")
            body.append([f"{r['fraction']:g} %", *cells])
        body.append(["**mean**", *[f"**{100 * m['mean_test_top1'][k]:.2f}**" for k in METHODS]])
        ce = m["ceiling"]
        for row, best in zip(body, ce["best_test_top1_per_budget"] + [None]):
            row.append("–" if best is None else f"{100 * best:.1f}")
        body[-1][-1] = ""
        lines += [md_table(["budget", *METHODS, "ceiling (test-chosen)"], body)]
        fast = ", ".join(f"{k} {'–' if v is None else f'{v:.3f}'}" for k, v in ce["methods_fastest_within_1_point"].items())
        lines += [f"Within 1 point of the unpruned test top-1, the fastest (predicted / unpruned): **any of the "
                  f"{ce['candidates']} measured candidates, chosen on the test images: {ce['fastest_within_1_point']:.3f}**; "
                  f"each method's picks at these budgets: {fast}. The ceiling column is the best test top-1 among all "
                  "measured candidates that fit (no rule that selects on calibration data can beat it).", ""]
        kl, top1 = ([r[k]["test_top1"] for r in m["rows"] if r[k]] for k in ("vitedge kl", "vitedge top1"))
        d = 100 * (np.array(kl) - np.array(top1))
        behind = [r["fraction"] for r in m["rows"] if r["vitedge kl"] and any(
            r[b] and r["vitedge kl"]["test_top1"] < r[b]["test_top1"] - 0.005 for b in BASELINES)]
        lines += [f"kl - top1 per budget (points): mean {d.mean():+.2f}, min {d.min():+.1f}, max {d.max():+.1f}; "
                  f"kl better at {int((d > 0).sum())}, worse at {int((d < 0).sum())} of {len(d)} budgets. "
                  f"`vitedge kl` more than 0.5 point behind a baseline at: {behind or 'none'}.", ""]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    def draw(ax, m):
        for k, mk in zip(METHODS, "os^v"):
            pts = [(r["fraction"], 100 * r[k]["test_top1"]) for r in m["rows"] if r[k]]
            ax.plot(*zip(*pts), marker=mk, ms=4, label=k)

    plot_per_model(data, path, draw, "budget (% of the predicted unpruned latency)", "test top-1 (%)")


def main(argv=None) -> None:
    ap = selection_parser(__doc__, "smoke: shipped model, 3 budgets, 32 calibration / 64 test images, grid 4", budgets=True)
    ap.add_argument("--search-grid", type=int, default=None, help="candidates per block (default: the search's, 24)")
    ap.add_argument("--search-refine", type=int, default=None, help="refinement rounds per budget (default: the search's, 2)")
    ap.add_argument("--name", default=None, help="results suffix (selection_rule_NAME)")
    args = ap.parse_args(argv)
    args.knobs = {k: v for k, v in (("grid", args.search_grid), ("refine", args.search_refine)) if v is not None}
    if args.quick:
        args.models, args.fractions, args.calib_limit, args.test_limit = ["shipped"], [50, 70, 90], 32, 64
        args.knobs = {"grid": 4, "sweep": 2, "refine": 1}
    args.fractions = [float(f) for f in args.fractions]
    run_selection_study("selection_rule" + (f"_{args.name}" if args.name else ""), args, run_model, markdown, plot)


if __name__ == "__main__":
    main()
