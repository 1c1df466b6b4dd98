"""Accuracy vs *measured* latency: vitedge against the baselines, RCTP's Fig. 4 ablation, larger models.

    python benchmarks/pareto.py                                  # full run (see benchmarks/README.md)
    python benchmarks/pareto.py --quick                          # smoke: ONNX Runtime, 3 points per method
    python benchmarks/pareto.py --runtimes onnxruntime --no-large

Reference model (digits test split: 600 images with real labels), local CPU. Every method is
exported and measured in the same run; all artifacts of a runtime are timed in ``--rounds``
interleaved rounds (shuffled order each round, seeded) so that machine drift hits every method alike.
Accuracy, agreement with the unpruned model's top-1 and the kept tokens per block are read from the
exported model itself, run in its runtime on the test images.

Methods (ONNX Runtime; LiteRT runs the static-shape ones: unpruned, random, Top-K, vitedge capacity, POMT):
- ``unpruned``: timm's forward, exported.
- ``random``: K_l = P - r (l + 1) patch tokens chosen at random (seeded uniform scores instead of CLS
  attention; accuracy averaged over ``--seeds``); its graph is constant Top-K's capacity graph
  (same selection cost), so its latency is that artifact's.
- ``topk``: constant Top-K by CLS attention, RCTP's baseline, sort-free capacity gather.
- ``rctp_flops``: RCTP as published, monotone Viterbi over analytic FLOPs (threshold mode), FLOPs fractions.
- ``vitedge_threshold`` / ``vitedge_capacity``: vitedge's default search, the best quality measured on the
  pruned model over the calibration images among candidates whose predicted latency fits the ms budget
  (:class:`vitedge.search.measured.MeasuredSearch`; search + export + measure; no closed loop per point).
- ``fisher_threshold`` / ``fisher_capacity``: ``--objective fisher``, RCTP's monotone Viterbi over the
  Fisher-loss table with the measured latency table as cost (what vitedge shipped before).
- ``pomt``: one pruning site (capacity, CLS attention): every (site l, K) predicted from the latency
  table, accuracy on the calibration split, POMT's utility 0.5 (1 - L/Lmax) + 0.5 (A/Amax); the
  operating points are the utility-optimal (l, K) within successive latency bands; ``pomt_pick``
  (the global utility optimum, what POMT deploys) is marked.
- ``tome``: ToMe written from its paper (``_tome.py``: bipartite soft matching, r tokens merged per block,
  size-weighted average, proportional attention), PyTorch eager, same CPU and threads; not exportable
  without sort (argsort). Compared through latency relative to the same runtime's unpruned model;
  ``--tome-only`` re-measures just this PyTorch eager section.
After a first sweep, ``--refine`` more points are placed between the two points of each curve that
straddle the accuracy target (unpruned - 1 point).

Ablation (RCTP Fig. 4): importance = block-normalised FI (``fisher_block``, = fisher_threshold),
raw FI (``fisher_raw``), CLS attention (``cls_attention``), each through the same latency Viterbi
(threshold mode). Larger models (``--large``): deit_tiny/deit_small/vit_small with random weights,
latency only: what each schedule family measures at the same mean kept tokens, and their latency tables.

Writes to --out (default benchmarks/results/): pareto.{json,md,png}, pareto_ablation.png,
pareto_table_<runtime>.png, and with --large pareto_large.png and pareto_large_table_<model>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, write_results
from _methods import check_random_path, constant_capacities, evaluate_random_capacity, single_site_capacities, torch_threads
from _pareto_bench import (
    Cand, Pomt, RuntimeBench, bisect_kept, eager_bench, log, pomt_params, topk_cand, viterbi_maker, viterbi_params,
)
from _pareto_plots import plot_ablation, plot_large, plot_main
from _pareto_report import (
    EAGER_HEADING, eager_md, fmt_at, latency_at_kept, relative_summary, remeasured_note, report, splice_section, summarise,
    table_info,
)
from vitedge.context import Context, MeasureConfig, Options
from vitedge.data.digits import ImageSet, digits_split
from vitedge.evaluate import evaluate_schedule, predict_unpruned
from vitedge.quality import QualityEvaluator
from vitedge.search.measured import MeasuredSearch
from vitedge.search.planner import Planner

NOT_STATIC = "threshold mode (NonZero, dynamic token count): litert-torch cannot convert it, delegates reject it"
LARGE_MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_small_patch16_224"]


# ------------------------------------------------------------------------------------------ reference model
def measured_params(search: MeasuredSearch, n: int) -> list[float]:
    """``n`` ms budgets spread evenly from the smallest reachable to the unpruned prediction."""
    return [float(b) for b in np.linspace(search.min_budget, search.full, n + 1)[:-1]]


def quick_configs(args):
    if args.quick:
        return MeasureConfig(warmup=2, min_runs=5, min_time_s=0.0), MeasureConfig(warmup=2, min_runs=8, min_time_s=0.02)
    return None, None


def make_ctx(args, work: Path, **kw) -> Context:
    opts = Options(model=kw.pop("model", None), checkpoint=kw.pop("checkpoint", args.checkpoint), progress=False,
                   cache_dir=str(args.cache_dir or work / "cache"), threads=args.threads, **kw)
    prof, mod = quick_configs(args)
    if prof is not None:
        opts.profile_config, opts.model_config = prof, mod
    return Context(opts, log=lambda m: log(m))


def reference_test(args) -> ImageSet:
    """The digits test split (real labels), its first ``--test-limit`` images if given."""
    test = digits_split("test")
    if args.test_limit:
        test = ImageSet(test.images[:args.test_limit], test.labels[:args.test_limit], f"{test.name}[:{args.test_limit}]")
    return test


def constant_rs(P: int, L: int, points: int) -> list[float]:
    """Up to ``points`` constant-rate r values from 1 to the largest whole r, (P - 1) / L."""
    rmax = (P - 1) / L
    return sorted({float(v) for v in np.round(np.linspace(1, int(rmax), points))}) if points <= int(rmax) \
        else [float(r) for r in range(1, int(rmax) + 1)]


def run_eager(model, ctx: Context, test, ref_top1, args, P: int, L: int, topk_rs: list[float]) -> dict:
    """The PyTorch eager section: ToMe, constant Top-K and the unpruned model, timed interleaved, with its summary."""
    t0 = time.time()
    eager = eager_bench(model, ctx, test, ref_top1, args, P, L, topk_rs)
    eager["seconds"] = round(time.time() - t0, 1)
    eager["summary"] = summarise(eager["methods"], eager["unpruned"], vitedge=(), baselines=(), relative=True)
    log(f"torch eager (ToMe, Top-K) done in {eager['seconds']:.0f} s")
    return eager


def run_reference(args, work: Path) -> dict:
    torch.manual_seed(args.seed)
    test = reference_test(args)
    # the baselines score tokens as their papers do (CLS attention); vitedge's sweeps switch to its default score
    ctx = make_ctx(args, work, format="onnx", calib_limit=args.calib_limit, tokens_step=args.tokens_step,
                   token_score="cls-attention", package_token=False)
    model, P, L = ctx.model, ctx.model.num_patches, ctx.model.depth
    log(f"reference model {model.model_name} ({'trained weights' if args.checkpoint is None else args.checkpoint}), "
        f"test {test.name}: {len(test)} images; calibration {ctx.images.name}: {len(ctx.images)} images")
    with torch_threads(1):
        ref_top1 = predict_unpruned(model, test)
    unpruned_acc = float((ref_top1 == test.labels).mean())
    target = unpruned_acc - 0.01
    log(f"unpruned top-1 {100 * unpruned_acc:.1f} % -> accuracy target {100 * target:.1f} %")
    cal = ctx.calibration()
    out = {"model": model.model_name, "checkpoint": args.checkpoint or "shipped (vitedge/assets/reference/model.safetensors)",
           "test_images": test.name, "num_test": len(test), "calibration_images": ctx.images.name, "num_calibration": len(ctx.images),
           "unpruned_accuracy": unpruned_acc, "target_accuracy": target, "runtimes": {}}
    out["random_path_check_max_abs_logit_diff"] = check_random_path(model, ctx.images, constant_capacities(P, L, 3))

    pomt = Pomt(model, ctx.images, args.pomt_k_step)
    random_cache: dict[tuple, dict] = {}

    def random_eval(c: Cand) -> dict:
        caps = tuple(c.info["K"])
        if caps not in random_cache:
            accs, agrs = [], []
            with torch_threads(1):
                for s in args.seeds:
                    top1 = evaluate_random_capacity(model, test, list(caps), seed=s)
                    accs.append(float((top1 == test.labels).mean()))
                    agrs.append(float((top1 == ref_top1).mean()))
            random_cache[caps] = {"accuracy": float(np.mean(accs)), "agreement": float(np.mean(agrs)),
                                  "accuracy_seeds": accs, "agreement_seeds": agrs, "mean_kept": [float(k) for k in caps]}
        return random_cache[caps]

    r_init = constant_rs(P, L, args.points)
    for runtime in args.runtimes:
        t_rt = time.time()
        rctx = ctx if runtime == "onnxruntime" else make_ctx(args, work, format="tflite", mode="capacity", calib_limit=args.calib_limit,
                                                                 tokens_step=args.tokens_step, token_score="cls-attention",
                                                                 package_token=False)
        table = rctx.latency_table()
        rdir = work / runtime
        rdir.mkdir(exist_ok=True)
        bench = RuntimeBench(rctx, runtime, rdir, test, ref_top1, args)
        log(f"{runtime}: latency table {'profiled' if table.meta.get('profile_seconds') else 'loaded'}; exporting and evaluating")
        unp = Cand("unpruned", 0.0, "unpruned")
        bench.add(unp)
        # constant Top-K (and random at the same counts: same artifact, torch accuracy)
        bench.sweep("topk", lambda r: topk_cand(P, L, r), r_init, target, args.refine, table)
        for c, _ in list(bench.points["topk"]):
            rc = Cand("random", c.param, c.mode, None, c.capacities, dict(c.info, seeds=list(args.seeds)))
            bench.add(rc, random_eval(rc))
        if runtime == "onnxruntime":
            fl = Planner(cal, "flops", min_patch_tokens=model.min_patch_tokens)
            bench.sweep("rctp_flops", viterbi_maker("rctp_flops", fl), viterbi_params(fl, args.points), target, args.refine, table)
            lt = Planner(cal, "latency", table, mode="threshold", min_patch_tokens=model.min_patch_tokens)
            bench.sweep("fisher_threshold", viterbi_maker("fisher_threshold", lt), viterbi_params(lt, args.points), target, args.refine, table)
        lc = Planner(cal, "latency", table, mode="capacity", min_patch_tokens=model.min_patch_tokens)
        bench.sweep("fisher_capacity", viterbi_maker("fisher_capacity", lc), viterbi_params(lc, args.points), target, args.refine, table)
        vitedge = {"token_score": args.token_score, "package_token": args.package_token}  # its defaults
        with model.pruning(**vitedge), rctx.model.pruning(**vitedge):
            cal_v = ctx.calibration()  # scored as vitedge scores (its default: significance)
            if runtime == "onnxruntime":
                mt = MeasuredSearch(Planner(cal_v, "latency", table, mode="threshold", min_patch_tokens=model.min_patch_tokens,
                                            package_token=args.package_token), QualityEvaluator(model, ctx.images))
                bench.sweep("vitedge_threshold", viterbi_maker("vitedge_threshold", mt), measured_params(mt, args.points), target, args.refine, table)
            mc = MeasuredSearch(Planner(cal_v, "latency", table, mode="capacity", min_patch_tokens=model.min_patch_tokens,
                                        package_token=args.package_token), QualityEvaluator(model, rctx.images))
            bench.sweep("vitedge_capacity", viterbi_maker("vitedge_capacity", mc), measured_params(mc, args.points), target, args.refine, table)
        grid = pomt.grid(table)
        edges, bands = pomt_params(grid, args.points)
        bench.sweep("pomt", pomt.maker(grid, edges, L), bands, target, args.refine, table)
        pick = max((r for r in grid if r["site"] is not None), key=lambda r: r["utility"])
        abl = {}
        if runtime == "onnxruntime" and not args.no_ablation:
            for imp in ("fisher_raw", "cls_attention"):
                ctx.opts.importance = imp
                cal_i = ctx.calibration()
                pl = Planner(cal_i, "latency", table, mode="threshold", min_patch_tokens=model.min_patch_tokens)
                bench.sweep(f"ablation_{imp}", viterbi_maker(f"ablation_{imp}", pl), viterbi_params(pl, args.points), target, args.refine, table)
                abl[imp] = {"calibration_importance": cal_i.meta["importance"]}
            ctx.opts.importance = "fisher_block"
        log(f"{runtime}: {len(bench.artifacts)} artifacts exported and evaluated in {time.time() - t_rt:.0f} s; measuring")
        bench.measure_all(args.rounds, args.seed)
        rows = bench.rows(table)
        unpruned = rows.pop("unpruned")[0]
        for m in rows.values():
            for r in m:
                r["relative_latency"] = r["measured_ms"] / unpruned["measured_ms"]
        unpruned["relative_latency"] = 1.0
        # the unpruned model's pruned-graph twin is not a method point; the random rows carry Top-K's latency
        res = {"unpruned": unpruned, "methods": {k: v for k, v in rows.items() if not k.startswith("ablation_")},
               "table": table_info(table, args.out / f"pareto_table_{runtime}.png"),
               "pomt_grid": {"points": len(grid), "k_step": args.pomt_k_step, "pick": pick,
                             "note": "accuracy on the calibration split (PyTorch), latency predicted by this runtime's table"},
               "artifacts": len(bench.artifacts), "seconds": round(time.time() - t_rt, 1)}
        if runtime == "onnxruntime":
            res["ablation"] = {"fisher_block": rows.get("fisher_threshold", []),
                               **{imp: rows.get(f"ablation_{imp}", []) for imp in abl}}
            res["ablation_summary"] = summarise({f"ablation_{k}": v for k, v in res["ablation"].items()}, unpruned,
                                                vitedge=("ablation_fisher_block",), baselines=("ablation_fisher_raw", "ablation_cls_attention"))
            res["not_available"] = {}
        else:
            res["not_available"] = {"rctp_flops": NOT_STATIC, "vitedge_threshold": NOT_STATIC, "fisher_threshold": NOT_STATIC,
                                    "tome": "argsort (not convertible without sort)"}
        res["summary"] = summarise(res["methods"], unpruned)
        out["runtimes"][runtime] = res
        log(f"{runtime}: done in {time.time() - t_rt:.0f} s")
    if not args.no_tome:
        topk_rs = sorted({c["param"] for c in out["runtimes"]["onnxruntime"]["methods"].get("topk", [])}) if "onnxruntime" in out["runtimes"] else r_init
        out["torch_eager"] = run_eager(model, ctx, test, ref_top1, args, P, L, topk_rs)
    out["relative_summary"] = relative_summary(out)
    return out


NOISY = ("each point's latency is read relative to the unpruned model timed in the same run, all points interleaved "
         "in shuffled rounds: machine load moves them together; absolute ms depend on how busy the machine was "
         "(environment.load_average_1_5_15min)")


def run_tome_only(args, work: Path) -> None:
    """``--tome-only``: re-measure only the PyTorch eager section (ToMe, constant Top-K, unpruned) on the
    reference model. Writes tome.{json,md} and puts the section into an existing pareto.json (and its .md,
    its section in .md), keeping the rest; Top-K uses the r values of pareto.json's ONNX Runtime Top-K points when there are some."""
    torch.manual_seed(args.seed)
    test = reference_test(args)
    ctx = make_ctx(args, work, format="onnx", calib_limit=args.calib_limit)
    model, P, L = ctx.model, ctx.model.num_patches, ctx.model.depth
    with torch_threads(1):
        ref_top1 = predict_unpruned(model, test)
    previous = args.out / "pareto.json"
    data = json.loads(previous.read_text()) if previous.exists() else {}
    ref = data.get("reference")
    onnx_topk = (ref or {}).get("runtimes", {}).get("onnxruntime", {}).get("methods", {}).get("topk")
    topk_rs = sorted({c["param"] for c in onnx_topk}) if onnx_topk else constant_rs(P, L, args.points)
    eager = run_eager(model, ctx, test, ref_top1, args, P, L, topk_rs)
    env = environment()
    run_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    acc = float((ref_top1 == test.labels).mean())
    head = (f"# ToMe vs constant Top-K vs unpruned, PyTorch eager (pareto.py --tome-only)\n\nReference model `{model.model_name}`, "
            f"test {test.name} ({len(test)} images), unpruned top-1 {100 * acc:.1f} %. CPU: {env.get('cpu_model')}, "
            f"load average {env['load_average_1_5_15min']}. Command: `{env['command']}`. {args.rounds} interleaved rounds.\n\n"
            f"Timing: {NOISY}.\n")
    at = eager["summary"]["latency_at_target"]
    tail = ("\nLatency / eager unpruned at the accuracy target (unpruned - 1 point): "
            + "; ".join(f"{m}: {fmt_at(v)}" for m, v in at.items()) + ".\n")
    write_results("tome", {"model": model.model_name, "test_images": test.name, "num_test": len(test), "unpruned_accuracy": acc,
                           "timing_note": NOISY, "torch_eager": eager, "environment": env, "args": run_args},
                  head + eager_md(eager) + tail, args.out)
    if ref is not None:
        ref["torch_eager"] = eager
        ref["relative_summary"] = relative_summary(ref)
        data.setdefault("remeasured", {})["torch_eager"] = {"environment": env, "args": run_args, "timing_note": NOISY}
        # pareto.md: only this section is replaced (a full re-render would put today's labels on older results);
        # pareto.png is left for the next full run
        md_path = args.out / "pareto.md"
        old_md = md_path.read_text() if md_path.exists() else ""
        section = eager_md(eager) + remeasured_note(data["remeasured"]["torch_eager"])
        write_results("pareto", data, splice_section(old_md, EAGER_HEADING, section), args.out)
    log(f"--tome-only -> {args.out / 'tome.md'}" + (" and pareto.json's torch_eager" if ref is not None else ""))


