"""Threshold vs capacity mode, ONNX Runtime vs LiteRT (XNNPACK), package token: issue 3's evidence.

    python benchmarks/modes.py                                   # reference + vit_small_patch16_224
    python benchmarks/modes.py --models vitedge-digits-vit --quick  # smoke

One run, local CPU:
1. per model: unpruned latency and the main job's measured latency at 3 budgets (fractions of each
   runtime's unpruned median) for threshold/ORT, capacity/ORT, capacity/LiteRT (threshold/LiteRT
   is reported as not convertible: litert-torch cannot convert NonZero);
2. capacity mode with K_l = P in every block vs the unpruned model, both TFLite, A/B interleaved
   (a K_l equal to the tokens present is compiled out), next to the cost of selectors that run: one
   selector (K_1 = P - 1, repeated after) and one in every block (K_l = P - 1 - l);
3. (reference model) top-1 on the digits test split vs measured ORT latency for threshold, capacity
   and capacity + package token over a budget sweep, compared at equal measured latency;
4. the LiteRT latency table plot with its plateaus.
Writes benchmarks/results/modes.{json,md,png} and results/litert_table_<model>.png.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, interleaved_ab, md_table, save_plot, write_results
from vitedge.context import Context, MeasureConfig, Options
from vitedge.devices.runner import open_session
from vitedge.models.reference import REFERENCE_NAME
from vitedge.exporters.registry import get_exporter
from vitedge.pipeline import BudgetNotMetError, run_export
from vitedge.plots import plot_table
from vitedge.search import BudgetUnreachableError


def _ctx(name, args, work, **kw) -> Context:
    if args.quick and kw.get("format") == "tflite":
        kw["tokens_step"] = 32  # a 3-point LiteRT grid: each signature costs a conversion
    opts = Options(model=name, progress=False, cache_dir=str(work / "cache"), threads=args.threads,
                   calib_limit=None if name == REFERENCE_NAME else args.calib_limit, **kw)
    if args.quick:
        opts.profile_config = MeasureConfig(warmup=2, min_runs=5, min_time_s=0.0)
        opts.model_config = MeasureConfig(warmup=3, min_runs=10, min_time_s=0.05)
    return Context(opts, log=lambda m: print(f"[{name}] {m}", flush=True))


def _unpruned(ctx: Context, work: Path) -> float:
    art = get_exporter(ctx.format)
    path = work / f"unpruned-{ctx.model_hash}-{ctx.format}{art.suffix}"
    if not path.exists():
        art.export(ctx.model, path, pruned=False)
    return ctx.device.measure_model(path, ctx.feeds())["median_ms"]


def _job(ctx: Context, budget: float, out: Path, max_rounds: int = 5) -> dict:
    try:
        rep = run_export(ctx, budget, out, log=lambda m: None, max_rounds=max_rounds)
    except (BudgetUnreachableError, BudgetNotMetError) as e:
        return {"budget_ms": budget, "error": str(e)}
    acc = rep["accuracy"]
    return {"budget_ms": budget, "measured_ms": rep["measured_ms"]["median"], "p90_ms": rep["measured_ms"]["p90"],
            "ratio": rep["measured_ms"]["median"] / budget, "accuracy": acc.get("pruned"),
            "mean_kept": [b["mean_kept_tokens"] for b in rep["schedule"]["blocks"]],
            "xnnpack": rep.get("xnnpack"), "rounds": len(rep["rounds"]), "kept_all": bool(rep["notes"])}


OVERHEAD_VARIANTS = {  # name -> K_l per block, from P and L
    "K=P (compiled out)": lambda P, L: [P] * L,
    "one selector (K_1=P-1)": lambda P, L: [P - 1] * L,
    "selector in every block (K_l=P-1-l)": lambda P, L: [P - 1 - l for l in range(L)],
}


def capacity_overhead(ctx_lit: Context, work: Path, rounds: int, quick: bool) -> dict:
    """Capacity schedules that prune (almost) nothing vs unpruned, both TFLite, interleaved A/B in LiteRT."""
    model, art = ctx_lit.model, get_exporter("tflite")
    a_path = work / f"ovh_unpruned-{ctx_lit.model_hash}.tflite"
    art.export(model, a_path, pruned=False)
    threads = ctx_lit.device.threads
    cfg = MeasureConfig(warmup=5, min_runs=5 if quick else 20, min_time_s=0.02 if quick else 0.2)
    a = open_session("litert", str(a_path), threads)
    out = {}
    for i, (label, caps) in enumerate(OVERHEAD_VARIANTS.items()):
        b_path = work / f"ovh_capacity_{i}-{ctx_lit.model_hash}.tflite"
        model.set_capacities(caps(model.num_patches, model.depth))
        art.export(model, b_path)
        model.set_thresholds([None] * model.depth)
        res = interleaved_ab(a, open_session("litert", str(b_path), threads), ctx_lit.feeds(16), cfg, rounds=rounds)
        res["overhead_pct"] = 100 * (res["ratio_median"] - 1)
        res["capacities"] = caps(model.num_patches, model.depth)
        out[label] = res
    return out


def run_model(name: str, args, work: Path) -> dict:
    ctx_ort = _ctx(name, args, work, format="onnx")
    ctx_ort.calibration()
    out = {"model": name, "unpruned_ms": {}, "jobs": {}}
    combos = [("threshold", "onnx"), ("capacity", "onnx"), ("capacity", "tflite")]
    ctx_lit = _ctx(name, args, work, format="tflite", tokens_step=args.tokens_step if name != REFERENCE_NAME else None)
    table_lit = ctx_lit.latency_table()
    out["litert_table"] = {"profile_seconds": table_lit.meta.get("profile_seconds"), "measured_tokens": table_lit.measured_tokens,
                           **plot_table(table_lit, args.out / f"litert_table_{name}.png")}
    for fmt in ("onnx", "tflite"):
        out["unpruned_ms"][fmt] = _unpruned(ctx_ort if fmt == "onnx" else ctx_lit, work)
    for mode, fmt in combos:
        ctx = _ctx(name, args, work, format=fmt, mode=mode,
                   tokens_step=args.tokens_step if (fmt == "tflite" and name != REFERENCE_NAME) else None)
        key = f"{mode}/{fmt}"
        out["jobs"][key] = [_job(ctx, f * out["unpruned_ms"][fmt], work / f"{name}-{mode}-{fmt}-{f}", 2 if args.quick else 5)
                            for f in args.fractions]
        for j in out["jobs"][key]:
            print(f"[{name}] {key} budget {j['budget_ms']:.3f} -> {j.get('measured_ms', float('nan')):.3f} ms {j.get('error', '')}", flush=True)
    out["jobs"]["threshold/tflite"] = "not convertible: litert-torch cannot convert NonZero (dynamic token count); delegates reject dynamic shapes"
    out["capacity_all_overhead_tflite"] = capacity_overhead(ctx_lit, work, args.rounds, args.quick)
    if name == REFERENCE_NAME:
        sweep = {}
        for label, kw in (("threshold", {"mode": "threshold"}), ("capacity", {"mode": "capacity"}),
                          ("capacity+package", {"mode": "capacity", "package_token": True})):
            ctx = _ctx(name, args, work, format="onnx", **kw)
            sweep[label] = [_job(ctx, f * out["unpruned_ms"]["onnx"], work / f"sweep-{label}-{f}") for f in args.sweep]
        out["accuracy_sweep"] = sweep
    return out


def at_latency(points: list[dict], latency: float):
    pts = sorted((p["measured_ms"], p["accuracy"]) for p in points if p.get("accuracy") is not None)
    if not pts or latency < pts[0][0] or latency > pts[-1][0]:
        return None
    return float(np.interp(latency, [p[0] for p in pts], [p[1] for p in pts]))


def report(results: list[dict], args) -> str:
    md = ["# Threshold vs capacity, ONNX Runtime vs LiteRT (local CPU)\n"]
    for r in results:
        u = r["unpruned_ms"]
        md.append(f"\n## {r['model']}\n\nunpruned: ONNX Runtime {u['onnx']:.3f} ms, LiteRT (XNNPACK) {u['tflite']:.3f} ms\n\n")
        rows = []
        for key, jobs in r["jobs"].items():
            if isinstance(jobs, str):
                rows.append([key, "-", "-", "-", jobs])
                continue
            for j in jobs:
                x = j.get("xnnpack")
                rows.append([key, j["budget_ms"], j.get("measured_ms", "-"), "-" if "ratio" not in j else f"{j['ratio']:.3f}",
                             j.get("error", "") or (f"xnnpack {x['delegated']}/{x['nodes']}" if x else "")])
        md.append(md_table(["mode/format", "budget ms", "measured ms", "measured/budget", "note"], rows))
        rows = [[label, o["a_median_ms"], o["b_median_ms"], f"{o['overhead_pct']:+.2f} %",
                 f"{o['ratio_p10']:.3f}-{o['ratio_p90']:.3f}", o["rounds"]] for label, o in r["capacity_all_overhead_tflite"].items()]
        md.append("\nCapacity schedules that prune (almost) nothing vs the unpruned TFLite model (LiteRT, A/B interleaved); "
                  "target for K=P: <= 3 %.\n\n")
        md.append(md_table(["capacities", "unpruned ms", "capacity ms", "overhead", "ratio p10-p90", "rounds"], rows))
        lt = r["litert_table"]
        md.append(f"\nLiteRT latency table: {len(lt['measured_tokens'])} token counts measured in {lt['profile_seconds']:.0f} s; "
                  f"plateaus (attention+MLP within 2 %): {lt['plateaus'] or 'none'} (plot: litert_table_{r['model']}.png)\n")
        if "accuracy_sweep" in r:
            sw = r["accuracy_sweep"]
            md.append("\n### Accuracy (digits test split, 600 images) vs measured ONNX Runtime latency\n\n")
            rows = []
            for j in sw["threshold"]:
                if "measured_ms" not in j:
                    continue
                lat = j["measured_ms"]
                cap, pkg = at_latency(sw["capacity"], lat), at_latency(sw["capacity+package"], lat)
                rows.append([lat, f"{100 * j['accuracy']:.1f}", "-" if cap is None else f"{100 * cap:.1f}",
                             "-" if pkg is None else f"{100 * pkg:.1f}"])
            md.append(md_table(["threshold measured ms", "threshold top-1 %", "capacity top-1 % (same latency)",
                                "capacity + package top-1 % (same latency)"], rows))
    return "".join(md)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = [r for r in results if "accuracy_sweep" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in ref:
        for label, pts in r["accuracy_sweep"].items():
            ok = sorted((p["measured_ms"], 100 * p["accuracy"]) for p in pts if p.get("accuracy") is not None)
            ax.plot([p[0] for p in ok], [p[1] for p in ok], "o-", label=label)
    ax.set(xlabel="measured median latency, ONNX Runtime (ms)", ylabel="top-1 % (digits test)", title="Reference model: modes")
    ax.grid(alpha=0.3)
    ax.legend()
    save_plot(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[REFERENCE_NAME, "vit_small_patch16_224"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.6, 0.75, 0.9])
    p.add_argument("--sweep", nargs="+", type=float, default=[0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    p.add_argument("--tokens-step", type=int, default=12, help="LiteRT token grid for non-reference models")
    p.add_argument("--calib-limit", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:  # written after each model, so a later failure keeps the earlier ones
            results.append(run_model(m, args, Path(tmp)))
            write_results("modes", {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                                    "results": results}, report(results, args), args.out)
            plot(results, args.out / "modes.png")
    print(report(results, args))


if __name__ == "__main__":
    main()
