"""Accuracy kept for the milliseconds: vitedge's measured objective against Fisher and the baselines.

    python benchmarks/accuracy_budget.py --threads 1                      # shipped model, ORT + LiteRT
    python benchmarks/accuracy_budget.py --threads 1 --name seed1 \\
        --checkpoint benchmarks/models/digits-vit-seed1/model.safetensors --configs ort-threshold ort-capacity
    python benchmarks/accuracy_budget.py --quick                          # smoke run

Per configuration (runtime x pruning mode), on this machine's CPU:
1. the unpruned model is exported and measured; budgets B = f x its median for f in ``--budgets``;
2. ``vitedge export`` itself (calibrate, profile, search, export, closed loop) at every B, once with the
   default ``--objective measured`` and once with ``--objective fisher`` (RCTP): measured median, test
   top-1 (digits test split, 600 images, held out from training and calibration), the calibration estimate
   and the search time; then ``--max-accuracy-drop 1`` alone;
3. the baselines, every member exported and measured in the same runtime: POMT-style single cuts (CLS
   top-K at one block l, K patch tokens from there on), RCTP's constant Top-K (K_l = P - r (l + 1)) and,
   in threshold mode, RCTP's FLOPs-Viterbi. At each B a family is represented by its member with the best
   *calibration* accuracy whose measured median is <= B (POMT's selection rule), and that member's test top-1;
4. latency at equal accuracy: per method, the fastest measured point whose test top-1 is within 1 point
   of the unpruned model's.
Writes results/accuracy_budget[_NAME].{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, md_table, save_plot, write_results
from _methods import constant_capacities
from vitedge.context import Context, Options
from vitedge.data.digits import digits_split
from vitedge.exporters.registry import get_exporter
from vitedge.pipeline import BudgetNotMetError, run_export
from vitedge.quality import QualityEvaluator
from vitedge.search import BudgetUnreachableError
from vitedge.search.planner import Planner

CONFIGS = {"ort-threshold": ("onnx", "threshold"), "ort-capacity": ("onnx", "capacity"), "litert-capacity": ("tflite", "capacity"),
           "ort-auto": ("onnx", "auto")}  # auto: vitedge's default for ONNX, the measured search over both modes
METHODS = ("vitedge", "fisher", "pomt", "topk", "flops_viterbi")
LABELS = {"vitedge": "vitedge (measured objective)", "fisher": "vitedge --objective fisher (RCTP)",
          "pomt": "POMT-style single cut", "topk": "constant Top-K (RCTP baseline)", "flops_viterbi": "RCTP FLOPs-Viterbi"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def baselines(ctx: Context, table, work: Path, test, args) -> dict:
    """Export and measure every member of the baseline families, their tokens scored by CLS attention and the pruned
    tokens dropped (no package token), as in their papers (RCTP, POMT); accuracy from the batched evaluator."""
    with ctx.model.pruning(token_score="cls-attention", package_token=False):
        return _baselines(ctx, ctx.calibration(), table, work, QualityEvaluator(ctx.model, test),
                          QualityEvaluator(ctx.model, ctx.images), args)


def _baselines(ctx: Context, cal, table, work: Path, test_ev: QualityEvaluator, calib_ev: QualityEvaluator, args) -> dict:
    model, P, L = ctx.model, ctx.model.num_patches, ctx.model.depth
    p = model.num_prefix
    ks = sorted({n - p for n in table.measured_tokens if 1 <= n - p < P})[::args.k_step]
    members = []
    for l in range(L):
        for k in ks:
            members.append(("pomt", {"site": l, "K": k}, "capacity", [None] * l + [k] * (L - l)))
    for r in range(1, args.topk_r + 1):
        members.append(("topk", {"r": r}, "capacity", [None if k >= P else k for k in constant_capacities(P, L, r)]))
    if ctx.mode == "threshold":
        flops = Planner(cal, "flops", min_patch_tokens=model.min_patch_tokens)
        for f in np.linspace(0.05, 0.95, args.flops_points):
            s = flops.solve(float(f))
            if not s.keeps_everything:
                members.append(("flops_viterbi", {"flops": float(f)}, "threshold", s.thresholds))
    if ctx.format == "tflite":
        members = [m for m in members if m[2] == "capacity"]
    art = get_exporter(ctx.format)
    rows = []
    for i, (family, param, mode, values) in enumerate(members):
        (model.set_capacities if mode == "capacity" else model.set_thresholds)(values)
        path = work / f"{family}_{i}{art.suffix}"
        art.export(model, path)
        c, t = calib_ev.evaluate(mode, values), test_ev.evaluate(mode, values)
        rows.append({"family": family, **param, "mode": mode, "values": values, "path": str(path),
                     "calib_accuracy": c.accuracy, "test_accuracy": t.accuracy, "test_agreement": t.agreement,
                     "mean_kept": [float(v) for v in t.kept.mean(axis=1)]})
    model.set_thresholds([None] * L)
    order = list(range(len(rows)))
    random.Random(args.seed).shuffle(order)  # machine drift spread over the families
    for i in order:
        rows[i]["measured_ms"] = ctx.device.measure_model(Path(rows[i]["path"]), ctx.feeds(), name=f"b{i}")["median_ms"]
    log(f"  baselines: {len(rows)} members exported and measured")
    return rows


def pick(rows: list[dict], family: str, budget: float) -> dict | None:
    """POMT's rule: the member with the best calibration accuracy whose measured median fits."""
    fit = [r for r in rows if r["family"] == family and r["measured_ms"] <= budget]
    return max(fit, key=lambda r: (r["calib_accuracy"], -r["measured_ms"])) if fit else None