# ------------------------------------------------------------------------------------------ larger models
def run_large(args, work: Path) -> dict:
    """Latency only (random weights): each schedule family at the same mean kept tokens, and the tables."""
    out = {"note": "random weights (no --pretrained offline): latency is meaningful, accuracy is not; "
                   "local CPU, ONNX Runtime only (LiteRT profiling of N=197 is a separate, slow job)",
           "cuda": cuda_note(), "models": {}}
    for name in args.large_models:
        t0 = time.time()
        ctx = make_ctx(args, work, model=name, checkpoint=None, format="onnx", calib_limit=args.large_calib_limit,
                       tokens_step=args.large_tokens_step)
        model, P, L, p = ctx.model, ctx.model.num_patches, ctx.model.depth, ctx.model.num_prefix
        cal = ctx.calibration()
        table = ctx.latency_table()
        log(f"[{name}] calibration + table in {time.time() - t0:.0f} s")
        images = ctx.images
        planners = {"rctp_flops": Planner(cal, "flops", min_patch_tokens=model.min_patch_tokens),
                    "vitedge_threshold": Planner(cal, "latency", table, mode="threshold", min_patch_tokens=model.min_patch_tokens),
                    "vitedge_capacity": Planner(cal, "latency", table, mode="capacity", min_patch_tokens=model.min_patch_tokens)}
        families: dict[str, list[Cand]] = {k: [] for k in ("topk", *planners, "pomt")}
        measured_k = [n - p for n in table.measured_tokens if 1 <= n - p <= P]
        n_real = min(len(images), args.large_calib_limit)

        def realised(s) -> float:
            """Mean kept patch tokens of a threshold schedule, run (PyTorch, compounding) on calibration images."""
            with torch_threads(1):
                return float(evaluate_schedule(model, images, s, limit=n_real).kept.mean())

        t_b = time.time()
        for frac in args.large_targets:
            goal = frac * P
            # constant Top-K: mean over blocks of K_l = P - r (l + 1) is P - r (L + 1) / 2
            families["topk"].append(topk_cand(P, L, max((P - goal) * 2 / (L + 1), 0.0)))
            for fam, pl in planners.items():
                c = bisect_kept(fam, pl, goal, realised if pl.mode == "threshold" else None, tol=0.01 * P)
                if c is not None:
                    families[fam].append(c)
            best = None
            for site in range(L):
                K = (goal * L - site * P) / (L - site)
                if K < 1 or K >= P:
                    continue
                K = min(measured_k, key=lambda k: abs(k - K))
                lat = float(table.predict_ms(np.array([P] * site + [K] * (L - site)), np.array([l == site for l in range(L)]), mode="capacity"))
                if best is None or lat < best[0]:
                    best = (lat, site, K)
            if best is not None:
                families["pomt"].append(Cand("pomt", frac, "capacity", None, single_site_capacities(L, best[1], best[2]),
                                             {"site": best[1], "K": best[2], "grid_predicted_ms": best[0]}))
            for cands in families.values():
                if cands and "target_fraction" not in cands[-1].info:
                    cands[-1].info["target_fraction"] = float(frac)
        log(f"[{name}] schedules matched to {len(args.large_targets)} kept-token targets in {time.time() - t_b:.0f} s")
        # kept tokens are read from the exports run on the calibration images (no labels: accuracy is not reported)
        evalset = ImageSet(images.images[:n_real], np.full(n_real, -1), images.name)
        bench = RuntimeBench(ctx, "onnxruntime", work / f"large_{name}", evalset, np.full(n_real, -1), args)
        bench.work.mkdir(exist_ok=True)
        bench.add(Cand("unpruned", 0.0, "unpruned"))
        for fam, cands in families.items():
            for c in cands:
                bench.add(c)
        log(f"[{name}] {len(bench.artifacts)} artifacts; measuring")
        bench.measure_all(args.rounds, args.seed)
        rows = bench.rows(table)
        unpruned = rows.pop("unpruned")[0]
        for fam in rows.values():
            for r in fam:
                for k in ("accuracy", "agreement"):
                    r.pop(k, None)
        at = {}
        for fam, pts in rows.items():
            at[fam] = {f"{f:g}": latency_at_kept(pts, f * P) for f in args.large_report_at}
        out["models"][name] = {"unpruned_ms": unpruned["measured_ms"], "unpruned_p90_ms": unpruned["p90_ms"],
                               "num_patches": P, "depth": L, "families": rows, "latency_at_mean_kept": at,
                               "table": table_info(table, args.out / f"pareto_large_table_{name}.png"),
                               "calibration_images": len(images), "seconds": round(time.time() - t0, 1)}
        log(f"[{name}] done in {time.time() - t0:.0f} s")
    return out


