"""Shared by the selection studies that compare variants of the pruned model on one latency table per model
(``token_score.py``: how selectors score tokens; ``package_token.py``: what happens to the pruned tokens):
single cuts and the measured search's picks per variant, their report sections and plot."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import md_table, plot_per_model, profile_options, run_selection_study, selection_parser, study_header
from vitedge.context import Context, Options
from vitedge.data.digits import digits_split
from vitedge.pipeline import make_search
from vitedge.quality import QualityEvaluator

SITES, KS = (0, 1, 2), (14, 20, 27, 35, 45)  # single cuts: blocks, patch tokens kept of 64


def search_rows(ctx, table, test_set, fractions) -> dict:
    """The measured search as the model is configured now: its picks per budget (``fractions``, % of the predicted
    unpruned latency) with their test top-1, the mean, the fastest pick within 1 point of the unpruned test top-1,
    and the fastest of every evaluated candidate chosen on test (the search space's ceiling)."""
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


def single_cut_gains(cuts: list[dict], key: str, names: list[str]) -> dict:
    """Per variant after the first: its test top-1 minus the first variant's, in points, cut by cut."""
    by = {v: [c["test_top1"] for c in cuts if c[key] == v] for v in names}
    return {v: [100 * (b - a) for a, b in zip(by[names[0]], by[v])] for v in names[1:]}


def model_section(m: dict, key: str, names: list[str], cut_note: str) -> list[str]:
    """The report lines of one model: the single cuts per variant, the gains, the search's picks, within 1 point."""
    lines = [f"## {m['model']}: unpruned test top-1 {100 * m['unpruned_test_top1']:.1f} %", "", cut_note, ""]
    rows = []
    for c in [c for c in m["single_cuts"] if c[key] == names[0]]:
        by = {x[key]: x["test_top1"] for x in m["single_cuts"] if x["site"] == c["site"] and x["K"] == c["K"]}
        rows.append([c["site"], c["K"], *[f"{100 * by[v]:.1f}" for v in names]])
    lines += [md_table(["block l", "K", *names], rows)]
    for v, g in m["single_cut_gain_points"].items():
        lines += [f"Gain of {v} over {names[0]}: mean {np.mean(g):+.2f} points, {sum(x > 0 for x in g)} better / "
                  f"{sum(x < 0 for x in g)} worse of {len(g)} cuts."]
    lines += ["", "The measured search with each, test top-1 % of its pick (predicted latency / unpruned, mode):", ""]
    rows = []
    for i, first in enumerate(m["search"][names[0]]["picks"]):
        cell = []
        for v in names:
            p = m["search"][v]["picks"][i]
            cell.append("–" if p["pick"] is None else
                        f"{100 * p['pick']['test_top1']:.1f} ({p['pick']['predicted_relative']:.2f} {p['pick']['mode'][:3]})")
        rows.append([f"{first['fraction']:g} %", *cell])
    rows.append(["**mean**", *[f"**{100 * m['search'][v]['mean_test_top1']:.2f}**" for v in names]])
    lines += [md_table(["budget", *names], rows)]

    def f(x):
        return "not reached" if x is None else f"{x:.3f}"
    lines += ["Within 1 point of the unpruned test top-1, fastest (predicted / unpruned), the search's picks: "
              + ", ".join(f"{v} {f(m['search'][v]['fastest_pick_within_1_point'])}" for v in names)
              + "; any evaluated candidate chosen on test (the ceiling): "
              + ", ".join(f"{v} {f(m['search'][v]['ceiling_fastest_within_1_point'])}" for v in names)
              + ". Schedules evaluated: " + ", ".join(f"{v} {m['search'][v]['candidates']} in {m['search'][v]['seconds']:.0f} s"
                                                      for v in names) + ".", ""]
    return lines


def plot_picks(data: dict, path: Path, names: list[str]) -> None:
    """Per model: the test top-1 of the search's pick per budget, one line per variant, and the unpruned model's."""
    def draw(ax, m):
        for v, style in zip(names, ("-o", "-s", "-^", "-v")):
            pts = [(p["fraction"], 100 * p["pick"]["test_top1"]) for p in m["search"][v]["picks"] if p["pick"]]
            ax.plot(*zip(*pts), style, label=f"search pick, {v}")
        ax.axhline(100 * m["unpruned_test_top1"], color="grey", lw=0.8, label="unpruned")

    plot_per_model(data, path, draw, "budget, % of the predicted unpruned latency", "test top-1 %")


def run_variants(name: str, ckpt, args, cache: Path, variants: dict, key: str) -> dict:
    """One model (``ckpt``; None: the shipped one), ONNX, ``--mode auto``, search knobs ``args.knobs`` and no time limit:
    per variant (name -> the :meth:`~vitedge.models.adapter.PrunableViT.pruning` settings it runs under, e.g.
    ``{"token_score": "significance"}``), the single cuts' and the search's test top-1, on one latency table."""
    opts = Options(checkpoint=ckpt, threads=args.threads, format="onnx", mode="auto", progress=False, cache_dir=str(cache),
                   calib_limit=args.calib_limit, search_seconds=1e9, search_knobs=args.knobs, **profile_options(args))
    ctx = Context(opts, log=lambda m: None)
    model, table = ctx.model, ctx.latency_table()
    test_set = digits_split("test").subset(args.test_limit) if args.test_limit else digits_split("test")
    L, P = model.depth, model.num_patches
    out = {"model": name, "checkpoint": ckpt or "shipped", "calibration_images": len(ctx.images), "test_images": len(test_set),
           "single_cuts": [], "search": {}}
    t0 = time.time()
    for variant, settings in variants.items():
        with model.pruning(**settings):
            test = QualityEvaluator(model, test_set)
            out["unpruned_test_top1"] = test.unpruned_accuracy
            for site in args.sites:
                for k in args.ks:
                    caps = [None] * site + [k] * (L - site)
                    out["single_cuts"].append({key: variant, "site": site, "K": k, "of": P,
                                               "test_top1": test.evaluate("capacity", caps).accuracy})
            out["search"][variant] = search_rows(ctx, table, test_set, args.fractions)
    out["single_cut_gain_points"] = single_cut_gains(out["single_cuts"], key, list(variants))
    print(f"{name}: {time.time() - t0:.0f} s; mean pick test top-1 "
          f"{ {v: round(100 * out['search'][v]['mean_test_top1'], 2) for v in variants} }", flush=True)
    return out


def variants_main(study: str, doc: str, variants: dict, key: str, title: str, setup: str, cut_note: str, argv=None) -> None:
    """The command line of a variant study: ``selection_parser``'s flags (``--quick``: the shipped model, 3 budgets,
    32 calibration / 64 test images, grid 4, the cuts at block 1 keeping 20 and 45), then results/STUDY.{json,md,png}:
    the report is ``title``, the command and ``setup``, and per model :func:`model_section` (``cut_note`` over its cuts)."""
    ap = selection_parser(doc, "smoke: shipped model, 3 budgets, 32 calibration / 64 test images, grid 4, 2 cuts", budgets=True)
    args = ap.parse_args(argv)
    args.knobs, args.sites, args.ks = {}, list(SITES), list(KS)
    if args.quick:
        args.models, args.fractions, args.calib_limit, args.test_limit = ["shipped"], [50, 70, 90], 32, 64
        args.knobs, args.sites, args.ks = {"grid": 4, "sweep": 2, "refine": 1}, [1], [20, 45]
    args.fractions = [float(f) for f in args.fractions]

    def markdown(data: dict) -> str:
        lines = [f"# {title}", "", study_header(data["environment"]) + setup, ""]
        for m in data["models"]:
            lines += model_section(m, key, list(variants), cut_note)
        return "\n".join(lines) + "\n"

    run_selection_study(study, args, lambda name, ckpt, a, cache: run_variants(name, ckpt, a, cache, variants, key),
                        markdown, lambda data, path: plot_picks(data, path, list(variants)))