def run_config(name: str, args, work: Path, test) -> dict:
    fmt, mode = CONFIGS[name]
    opts = Options(checkpoint=args.checkpoint, threads=args.threads, format=fmt, mode=mode, progress=False,
                   cache_dir=str(work / "cache"), calib_limit=args.calib_limit)
    ctx = Context(opts, log=lambda m: None)
    model = ctx.model
    table = ctx.latency_table()
    test_ev, calib_ev = QualityEvaluator(model, test), QualityEvaluator(model, ctx.images)
    art = get_exporter(fmt)
    art.export(model, work / f"unpruned{art.suffix}", pruned=False)
    unpruned = ctx.device.measure_model(work / f"unpruned{art.suffix}", ctx.feeds(), name="unpruned")["median_ms"]
    log(f"{name}: unpruned {unpruned:.3f} ms, test top-1 {100 * test_ev.unpruned_accuracy:.1f} %")
    rows = baselines(ctx, table, work / name, test, args) if not args.no_baselines else []
    runs = []

    def export(objective: str, budget: float | None, drop: float | None, tag: str) -> dict:
        ctx.opts.objective = objective
        t0 = time.time()
        rec = {"objective": objective, "budget_ms": budget, "max_accuracy_drop": drop}
        try:
            rep = run_export(ctx, budget, work / name / tag, max_accuracy_drop=drop, max_rounds=args.max_rounds, log=lambda m: None)
        except (BudgetNotMetError, BudgetUnreachableError) as e:
            rec.update(error=str(e), seconds=round(time.time() - t0, 1))
            log(f"  {tag}: {e}")
            return rec
        acc = rep["accuracy"]
        est = rep["calibration_estimate"] or {"drop_points": 0.0, "note": "keep-all fast path (nothing pruned)"}
        rec.update(measured_ms=rep["measured_ms"]["median"], budget_met=rep["budget_met"], test_accuracy=acc["pruned"],
                   test_agreement=acc["top1_agreement_with_unpruned"], calib_estimate=est,
                   gap_points=acc.get("calibration_to_eval_gap_points"), family=rep["schedule"].get("family"), mode=rep["mode"],
                   mean_kept=[b["mean_kept_tokens"] for b in rep["schedule"]["blocks"]], rounds=len(rep["rounds"]),
                   search=rep.get("search"), seconds=round(time.time() - t0, 1), notes=rep["notes"])
        log(f"  {tag}: {rec['measured_ms']:.3f} ms ({rec['measured_ms'] / unpruned:.2f}x), test {100 * rec['test_accuracy']:.1f} %, "
            f"calib drop {est['drop_points']:.1f}, {rec['seconds']:.0f} s")
        return rec

    for f in args.budgets:
        for objective in ("measured", "fisher"):
            r = export(objective, f / 100 * unpruned, None, f"{objective}_{f}")
            runs.append({"fraction": f, **r})
    drop_run = export("measured", None, args.max_drop, "max_drop")
    table_rows = []
    for f in args.budgets:
        b = f / 100 * unpruned
        row = {"fraction": f, "budget_ms": b}
        for objective, key in (("measured", "vitedge"), ("fisher", "fisher")):
            r = next(x for x in runs if x["fraction"] == f and x["objective"] == objective)
            row[key] = None if "error" in r else {"test_accuracy": r["test_accuracy"], "measured_ms": r["measured_ms"],
                                                  "calib_drop": r["calib_estimate"]["drop_points"], "mode": r["mode"]}
        for fam in ("pomt", "topk", "flops_viterbi"):
            m = pick(rows, fam, b)
            row[fam] = None if m is None else {"test_accuracy": m["test_accuracy"], "measured_ms": m["measured_ms"],
                                               "calib_accuracy": m["calib_accuracy"]}
        table_rows.append(row)
    target = test_ev.unpruned_accuracy - 0.01
    points = {"vitedge": [(r["measured_ms"], r["test_accuracy"]) for r in runs + [drop_run] if r.get("objective") == "measured" and "error" not in r],
              "fisher": [(r["measured_ms"], r["test_accuracy"]) for r in runs if r["objective"] == "fisher" and "error" not in r]}
    for fam in ("pomt", "topk", "flops_viterbi"):
        points[fam] = [(r["measured_ms"], r["test_accuracy"]) for r in rows if r["family"] == fam]
    def fastest(pts):  # the fastest measured point that keeps the target accuracy (None: not reached)
        return min((ms for ms, a in pts if a >= target - 1e-9), default=None)

    equal = {k: fastest(v) for k, v in points.items() if v}
    picked = {k: [(r[k]["measured_ms"], r[k]["test_accuracy"]) for r in table_rows if r.get(k)] for k in METHODS}
    equal_picked = {k: fastest(v) for k, v in picked.items() if v}
    return {"config": name, "format": fmt, "mode": mode, "unpruned_ms": unpruned, "unpruned_test_accuracy": test_ev.unpruned_accuracy,
            "unpruned_calib_accuracy": calib_ev.unpruned_accuracy, "calibration_images": len(ctx.images),
            "runs": runs, "max_drop_run": drop_run, "baselines": [{k: v for k, v in r.items() if k != "path"} for r in rows],
            "at_budget": table_rows, "latency_at_equal_accuracy_ms": equal,
            "latency_at_equal_accuracy_relative": {k: (None if v is None else v / unpruned) for k, v in equal.items()},
            "latency_at_equal_accuracy_picks_relative": {k: (None if v is None else v / unpruned) for k, v in equal_picked.items()}}