def cuda_note() -> str:
    try:
        import onnxruntime
        has = torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        has = False
    return ("a CUDA device is present but a `cuda` device is out of scope of this benchmark (local CPU only)" if has
            else "no CUDA GPU on this machine: no `cuda` device measured (out of scope here)")


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="reference-architecture weights (default: the shipped ones)")
    p.add_argument("--runtimes", nargs="+", choices=["onnxruntime", "litert"], default=None,
                   help="default: onnxruntime litert (--quick: onnxruntime)")
    p.add_argument("--points", type=int, default=None, help="operating points per method before refinement (default 10; --quick 3)")
    p.add_argument("--refine", type=int, default=None, help="extra points around the accuracy target per method (default 2; --quick 0)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved measurement rounds (default 3; --quick 1)")
    p.add_argument("--threads", type=int, default=0, help="device threads (0: all cores), also PyTorch eager's for ToMe")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="random-token seeds (default 0 1 2; --quick 0)")
    p.add_argument("--seed", type=int, default=0, help="torch seed and measurement order")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images (default all 600; --quick 120)")
    p.add_argument("--calib-limit", type=int, default=None, help="first N calibration images (default all 200; --quick 48)")
    p.add_argument("--tokens-step", type=int, default=None,
                   help="token grid of the reference model's tables (default: every n for ONNX Runtime, vitedge's grid for LiteRT)")
    p.add_argument("--pomt-k-step", type=int, default=None, help="every k-th measured token count in the POMT grid (default 1; --quick 16)")
    p.add_argument("--tome-prop-attn", action=argparse.BooleanOptionalAction, default=True, help="ToMe proportional attention")
    p.add_argument("--no-tome", action="store_true", help="skip ToMe / PyTorch eager")
    p.add_argument("--tome-only", action="store_true",
                   help="only the PyTorch eager section (ToMe, Top-K, unpruned) of the reference model: tome.{json,md}, "
                        "and that section of an existing pareto.json replaced")
    p.add_argument("--eager-threads", type=int, default=0, help="PyTorch eager threads (0: the device's, as ONNX Runtime)")
    p.add_argument("--no-ablation", action="store_true", help="skip the RCTP importance ablation")
    p.add_argument("--token-score", choices=["significance", "cls-attention"], default="significance",
                   help="vitedge's token score (the baselines keep their papers' CLS attention)")
    p.add_argument("--package-token", action=argparse.BooleanOptionalAction, default=True,
                   help="vitedge's sweeps with the package token (its default); the baselines and --objective fisher drop the pruned tokens")
    p.add_argument("--large", action=argparse.BooleanOptionalAction, default=None, help="larger models, latency only (default: on; off with --quick)")
    p.add_argument("--large-models", nargs="+", default=LARGE_MODELS)
    p.add_argument("--large-calib-limit", type=int, default=16)
    p.add_argument("--large-tokens-step", type=int, default=None, help="token grid of the large models' tables (default every n)")
    p.add_argument("--large-targets", type=float, nargs="+", default=None, help="mean kept / P per family (default 0.3 0.45 0.6 0.75 0.9)")
    p.add_argument("--large-report-at", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    p.add_argument("--cache-dir", default=None, help="reuse calibrations/tables from here (default: a fresh temporary cache)")
    p.add_argument("--quick", action="store_true", help="smoke run: short protocol, few points, ONNX Runtime, no large models")
    p.add_argument("--skip-reference", action="store_true", help="only the larger models")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    q = args.quick
    for k, full, quick in (("runtimes", ["onnxruntime", "litert"], ["onnxruntime"]), ("points", 10, 3), ("refine", 2, 0),
                           ("rounds", 3, 1), ("seeds", [0, 1, 2], [0]), ("test_limit", None, 120), ("calib_limit", None, 48),
                           ("pomt_k_step", 1, 16), ("large", True, False),
                           ("large_targets", [0.3, 0.45, 0.6, 0.75, 0.9], [0.5, 0.8])):
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tome_only:
        with tempfile.TemporaryDirectory(prefix="vitedge-tome-") as tmp:
            run_tome_only(args, Path(tmp))
        return
    torch.manual_seed(args.seed)
    t0 = time.time()
    data: dict = {}
    with tempfile.TemporaryDirectory(prefix="vitedge-pareto-") as tmp:
        work = Path(tmp)
        if not args.skip_reference:
            data["reference"] = run_reference(args, work)
        if args.large:
            data["large"] = run_large(args, work)
    data["environment"] = environment()
    carry_over(data, args.out / "pareto.json")
    data["runtime_versions"] = {"onnxruntime": metadata.version("onnxruntime"), "litert": _version("ai-edge-litert"),
                                "torch": torch.__version__}
    data["threads"] = args.threads or os.cpu_count()
    data["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    data["seconds"] = round(time.time() - t0, 1)
    data["cuda"] = cuda_note()
    md = report(data, args)
    write_results("pareto", data, md, args.out)
    if "reference" in data:
        plot_main(data, args.out / "pareto.png")
        if "ablation" in data["reference"]["runtimes"].get("onnxruntime", {}):
            plot_ablation(data, args.out / "pareto_ablation.png")
    if data.get("large"):
        plot_large(data["large"], args.out / "pareto_large.png")
    print(md)
    log(f"total {time.time() - t0:.0f} s -> {args.out}")


def carry_over(data: dict, previous: Path) -> None:
    """Keep the section a partial run (``--no-large`` / ``--skip-reference``) did not redo from the
    previous ``pareto.json``, with that run's environment under ``carried_over``."""
    if not previous.exists():
        return
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    for key in ("reference", "large"):
        if key not in data and old.get(key):
            data[key] = old[key]
            data.setdefault("carried_over", {})[key] = {
                "environment": old.get("carried_over", {}).get(key, {}).get("environment", old.get("environment")),
                "args": old.get("carried_over", {}).get(key, {}).get("args", old.get("args"))}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
