"""Overhead of the pruning machinery when nothing is pruned, vs the unpruned export (same run, A/B interleaved).

    python benchmarks/overhead.py                      # reference + vit_small_patch16_224
    python benchmarks/overhead.py --quick --models vitedge-digits-vit

Variants (B) against timm's unpruned export (A), on the same calibration images:
- ``keep_all``: what ``vitedge export`` writes when the budget is at or above the unpruned latency
  (no selector; only the extra ``kept_tokens`` output);
- ``selectors_keep_all``: a threshold selector in every block whose threshold (-1) keeps every
  token: explicit attention + CLS scores + GreaterOrEqual + NonZero + Gather all run (worst case);
- ``capacity_keep_all``: K = P in every block: a capacity that prunes nothing is compiled out;
- ``capacity_selectors``: K_l = P - 1 - l, a capacity selector running in every block (rank by
  counting + one-hot MatMul) while pruning one token per block (a worst case for the selector).
Target (issue 2): pruned-with-nothing-pruned costs <= 2 % more. Writes results/overhead.{json,md,png}.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import RESULTS, environment, interleaved_ab, md_table, save_plot, write_results
from vitedge.context import Context, Options
from vitedge.devices.runner import MeasureConfig, open_session
from vitedge.exporters.graphs import export_pruned, export_unpruned
from vitedge.models.reference import REFERENCE_NAME


def run_model(name: str, args, work: Path) -> dict:
    ctx = Context(Options(model=name, progress=False, calib_limit=16, threads=args.threads), log=print)
    model, L = ctx.model, ctx.model.depth
    export_unpruned(model, work / "a.onnx")
    variants = {"keep_all": ([None] * L, None), "selectors_keep_all": ([-1.0] * L, None),
                "capacity_keep_all": (None, [model.num_patches] * L),
                "capacity_selectors": (None, [model.num_patches - 1 - l for l in range(L)])}
    cfg = MeasureConfig(warmup=5, min_runs=20 if not args.quick else 5, min_time_s=0.2 if not args.quick else 0.02)
    threads = ctx.device.threads
    a = open_session("onnxruntime", str(work / "a.onnx"), threads)
    feeds = ctx.feeds(16)
    out = {"model": name, "threads": threads, "variants": {}}
    for vname, (thr, caps) in variants.items():
        if caps is not None:
            model.set_capacities(caps)
        else:
            model.set_thresholds(thr)
        export_pruned(model, work / f"{vname}.onnx")
        b = open_session("onnxruntime", str(work / f"{vname}.onnx"), threads)
        res = interleaved_ab(a, b, feeds, cfg, rounds=args.rounds)
        res["overhead_pct"] = 100 * (res["ratio_median"] - 1)
        out["variants"][vname] = res
        print(f"[{name}] {vname}: unpruned {res['a_median_ms']:.3f} ms, variant {res['b_median_ms']:.3f} ms, "
              f"overhead {res['overhead_pct']:+.2f} % (p10-p90 ratio {res['ratio_p10']:.3f}-{res['ratio_p90']:.3f})", flush=True)
    model.set_thresholds([None] * L)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[REFERENCE_NAME, "vit_small_patch16_224"])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_model(m, args, Path(tmp)) for m in args.models]
    rows = [[r["model"], v, x["a_median_ms"], x["b_median_ms"], f"{x['overhead_pct']:+.2f} %",
             f"{x['ratio_p10']:.3f}-{x['ratio_p90']:.3f}", x["rounds"]]
            for r in results for v, x in r["variants"].items()]
    md = ("# Overhead with nothing pruned (A/B interleaved, median of per-round ratios)\n\n"
          + md_table(["model", "variant", "unpruned ms", "variant ms", "overhead", "ratio p10-p90", "rounds"], rows))
    write_results("overhead", {"environment": environment(), "results": results}, md, args.out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['model'][:18]}\n{v}" for r in results for v in r["variants"]]
    vals = [x["overhead_pct"] for r in results for x in r["variants"].values()]
    ax.bar(range(len(vals)), vals)
    ax.axhline(2, color="red", ls="--", label="target 2 %")
    ax.set_xticks(range(len(vals)), labels, fontsize=6)
    ax.set(ylabel="overhead vs unpruned (%)", title="Pruning machinery with nothing pruned")
    ax.legend()
    save_plot(fig, args.out / "overhead.png")
    print(md)


if __name__ == "__main__":
    main()