def fmt_cell(c, auto: bool = False) -> str:
    """test top-1 % (measured ms); with ``auto``, the mode the search chose (thr / cap)."""
    if c is None:
        return "–"
    mode = f" {c['mode'][:3]}" if auto and c.get("mode") else ""
    return f"{100 * c['test_accuracy']:.1f} ({c['measured_ms']:.3f}){mode}"


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = [f"# Accuracy at measured budgets ({data['name']})", "",
             f"Command: `{env['command']}`. CPU: {env.get('cpu_model', '?')} (affinity {env.get('cpu_affinity')}), {data['threads']} runtime thread(s), torch {env['torch']}, "
             f"load average at the end {env['load_average_1_5_15min']}. Model: {data['model']}. Test: digits test split "
             f"({data['test_images']} images, held out). Each cell: test top-1 % (measured median ms). vitedge and Fisher are "
             "`vitedge export` runs (closed loop); baselines are the member with the best calibration accuracy whose "
             "measured median fits the budget (POMT's rule). Token scores: vitedge's default (`--token-score significance`, "
             "both objectives); the baselines score by CLS attention, as in their papers. Measured on a shared 2-core "
             "machine: latencies are noisy.", ""]
    for c in data["configs"]:
        lines += [f"## {c['config']}: unpruned {c['unpruned_ms']:.3f} ms, test top-1 {100 * c['unpruned_test_accuracy']:.1f} % "
                  f"(calibration {100 * c['unpruned_calib_accuracy']:.1f} % on {c['calibration_images']} images)", ""]
        heads = ["budget"] + [LABELS[m] for m in METHODS]
        auto = c["mode"] == "auto"
        body = [[f"{r['fraction']} % ({r['budget_ms']:.3f} ms)"] + [fmt_cell(r.get(m), auto) for m in METHODS] for r in c["at_budget"]]
        lines += [md_table(heads, body)]
        eq = c["latency_at_equal_accuracy_relative"]
        lines.append("Latency at equal accuracy (fastest measured point with test top-1 >= unpruned - 1 point), / unpruned: "
                     + ", ".join(f"{LABELS[k]} {'not reached' if v is None else f'{v:.3f}'}" for k, v in eq.items())
                     + ". (vitedge: its exports; a baseline: every member, chosen on test accuracy.)")
        eq = c.get("latency_at_equal_accuracy_picks_relative")
        if eq:
            lines.append("Like for like, from the picks at the budgets above only (each method's own rule at each budget), / unpruned: "
                         + ", ".join(f"{LABELS[k]} {'not reached' if v is None else f'{v:.3f}'}" for k, v in eq.items()) + ".")
        d = c["max_drop_run"]
        if "error" not in d:
            lines.append(f"`--max-accuracy-drop {d['max_accuracy_drop']:g}`: measured {d['measured_ms']:.3f} ms "
                         f"({d['measured_ms'] / c['unpruned_ms']:.3f} x unpruned), test top-1 {100 * d['test_accuracy']:.1f} %, "
                         f"calibration drop {d['calib_estimate']['drop_points']:.1f} points, family {d['family']}, mode {d.get('mode')}.")
        gaps = [r["gap_points"] for r in c["runs"] if r.get("gap_points") is not None and r["objective"] == "measured"]
        secs = [r["search"]["seconds"] for r in c["runs"] if r.get("search")]
        if gaps:
            lines.append(f"Calibration -> test gap (estimated drop - test drop, points), measured objective: median {np.median(gaps):+.1f}, "
                         f"range {min(gaps):+.1f} .. {max(gaps):+.1f}.")
        if secs:
            lines.append(f"Search time (measuring candidates, cumulative over the sweep on one context): last {secs[-1]:.1f} s; "
                         f"evaluations {[r['search']['evaluations'] for r in c['runs'] if r.get('search')][-1]}.")
        wins = sum(1 for r in c["at_budget"] if r["vitedge"] is not None and all(
            r.get(m) is None or r["vitedge"]["test_accuracy"] >= r[m]["test_accuracy"] - 0.005 for m in ("pomt", "topk", "flops_viterbi")))
        lines += [f"vitedge >= every baseline (within 0.5 point) at {wins} of {len(c['at_budget'])} budgets.", ""]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = data["configs"]
    fig, axes = plt.subplots(1, len(cs), figsize=(5.5 * len(cs), 4), squeeze=False)
    for ax, c in zip(axes[0], cs):
        for m in METHODS:
            pts = [(r["fraction"], 100 * r[m]["test_accuracy"]) for r in c["at_budget"] if r.get(m)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=LABELS[m])
        ax.axhline(100 * c["unpruned_test_accuracy"], color="k", lw=0.8, ls="--", label="unpruned")
        ax.set_title(c["config"])
        ax.set_xlabel("budget, % of unpruned measured latency")
        ax.set_ylabel("test top-1 %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save_plot(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS)[:3], choices=list(CONFIGS))
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="%% of the unpruned latency (default 45 55 65 75 85 95)")
    ap.add_argument("--checkpoint", default=None, help="weights of the reference architecture (default: the shipped model)")
    ap.add_argument("--name", default=None, help="results suffix (accuracy_budget_NAME)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-limit", type=int, default=None)
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--max-rounds", type=int, default=5)
    ap.add_argument("--k-step", type=int, default=4, help="every k-th measured token count for the single cuts")
    ap.add_argument("--topk-r", type=int, default=10)
    ap.add_argument("--flops-points", type=int, default=18)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke: ORT threshold, two budgets, coarse baselines")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.configs, args.k_step, args.topk_r, args.flops_points = ["ort-threshold"], 16, 3, 4
        args.budgets = args.budgets or [55, 85]
        args.calib_limit = args.calib_limit or 64
    args.budgets = args.budgets or [45, 55, 65, 75, 85, 95]
    torch.set_num_threads(max(1, args.threads))
    test = digits_split("test")
    data = {"name": args.name or "shipped", "threads": args.threads,
            "model": args.checkpoint or "vitedge-digits-vit (shipped)", "test_images": len(test), "configs": []}
    with tempfile.TemporaryDirectory(prefix="vitedge-accbudget-") as tmp:
        for name in args.configs:
            t0 = time.time()
            data["configs"].append(run_config(name, args, Path(tmp), test))
            data["configs"][-1]["seconds"] = round(time.time() - t0, 1)
            log(f"{name} done in {time.time() - t0:.0f} s")
    data["environment"] = environment()
    stem = "accuracy_budget" + (f"_{args.name}" if args.name else "")
    write_results(stem, data, markdown(data), args.out)
    plot(data, args.out / f"{stem}.png")
    log(f"wrote {args.out / stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
