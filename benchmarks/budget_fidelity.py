"""Budget fidelity, latency-table fidelity and accuracy vs. constant Top-K, on the local device.

    python benchmarks/budget_fidelity.py                                   # reference + vit_small_patch16_224
    python benchmarks/budget_fidelity.py --models vitedge-digits-vit --budgets 3 --quick   # smoke
    python benchmarks/budget_fidelity.py --format tflite --models vitedge-digits-vit       # LiteRT, capacity mode
    python benchmarks/budget_fidelity.py --precision int8 --models vitedge-digits-vit --fractions 0.5 0.65 0.8

For each model: measure the unpruned ONNX export, then run the main job (``run_export``) at budgets
from --lo to --hi of the unpruned median, and record measured median / budget (target [0.90, 1.00])
and the latency table's prediction (sum of parts, real kept counts) vs the measured median (target
+-5 %). For the reference model also: accuracy on the digits test split, next to constant Top-K
(RCTP's baseline: r fewer tokens per block, sort-free capacity export) at the same measured latency
(linear interpolation on the Top-K latency/accuracy curve measured in this run).
With ``--precision int8`` (``--quantization``, default dynamic) the unpruned reference and every export are
quantized, the table is profiled at that precision and the budgets are fractions of the unpruned int8 median.
Writes benchmarks/results/budget_fidelity.{json,md,png} (``--format tflite``: budget_fidelity_tflite.*; a
non-fp32 precision adds its tag, e.g. budget_fidelity_int8d.*).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, environment, md_table, save_plot, write_results
from _methods import constant_top_k, top_k_at  # shared with pareto.py
from vitedge.context import Context, MeasureConfig, Options
from vitedge.models.reference import REFERENCE_NAME
from vitedge.exporters.registry import get_exporter
from vitedge.pipeline import BudgetNotMetError, run_export
from vitedge.search import BudgetUnreachableError


def run_model(name: str, args, work: Path) -> dict:
    opts = Options(model=name, progress=False, cache_dir=str(work / "cache"), threads=args.threads,
                   calib_limit=args.calib_limit if name != REFERENCE_NAME else None,
                   format=args.format, mode=args.mode, tokens_step=args.tokens_step, precision=args.precision,
                   quantization=args.quantization)
    if args.quick:
        opts.profile_config = MeasureConfig(warmup=2, min_runs=5, min_time_s=0.0)
        opts.model_config = MeasureConfig(warmup=3, min_runs=10, min_time_s=0.05)
    ctx = Context(opts, log=lambda m: print(f"[{name}] {m}", flush=True))
    ctx.calibration()
    table = ctx.latency_table()
    art = get_exporter(ctx.format)
    unpruned_file = work / f"{name}-unpruned{art.suffix}"
    art.export(ctx.model, unpruned_file, pruned=False)
    if args.precision != "fp32":  # the budgets are fractions of the unpruned model at the same precision
        from vitedge.quantized import quantize_file

        fp32, unpruned_file = unpruned_file, work / f"{name}-unpruned-{args.precision}{art.suffix}"
        quantize_file(fp32, unpruned_file, ctx.feeds(len(ctx.images)) if args.quantization == "static" else None,
                      fmt=ctx.format, precision=args.precision, method=args.quantization)
    unpruned = ctx.device.measure_model(unpruned_file, ctx.feeds())["median_ms"]
    print(f"[{name}] unpruned {unpruned:.3f} ms", flush=True)
    runs = []
    for frac in args.fractions or np.linspace(args.lo, args.hi, args.budgets):
        budget = float(frac * unpruned)
        row = {"fraction": float(frac), "budget_ms": budget}
        try:
            rep = run_export(ctx, budget, work / f"{name}-{frac:.3f}", log=lambda m: None)
            row.update(measured_ms=rep["measured_ms"]["median"], p90_ms=rep["measured_ms"]["p90"],
                       ratio=rep["measured_ms"]["median"] / budget, predicted_ms=rep["predicted_ms"],
                       prediction_error=rep["predicted_ms"] / rep["measured_ms"]["median"] - 1,
                       rounds=len(rep["rounds"]), mean_kept=[b["mean_kept_tokens"] for b in rep["schedule"]["blocks"]],
                       accuracy=rep["accuracy"].get("pruned"), unpruned_accuracy=rep["accuracy"].get("unpruned"),
                       parity_max_abs_diff=rep["parity"]["max_abs_diff"], kept_all=bool(rep["notes"]), mode=rep.get("mode"))
        except (BudgetUnreachableError, BudgetNotMetError) as e:
            row.update(error=str(e))
        print(f"[{name}] {row.get('budget_ms'):.3f} ms -> {row.get('measured_ms', float('nan')):.3f} ms "
              f"(ratio {row.get('ratio', float('nan')):.3f}) {row.get('error', '')}", flush=True)
        runs.append(row)
    result = {"model": name, "unpruned_ms": unpruned, "table_profile_seconds": table.meta.get("profile_seconds"),
              "table_drift": table.drift, "runs": runs}
    if name == REFERENCE_NAME and args.format == "onnx" and args.precision == "fp32":
        result["top_k"] = constant_top_k(ctx, work, max_r=args.max_r)
        for row in runs:
            if "measured_ms" in row:
                row["top_k_accuracy_at_same_latency"] = top_k_at(result["top_k"], row["measured_ms"])
    return result


def report(results: list[dict], args) -> str:
    runtime = "ONNX Runtime" if args.format == "onnx" else "LiteRT (XNNPACK)"
    prec = "" if args.precision == "fp32" else f", {args.precision} ({args.quantization})"
    md = [f"# Budget fidelity (local CPU, {runtime}, {args.mode or ('auto' if args.format == 'onnx' else 'capacity')} mode{prec})\n",
          "measured = median latency of the exported model on the calibration images; "
          "predicted = latency table (sum of parts) with the real kept counts. Target: ratio in [0.90, 1.00], error within ±5 %.\n"]
    env = getattr(args, "environment", None)
    if env is not None:
        md.append(f"\n`{env['command']}`, {env['date']}, load average {env['load_average_1_5_15min']}. {args.note}\n")
    for res in results:
        md.append(f"\n## {res['model']} (unpruned {res['unpruned_ms']:.3f} ms)\n")
        rows = []
        for r in res["runs"]:
            if "error" in r:
                rows.append([f"{r['fraction']:.2f}", r["budget_ms"], "-", "-", "-", "-", "-", "-", "-", r["error"][:60]])
                continue
            acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.1f}"
            tk = r.get("top_k_accuracy_at_same_latency")
            rows.append([f"{r['fraction']:.2f}", r["budget_ms"], r["measured_ms"], r["ratio"], r["predicted_ms"],
                         f"{100 * r['prediction_error']:+.1f} %", r["rounds"], r.get("mode") or "-", acc,
                         "-" if tk is None else f"{100 * tk:.1f}"])
        md.append(md_table(["budget / unpruned", "budget ms", "measured ms", "measured / budget", "predicted ms",
                            "prediction error", "rounds", "mode chosen", "top-1 %",
                            "const. Top-K top-1 % at same latency"], rows))
        if "top_k" in res:
            md.append("\nConstant Top-K (r fewer patch tokens per block, capacity export):\n")
            md.append(md_table(["r", "measured ms", "top-1 %"],
                               [[t["r"], t["measured_ms"], f"{100 * t['accuracy']:.1f}"] for t in res["top_k"]]))
    return "".join(md)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for res in results:
        ok = [r for r in res["runs"] if "ratio" in r]
        axes[0].plot([r["fraction"] for r in ok], [r["ratio"] for r in ok], "o-", label=res["model"])
        if "top_k" in res:
            axes[1].plot([r["measured_ms"] for r in ok if r.get("accuracy") is not None],
                         [100 * r["accuracy"] for r in ok if r.get("accuracy") is not None], "o-", label="vitedge (latency Viterbi, threshold)")
            tk = sorted(res["top_k"], key=lambda t: t["measured_ms"])
            axes[1].plot([t["measured_ms"] for t in tk], [100 * t["accuracy"] for t in tk], "s--", label="constant Top-K (capacity)")
    axes[0].axhspan(0.9, 1.0, color="green", alpha=0.1, label="target")
    axes[0].set(xlabel="budget / unpruned latency", ylabel="measured median / budget", title="Budget fidelity")
    axes[1].set(xlabel="measured median latency (ms)", ylabel="top-1 % (digits test)", title="Reference model accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_plot(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[REFERENCE_NAME, "vit_small_patch16_224"])
    p.add_argument("--budgets", type=int, default=8)
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="budgets as fractions of the unpruned "
                   "median (instead of --budgets from --lo to --hi)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--quantization", choices=["static", "dynamic"], default="dynamic")
    p.add_argument("--note", default="", help="a line for the markdown (e.g. how the machine was shared)")
    p.add_argument("--lo", type=float, default=0.45)
    p.add_argument("--hi", type=float, default=1.0)
    p.add_argument("--max-r", type=int, default=10, help="largest r of the constant Top-K sweep")
    p.add_argument("--calib-limit", type=int, default=64, help="calibration images for non-reference models")
    p.add_argument("--quick", action="store_true", help="short measurements (smoke test)")
    p.add_argument("--format", choices=["onnx", "tflite"], default="onnx")
    p.add_argument("--mode", choices=["threshold", "capacity"], default=None, help="default: the format's")
    p.add_argument("--tokens-step", type=int, default=None, help="LiteRT token grid")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_model(name, args, Path(tmp)) for name in args.models]
    data = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    args.environment = data["environment"]
    from vitedge.precision import precision_tag

    tag = precision_tag(args.precision, args.quantization)
    name = "_".join(["budget_fidelity"] + ([args.format] if args.format != "onnx" else []) + ([tag] if tag else []))
    write_results(name, data, report(results, args), args.out)
    plot(results, args.out / f"{name}.png")
    print(report(results, args))


if __name__ == "__main__":
    main()
