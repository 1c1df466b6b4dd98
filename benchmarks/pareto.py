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
- ``vitedge_threshold`` / ``vitedge_capacity``: monotone Viterbi over the measured latency table, ms budgets
  (search + export + measure; no closed loop per point).
- ``pomt``: one pruning site (capacity, CLS attention): every (site l, K) predicted from the latency
  table, accuracy on the calibration split, POMT's utility 0.5 (1 - L/Lmax) + 0.5 (A/Amax); the
  operating points are the utility-optimal (l, K) within successive latency bands; ``pomt_pick``
  (the global utility optimum, what POMT deploys) is marked.
- ``tome``: ToMe (our re-implementation of its bipartite soft matching, r tokens merged per block,
  size-weighted average, proportional attention), PyTorch eager, same CPU and threads; not exportable
  without sort (argsort). Compared through latency relative to the same runtime's unpruned model.
After a first sweep, ``--refine`` more points are placed between the two points of each curve that
straddle the accuracy target (unpruned - 1 point).

Ablation (RCTP Fig. 4): importance = block-normalised FI (``fisher_block``, = vitedge_threshold),
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
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, md_table, save_plot, write_results
from _methods import (
    constant_capacities, check_random_path, evaluate_random_capacity, evaluate_tome, latency_at_accuracy, linearity,
    pomt_utility, single_site_accuracy_grid, single_site_capacities, tome_forward, tome_max_r, torch_threads,
)
from vitedge.context import Context, MeasureConfig, Options
from vitedge.data.digits import ImageSet, digits_split
from vitedge.devices.runner import measure, open_session
from vitedge.evaluate import evaluate_pruned, evaluate_schedule, predict_unpruned
from vitedge.pipeline import Artifact
from vitedge.plots import plot_table
from vitedge.search import BudgetUnreachableError
from vitedge.search.planner import Planner

LABELS = {
    "unpruned": "unpruned",
    "random": "random tokens, constant count",
    "topk": "constant Top-K (CLS attn., RCTP baseline)",
    "rctp_flops": "RCTP: Viterbi over FLOPs (threshold)",
    "vitedge_threshold": "vitedge: Viterbi over measured latency (threshold)",
    "vitedge_capacity": "vitedge: Viterbi over measured latency (capacity)",
    "pomt": "POMT-style: one site, K from latency sweep",
    "tome": "ToMe (our re-impl.), PyTorch eager, not sort-free",
    "topk_eager": "constant Top-K, PyTorch eager (same-runtime reference for ToMe)",
    "ablation_fisher_block": "normalised FI (fisher_block)",
    "ablation_fisher_raw": "raw FI (fisher_raw)",
    "ablation_cls_attention": "CLS attention (cls_attention)",
}
STYLE = {"random": ("tab:gray", "x"), "topk": ("tab:orange", "s"), "rctp_flops": ("tab:purple", "^"),
         "vitedge_threshold": ("tab:blue", "o"), "vitedge_capacity": ("tab:cyan", "D"), "pomt": ("tab:green", "v"),
         "tome": ("tab:red", "P"), "topk_eager": ("tab:brown", "s"),
         "ablation_fisher_block": ("tab:blue", "o"), "ablation_fisher_raw": ("tab:olive", "^"),
         "ablation_cls_attention": ("tab:pink", "s")}
VITEDGE = ("vitedge_threshold", "vitedge_capacity")
BASELINES = ("topk", "rctp_flops", "pomt", "random")
NOT_STATIC = "threshold mode (NonZero, dynamic token count): litert-torch cannot convert it, delegates reject it"
LARGE_MODELS = ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_small_patch16_224"]


def log(msg: str) -> None:
    print(f"[pareto {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ candidates
@dataclass
class Cand:
    """One operating point to export: a schedule (or the unpruned model) and the knob that made it."""

    method: str
    param: float
    mode: str                      # "unpruned" | "threshold" | "capacity"
    thresholds: list | None = None
    capacities: list | None = None
    info: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.mode, tuple(self.thresholds or ()), tuple(self.capacities or ()))

    @property
    def selectors(self) -> list[bool]:
        L = len(self.thresholds or self.capacities or [])
        return [(self.thresholds or [None] * L)[l] is not None or (self.capacities or [None] * L)[l] is not None
                for l in range(L)]

    def apply(self, model) -> None:
        if self.mode == "capacity":
            model.set_capacities(self.capacities)
        else:
            model.set_thresholds(self.thresholds or [None] * model.depth)


def from_schedule(method: str, param: float, s) -> Cand:
    return Cand(method, float(param), s.mode, list(s.thresholds) if s.mode == "threshold" else None,
                list(s.capacities) if s.mode == "capacity" else None,
                {"budget": float(param), "unit": s.unit, "search_predicted": s.predicted, "fisher_loss": s.fisher_loss,
                 "candidates": list(s.candidates), "predicted_kept": list(s.predicted_kept)})


def topk_cand(P: int, L: int, r: float) -> Cand:
    caps = constant_capacities(P, L, r)
    return Cand("topk", float(r), "capacity", None, [None if k >= P else k for k in caps], {"r": float(r), "K": caps})


def viterbi_params(planner: Planner, n: int) -> list[float]:
    """``n`` budgets whose schedules differ, spread evenly (by rank) from the smallest reachable budget
    to the last one that still prunes."""
    hi = planner.full if planner.unit == "ms" else 1.0
    lo = planner.min_budget
    seen: dict[tuple, float] = {}
    for b in np.linspace(lo, hi, max(60, 10 * n)):
        try:
            s = planner.solve(float(max(b, lo)))
        except BudgetUnreachableError:
            continue
        if not s.keeps_everything:
            seen.setdefault(tuple(s.candidates), float(b))
    budgets = sorted(seen.values())
    if len(budgets) <= n:
        return budgets
    return [budgets[i] for i in np.unique(np.round(np.linspace(0, len(budgets) - 1, n)).astype(int))]


def viterbi_maker(method: str, planner: Planner):
    def make(b: float) -> Cand | None:
        try:
            s = planner.solve(float(b))
        except BudgetUnreachableError:
            return None
        return None if s.keeps_everything else from_schedule(method, b, s)
    return make


# ------------------------------------------------------------------------------------------ POMT
class Pomt:
    """Single-site sweep: (site l, K) on the table's measured token counts, calibration-split accuracy
    (PyTorch, shared between runtimes), latency predicted by the runtime's table (capacity mode: exact)."""

    def __init__(self, model, calib_images, k_step: int, log=log):
        self.model, self.images, self.k_step = model, calib_images, k_step
        self.acc: dict[tuple[int, int], float] = {}
        with torch_threads(1):
            self.unpruned_acc = float((predict_unpruned(model, calib_images) == calib_images.labels).mean())
        self.log = log

    def grid(self, table) -> list[dict]:
        model, p, P, L = self.model, self.model.num_prefix, self.model.num_patches, self.model.depth
        ks = [n - p for n in table.measured_tokens if 1 <= n - p < P][::-1][::self.k_step][::-1]
        missing = [k for k in ks if any((l, k) not in self.acc for l in range(L))]
        if missing:
            t0 = time.time()
            with torch_threads(1):
                acc = single_site_accuracy_grid(model, self.images, list(range(L)), missing)
            for l in range(L):
                for j, k in enumerate(missing):
                    self.acc[(l, k)] = float(acc[l, j])
            self.log(f"POMT grid: {L} sites x {len(missing)} K on {len(self.images)} calibration images in {time.time() - t0:.1f} s")
        rows = [{"site": None, "K": P, "predicted_ms": float(table.predict_ms(np.full(L, P), np.zeros(L, bool))),
                 "calib_accuracy": self.unpruned_acc}]
        for l in range(L):
            for k in ks:
                kept = np.array([P] * l + [k] * (L - l))
                sel = np.array([i == l for i in range(L)])
                rows.append({"site": l, "K": int(k), "predicted_ms": float(table.predict_ms(kept, sel, mode="capacity")),
                             "calib_accuracy": self.acc[(l, k)]})
        l_max = max(r["predicted_ms"] for r in rows)
        a_max = max(r["calib_accuracy"] for r in rows)
        for r in rows:
            r["utility"] = float(pomt_utility(r["predicted_ms"], r["calib_accuracy"], l_max, a_max))
        return rows

    @staticmethod
    def best_in_band(rows, lo: float, hi: float) -> dict | None:
        band = [r for r in rows if r["site"] is not None and lo < r["predicted_ms"] <= hi]
        return max(band, key=lambda r: (r["utility"], -r["predicted_ms"])) if band else None

    def maker(self, rows, bands: list[float], L: int):
        """param = band index (float: refinement splits a band); the band is (edge(i - 1), edge(i)]."""
        def edge(x: float) -> float:
            x = min(max(x, 0.0), len(bands) - 1.0)
            i = int(np.floor(x))
            return bands[i] if i == len(bands) - 1 else bands[i] + (x - i) * (bands[i + 1] - bands[i])

        def make(x: float) -> Cand | None:
            r = self.best_in_band(rows, edge(x - 1), edge(x))
            if r is None:
                return None
            caps = single_site_capacities(L, r["site"], r["K"])
            return Cand("pomt", float(x), "capacity", None, caps,
                        {"site": r["site"], "K": r["K"], "band_ms": [edge(x - 1), edge(x)], "grid_predicted_ms": r["predicted_ms"],
                         "calib_accuracy": r["calib_accuracy"], "utility": r["utility"]})
        return make


def pomt_params(rows, n: int) -> tuple[list[float], list[float]]:
    """Band edges (2n bands between the fastest and the slowest pruned point) and the n band indices used."""
    lat = [r["predicted_ms"] for r in rows if r["site"] is not None]
    lo, hi = min(lat), max(lat)
    edges = list(np.linspace(lo - 1e-9, hi, 2 * n + 1))
    filled = [i for i in range(1, len(edges)) if Pomt.best_in_band(rows, edges[i - 1], edges[i]) is not None]
    pick = [filled[i] for i in np.unique(np.round(np.linspace(0, len(filled) - 1, min(n, len(filled)))).astype(int))]
    return edges, [float(i) for i in pick]


# ------------------------------------------------------------------------------------------ one runtime
class RuntimeBench:
    """Exports (once per distinct schedule), evaluates in the runtime, and measures interleaved."""

    def __init__(self, ctx: Context, runtime: str, work: Path, test, ref_top1: np.ndarray, args):
        self.ctx, self.runtime, self.work, self.test, self.ref_top1, self.args = ctx, runtime, work, test, ref_top1, args
        self.art = Artifact(ctx.format)
        self.artifacts: dict[tuple, dict] = {}
        self.points: dict[str, list[tuple[Cand, dict]]] = {}

    def artifact(self, cand: Cand) -> dict:
        a = self.artifacts.get(cand.key)
        if a is not None:
            return a
        model = self.ctx.model
        path = self.work / f"{self.runtime}_{len(self.artifacts):03d}_{cand.method}{self.art.suffix}"
        t0 = time.time()
        try:
            if cand.mode == "unpruned":
                self.art.export(model, path, pruned=False)
            else:
                cand.apply(model)
                self.art.export(model, path)
        finally:
            model.set_thresholds([None] * model.depth)
        export_s = time.time() - t0
        a = {"path": path, "name": path.stem, "export_s": export_s, **self.evaluate(path)}
        a["selectors"] = cand.selectors if cand.mode != "unpruned" else [False] * model.depth
        self.artifacts[cand.key] = a
        return a

    def evaluate(self, path: Path) -> dict:
        """Top-1 and kept patch tokens per block of the exported model, run in its runtime (1 thread)."""
        model, test = self.ctx.model, self.test
        s = open_session(self.runtime, str(path), 1)
        name = s.input_specs[0]["name"]
        top1 = np.zeros(len(test), np.int64)
        kept = np.full((model.depth, len(test)), model.num_patches, np.int64)
        for i in range(len(test)):
            outs = s.run({name: test.images[i:i + 1]})
            logits = next(o for o in outs if o.ndim == 2 and o.dtype.kind == "f")  # (1, classes)
            top1[i] = int(np.argmax(logits[0]))
            k = [o for o in outs if o.ndim == 1 and o.shape[0] == model.depth and o.dtype.kind in "iu"]
            if k:
                kept[:, i] = k[0]
        return {"top1": top1, "kept": kept, "accuracy": float((top1 == test.labels).mean()),
                "agreement": float((top1 == self.ref_top1).mean()), "mean_kept": [float(v) for v in kept.mean(axis=1)]}

    def add(self, cand: Cand, accuracy_override: dict | None = None) -> dict:
        a = self.artifact(cand)
        ev = {"accuracy": a["accuracy"], "agreement": a["agreement"], "mean_kept": a["mean_kept"]}
        if accuracy_override:
            ev.update(accuracy_override)
        self.points.setdefault(cand.method, []).append((cand, ev))
        return ev

    def sweep(self, method: str, make, params: list[float], target: float, refine: int,
              table=None, extra=None) -> None:
        """Add the points of ``make(param)`` for ``params``, then ``refine`` more between the two
        points (ordered by latency predicted from the real kept counts) that straddle ``target``."""
        done: dict[tuple, float] = {}

        def add(param):
            c = make(param)
            if c is None or c.key in done:
                return
            done[c.key] = param
            ev = self.add(c, extra(c) if extra else None)
            log(f"  {self.runtime} {method} {param:.4g}: top-1 {100 * ev['accuracy']:.1f} %, kept {np.mean(ev['mean_kept']):.1f}")
        for p in params:
            add(p)
        if refine <= 0:
            return
        pts = [(self.order(c, ev, table), c.param, ev["accuracy"]) for c, ev in self.points.get(method, [])]
        pts.sort()
        for (_, p0, a0), (_, p1, a1) in zip(pts, pts[1:]):
            if a0 < target <= a1:
                for p in np.linspace(p0, p1, refine + 2)[1:-1]:
                    add(float(p))
                break

    def order(self, cand: Cand, ev: dict, table) -> float:
        if table is None:
            return -cand.param
        a = self.artifacts[cand.key]
        return float(table.predict_ms(a["kept"], np.array(a["selectors"]), mode=cand.mode if cand.mode != "unpruned" else "threshold").mean())

    def measure_all(self, rounds: int, seed: int) -> None:
        """Time every artifact ``rounds`` times, in a new shuffled order each round (seeded)."""
        rng = np.random.default_rng(seed)
        arts = list(self.artifacts.values())
        feeds = self.ctx.feeds()
        name = open_session(self.runtime, str(arts[0]["path"]), 1).input_specs[0]["name"]
        if name != "image":
            feeds = [{name: f["image"]} for f in feeds]
        for a in arts:
            a["samples_ms"], a["round_medians_ms"] = [], []
        t0 = time.time()
        for r in range(rounds):
            for i in rng.permutation(len(arts)):
                a = arts[i]
                m = self.ctx.device.measure_model(a["path"], feeds, name=a["name"])
                a["samples_ms"] += m["samples_ms"]
                a["round_medians_ms"].append(m["median_ms"])
            log(f"{self.runtime}: round {r + 1}/{rounds} measured {len(arts)} artifacts ({time.time() - t0:.0f} s)")
        for a in arts:
            s = np.asarray(a["samples_ms"])
            a["median_ms"], a["p90_ms"], a["runs"] = float(np.median(s)), float(np.percentile(s, 90)), int(len(s))

    def rows(self, table=None) -> dict:
        out = {}
        for method, pts in self.points.items():
            rows = []
            for c, ev in pts:
                a = self.artifacts[c.key]
                row = {"method": method, "param": c.param, "mode": c.mode, "measured_ms": a["median_ms"], "p90_ms": a["p90_ms"],
                       "round_medians_ms": a["round_medians_ms"], "runs": a["runs"],
                       "accuracy": ev["accuracy"], "agreement": ev["agreement"], "mean_kept": ev["mean_kept"],
                       "mean_kept_avg": float(np.mean(ev["mean_kept"])), "thresholds": c.thresholds, "capacities": c.capacities,
                       "artifact": a["name"], "export_s": round(a["export_s"], 2), **c.info}
                if "accuracy_seeds" in ev:
                    row["accuracy_seeds"] = ev["accuracy_seeds"]
                    row["agreement_seeds"] = ev["agreement_seeds"]
                if table is not None:
                    mode = "capacity" if c.mode == "capacity" else "threshold"
                    row["predicted_ms"] = float(table.predict_ms(a["kept"], np.array(a["selectors"]), mode=mode).mean())
                rows.append(row)
            out[method] = sorted(rows, key=lambda r: r["measured_ms"])
        return out


# ------------------------------------------------------------------------------------------ summary
def summarise(methods: dict, unpruned: dict, vitedge=VITEDGE, baselines=BASELINES, relative: bool = False) -> dict:
    """Latency at equal accuracy (>= unpruned - 1 point) per method and the savings of vitedge."""
    target = unpruned["accuracy"] - 0.01
    x = "relative_latency" if relative else "measured_ms"
    # every curve may fall back to pruning nothing: the unpruned model is a point of each
    at = {m: latency_at_accuracy(pts + [unpruned], target, x=x) for m, pts in methods.items()}
    savings = {}
    for v in vitedge:
        if v not in at or at[v]["latency"] is None:
            continue
        for b in baselines:
            if b in at and at[b]["latency"] is not None:
                savings[f"{v} vs {b}"] = 1 - at[v]["latency"] / at[b]["latency"]
    return {"target_accuracy": target, "latency_at_target": at, "savings": savings,
            "unpruned_latency": unpruned.get(x, 1.0)}


# ------------------------------------------------------------------------------------------ eager (ToMe)
def eager_bench(model, ctx: Context, test, ref_top1, args, P: int, L: int, topk_rs: list[float]) -> dict:
    """ToMe and the unpruned/Top-K models in PyTorch eager (same threads as the device), interleaved."""
    threads = args.eager_threads or ctx.device.threads
    feeds = [torch.from_numpy(f["image"]) for f in ctx.feeds()]
    rmax = max(tome_max_r(P, L), 8)
    # r = 0: ToMe's code path merging nothing (explicit attention, unlike timm's fused one): its own baseline
    rs = [0] + sorted({int(v) for v in np.round(np.linspace(1, rmax, args.points))})
    funcs = {("unpruned", 0): lambda x: model.vit(x)}
    for r in rs:
        funcs[("tome", r)] = lambda x, r=r: tome_forward(model, x, r, args.tome_prop_attn)[0]
    caps_by_r = {float(r): constant_capacities(P, L, r) for r in topk_rs}
    for r, caps in caps_by_r.items():
        funcs[("topk_eager", r)] = ("caps", caps)
    evals = {}
    with torch_threads(1):
        for r in rs:
            top1, kept = evaluate_tome(model, test, r, args.tome_prop_attn)
            evals[("tome", r)] = {"accuracy": float((top1 == test.labels).mean()), "agreement": float((top1 == ref_top1).mean()),
                                  "mean_kept": [float(k) for k in kept]}
        for r, caps in caps_by_r.items():
            ev = evaluate_pruned(model, test, capacities=caps, reference_top1=ref_top1)
            evals[("topk_eager", r)] = {"accuracy": ev.accuracy, "agreement": ev.agreement, "mean_kept": ev.mean_kept}
        evals[("unpruned", 0)] = {"accuracy": float((ref_top1 == test.labels).mean()), "agreement": 1.0, "mean_kept": [float(P)] * L}
    cfg = ctx.device.config
    rng = np.random.default_rng(args.seed + 1)
    keys = list(funcs)
    samples = {k: [] for k in keys}
    rounds = {k: [] for k in keys}
    with torch_threads(threads), torch.inference_mode():
        for _ in range(args.rounds):
            for i in rng.permutation(len(keys)):
                k = keys[i]
                f = funcs[k]
                if isinstance(f, tuple):
                    model.set_capacities(f[1])
                    fn = model
                else:
                    model.set_thresholds([None] * L)
                    fn = f
                it = iter(range(10 ** 9))
                m = measure(lambda: fn(feeds[next(it) % len(feeds)]), cfg, name=str(k))
                samples[k] += m.samples_ms
                rounds[k].append(m.median_ms)
    model.set_thresholds([None] * L)
    base = float(np.median(samples[("unpruned", 0)]))
    out = {"threads": threads, "torch": torch.__version__, "tome_prop_attn": args.tome_prop_attn, "methods": {}}
    for k in keys:
        s = np.asarray(samples[k])
        row = {"method": k[0], "param": float(k[1]), "measured_ms": float(np.median(s)), "p90_ms": float(np.percentile(s, 90)),
               "runs": int(len(s)), "round_medians_ms": rounds[k], "relative_latency": float(np.median(s)) / base, **evals[k]}
        row["mean_kept_avg"] = float(np.mean(row["mean_kept"]))
        if k[0] == "unpruned":
            out["unpruned"] = row
        else:
            out["methods"].setdefault(k[0], []).append(row)
    for rows in out["methods"].values():
        rows.sort(key=lambda r: r["measured_ms"])
    return out


# ------------------------------------------------------------------------------------------ reference model
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


def table_info(table, path: Path) -> dict:
    """Plot the table (vitedge.plots.plot_table) and say how linear attention + MLP is in n."""
    res = plot_table(table, path)
    n = np.array([m for m in table.parts["mlp"].get("measured_tokens") or table.measured_tokens if m >= 1])
    tot = np.array(table.parts["attention"]["median_ms"])[n - 1] + np.array(table.parts["mlp"]["median_ms"])[n - 1]
    sel = {k: float(np.median(table.parts[k]["median_ms"])) for k in ("selector", "capacity_selector") if k in table.parts}
    return {"plot": path.name, "plateaus": res["plateaus"], "linearity_attention_plus_mlp": linearity(n, tot),
            "measured_tokens": [int(v) for v in n], "attention_plus_mlp_ms": [float(v) for v in tot],
            "selector_median_ms": sel, "fixed_ms": {k: float(v["median_ms"]) for k, v in table.fixed.items()},
            "profile_seconds": table.meta.get("profile_seconds"), "drift": table.drift,
            "device": {k: table.device.get(k) for k in ("name", "runtime", "runtime_version", "threads")}}


def run_reference(args, work: Path) -> dict:
    torch.manual_seed(args.seed)
    test = digits_split("test")
    if args.test_limit:
        test = ImageSet(test.images[:args.test_limit], test.labels[:args.test_limit], f"{test.name}[:{args.test_limit}]")
    ctx = make_ctx(args, work, format="onnx", calib_limit=args.calib_limit, tokens_step=args.tokens_step)
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

    rmax = (P - 1) / L
    r_init = sorted({float(v) for v in np.round(np.linspace(1, int(rmax), args.points))}) if args.points <= int(rmax) \
        else [float(r) for r in range(1, int(rmax) + 1)]
    for runtime in args.runtimes:
        t_rt = time.time()
        rctx = ctx if runtime == "onnxruntime" else make_ctx(args, work, format="tflite", mode="capacity", calib_limit=args.calib_limit,
                                                                 tokens_step=args.tokens_step)
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
            bench.sweep("vitedge_threshold", viterbi_maker("vitedge_threshold", lt), viterbi_params(lt, args.points), target, args.refine, table)
        lc = Planner(cal, "latency", table, mode="capacity", min_patch_tokens=model.min_patch_tokens)
        bench.sweep("vitedge_capacity", viterbi_maker("vitedge_capacity", lc), viterbi_params(lc, args.points), target, args.refine, table)
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
            res["ablation"] = {"fisher_block": rows.get("vitedge_threshold", []),
                               **{imp: rows.get(f"ablation_{imp}", []) for imp in abl}}
            res["ablation_summary"] = summarise({f"ablation_{k}": v for k, v in res["ablation"].items()}, unpruned,
                                                vitedge=("ablation_fisher_block",), baselines=("ablation_fisher_raw", "ablation_cls_attention"))
            res["not_available"] = {}
        else:
            res["not_available"] = {"rctp_flops": NOT_STATIC, "vitedge_threshold": NOT_STATIC, "tome": "argsort (not convertible without sort)"}
        res["summary"] = summarise(res["methods"], unpruned)
        out["runtimes"][runtime] = res
        log(f"{runtime}: done in {time.time() - t_rt:.0f} s")
    if not args.no_tome:
        topk_rs = sorted({c["param"] for c in out["runtimes"]["onnxruntime"]["methods"].get("topk", [])}) if "onnxruntime" in out["runtimes"] else r_init
        t0 = time.time()
        eager = eager_bench(model, ctx, test, ref_top1, args, P, L, topk_rs)
        eager["seconds"] = round(time.time() - t0, 1)
        eager["summary"] = summarise(eager["methods"], eager["unpruned"], vitedge=(), baselines=(), relative=True)
        out["torch_eager"] = eager
        log(f"torch eager (ToMe, Top-K) done in {eager['seconds']:.0f} s")
    out["relative_summary"] = relative_summary(out)
    return out


def relative_summary(out: dict) -> dict:
    """Latency at the accuracy target as a fraction of the same runtime's unpruned latency, for every
    method in every runtime (the only fair way to put ToMe's eager numbers next to exported models)."""
    rows = {}
    for rt, res in out["runtimes"].items():
        s = summarise(res["methods"], res["unpruned"], relative=True)
        for m, v in s["latency_at_target"].items():
            rows[f"{m} ({rt})"] = v
    if "torch_eager" in out:
        for m, v in out["torch_eager"]["summary"]["latency_at_target"].items():
            rows[f"{m} (torch eager)"] = v
    return {"target_accuracy": out["target_accuracy"], "relative_latency_at_target": rows}


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


def bisect_kept(method: str, planner: Planner, goal: float, realised=None, iters: int = 30, tol: float = 0.0) -> Cand | None:
    """The schedule whose mean kept patch tokens per block is closest to ``goal``: bisection on the
    budget; kept = ``realised(schedule)`` when given (threshold mode: pruning compounds), else the
    calibration's prediction (exact in capacity mode)."""
    hi = planner.full if planner.unit == "ms" else 1.0
    lo = planner.min_budget
    best = None
    for _ in range(iters if realised is None else min(iters, 14)):
        mid = 0.5 * (lo + hi)
        try:
            s = planner.solve(mid)
        except BudgetUnreachableError:
            lo = mid
            continue
        k = realised(s) if realised is not None else float(np.mean(s.predicted_kept))
        if best is None or abs(k - goal) < abs(best[0] - goal):
            best = (k, mid, s)
        if abs(k - goal) <= tol:
            break
        if k > goal:
            hi = mid
        else:
            lo = mid
    if best is None or best[2].keeps_everything:
        return None
    return from_schedule(method, best[1], best[2])


def latency_at_kept(pts: list[dict], kept: float) -> float | None:
    xs = sorted((r["mean_kept_avg"], r["measured_ms"]) for r in pts)
    if not xs or kept < xs[0][0] or kept > xs[-1][0]:
        return None
    return float(np.interp(kept, [x[0] for x in xs], [x[1] for x in xs]))


def cuda_note() -> str:
    try:
        import onnxruntime
        has = torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except Exception:  # noqa: BLE001
        has = False
    return ("a CUDA device is present but a `cuda` device is out of scope of this benchmark (local CPU only)" if has
            else "no CUDA GPU on this machine: no `cuda` device measured (out of scope here)")


# ------------------------------------------------------------------------------------------ report
def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def fmt_param(r: dict) -> str:
    m = r["method"]
    if m in ("topk", "random", "topk_eager"):
        return f"r={r['param']:.3g}"
    if m == "rctp_flops":
        return f"FLOPs {r['param']:.3f}"
    if m.startswith("vitedge") or m.startswith("ablation"):
        return f"{r['param']:.3f} ms"
    if m == "pomt":
        return f"site {r['site']}, K={r['K']}"
    if m == "tome":
        return f"r={int(r['param'])}"
    return ""


def report(data: dict, args) -> str:
    ref = data.get("reference")
    md = ["# Accuracy vs measured latency (pareto.py)\n\n"]
    env = data["environment"]
    md.append(f"CPU: {env.get('cpu_model')} ({env.get('cpu_count')} cores), threads {data['threads']}, "
              f"onnxruntime {env.get('runtime_version')}, LiteRT {data['runtime_versions'].get('litert')}, torch {env.get('torch')}, "
              f"timm {env.get('timm')}. Command: `{env.get('command')}`. Measured in {args.rounds} interleaved rounds"
              f"{' (QUICK: short protocol, few points; not a result)' if args.quick else ''}.\n")
    if ref:
        md.append(f"\nReference model `{ref['model']}` ({ref['checkpoint']}); test: {ref['test_images']} ({ref['num_test']} images, "
                  f"real labels); calibration: {ref['calibration_images']} ({ref['num_calibration']}). Unpruned top-1 "
                  f"{pct(ref['unpruned_accuracy'])} %, accuracy target (unpruned - 1 point) {pct(ref['target_accuracy'])} %.\n")
        for rt, res in ref["runtimes"].items():
            u = res["unpruned"]
            md.append(f"\n## {rt}: unpruned {u['measured_ms']:.3f} ms (p90 {u['p90_ms']:.3f}; per-round medians "
                      f"{', '.join(f'{v:.3f}' for v in u['round_medians_ms'])})\n\n")
            rows = []
            for m, pts in res["methods"].items():
                for r in sorted(pts, key=lambda r: -r["mean_kept_avg"]):
                    rows.append([LABELS.get(m, m), fmt_param(r), r["measured_ms"], r["p90_ms"], f"{r['relative_latency']:.3f}",
                                 r.get("predicted_ms", "-"), pct(r["accuracy"]), pct(r["agreement"]), f"{r['mean_kept_avg']:.1f}",
                                 " ".join(f"{k:.0f}" for k in r["mean_kept"])])
            md.append(md_table(["method", "setting", "median ms", "p90 ms", "/ unpruned", "table-predicted ms", "top-1 %",
                                "agrees w/ unpruned %", "mean kept", "kept per block"], rows))
            if res.get("not_available"):
                md.append("\nNot in this runtime: " + "; ".join(f"{k}: {v}" for k, v in res["not_available"].items()) + "\n")
            md.append(summary_md(res["summary"], rt, res["table"]))
            t = res["table"]
            lin = t["linearity_attention_plus_mlp"]
            md.append(f"\nLatency table ({t['plot']}): attention + MLP vs n is {linear_words(lin)}: "
                      f"R² = {lin['r2']:.4f}, slope {1000 * lin['slope_ms_per_token']:.2f} µs/token, max residual "
                      f"{100 * lin['max_rel_residual']:.1f} % of the largest latency, largest rise {100 * lin['max_rel_step']:.1f} % at n = {lin['max_step_at_tokens']}; "
                      f"plateaus (within 2 %): {t['plateaus'] or 'none'}; selector medians {t['selector_median_ms']}.\n")
            pk = res["pomt_grid"]["pick"]
            md.append(f"\nPOMT grid: {res['pomt_grid']['points']} (site, K) points; global utility optimum (what POMT deploys): "
                      f"site {pk['site']}, K = {pk['K']}, predicted {pk['predicted_ms']:.3f} ms, calibration top-1 {pct(pk['calib_accuracy'])} %.\n")
            if "ablation" in res:
                md.append("\n### RCTP ablation (Fig. 4): importance criterion, same latency Viterbi (threshold mode)\n\n")
                rows = []
                for imp, pts in res["ablation"].items():
                    for r in pts:
                        rows.append([imp, f"{r['param']:.3f}", r["measured_ms"], r["p90_ms"], pct(r["accuracy"]), pct(r["agreement"]),
                                     f"{r['mean_kept_avg']:.1f}", " ".join(f"{k:.0f}" for k in r["mean_kept"])])
                md.append(md_table(["importance", "budget ms", "median ms", "p90 ms", "top-1 %", "agrees %", "mean kept", "kept per block"], rows))
                s = res["ablation_summary"]
                md.append("\n" + "; ".join(f"{k.replace('ablation_', '')}: {fmt_at(v)}" for k, v in s["latency_at_target"].items()) + "\n")
                md.append(ablation_verdict(res["ablation"], ref["target_accuracy"]) + "\n")
        if "torch_eager" in ref:
            e = ref["torch_eager"]
            md.append(f"\n## PyTorch eager ({e['threads']} threads, torch {e['torch']}): ToMe (our re-implementation; "
                      f"proportional attention {'on' if e['tome_prop_attn'] else 'off'}) — not exportable without sort\n\n"
                      f"unpruned eager {e['unpruned']['measured_ms']:.3f} ms (p90 {e['unpruned']['p90_ms']:.3f})\n\n")
            rows = [[LABELS.get(m, m), fmt_param(r), r["measured_ms"], r["p90_ms"], f"{r['relative_latency']:.3f}", pct(r["accuracy"]),
                     pct(r["agreement"]), f"{r['mean_kept_avg']:.1f}", " ".join(f"{k:.0f}" for k in r["mean_kept"])]
                    for m, pts in e["methods"].items() for r in pts]
            md.append(md_table(["method", "setting", "median ms", "p90 ms", "/ eager unpruned", "top-1 %", "agrees %", "mean kept",
                                "kept per block"], rows))
        rs = ref["relative_summary"]
        md.append(f"\n## Latency at the accuracy target ({pct(rs['target_accuracy'])} %), relative to the same runtime's unpruned model\n\n")
        md.append(md_table(["method (runtime)", "latency / unpruned", "how"],
                           [[k, "-" if v["latency"] is None else f"{v['latency']:.3f}", v["how"]] for k, v in rs["relative_latency_at_target"].items()]))
    if data.get("large"):
        lg = data["large"]
        md.append(f"\n## Larger models, latency only ({lg['note']}; {lg['cuda']})\n")
        for name, r in lg["models"].items():
            md.append(f"\n### {name}: unpruned {r['unpruned_ms']:.2f} ms, P = {r['num_patches']}, {r['depth']} blocks\n\n")
            rows = [[LABELS.get(f, f), f"{x['target_fraction']:.2f}", f"{x['mean_kept_avg']:.1f}", x["measured_ms"], x["p90_ms"],
                     x.get("predicted_ms", "-"), fmt_param(x) if f == "pomt" else ""] for f, pts in r["families"].items() for x in pts]
            md.append(md_table(["family", "kept target / P", "measured mean kept", "median ms", "p90 ms", "table-predicted ms", "note"], rows))
            at = r["latency_at_mean_kept"]
            fr = list(next(iter(at.values())).keys()) if at else []
            md.append("\nLatency (ms, interpolated) at equal mean kept tokens:\n\n")
            md.append(md_table(["family", *[f"kept = {f} P" for f in fr]],
                               [[LABELS.get(f, f), *["-" if v[k] is None else f"{v[k]:.2f}" for k in fr]] for f, v in at.items()]))
            lin = r["table"]["linearity_attention_plus_mlp"]
            md.append(f"\nTable ({r['table']['plot']}): attention + MLP linear fit R² = {lin['r2']:.4f}, max residual "
                      f"{100 * lin['max_rel_residual']:.1f} % of the largest latency, largest rise {100 * lin['max_rel_step']:.1f} % at n = {lin['max_step_at_tokens']}; "
                      f"plateaus: {r['table']['plateaus'] or 'none'}.\n")
    return "".join(md)


def fmt_at(v: dict) -> str:
    return "not reached" if v["latency"] is None else f"{v['latency']:.3f} ({v['how']})"


def linear_words(lin: dict) -> str:
    return "nearly linear" if lin["r2"] >= 0.98 and lin["max_rel_residual"] < 0.05 else "not linear"


def summary_md(s: dict, rt: str, table: dict | None = None) -> str:
    md = [f"\n**Latency at equal accuracy ({rt}; top-1 >= {pct(s['target_accuracy'])} %, interpolated on each Pareto front):** "]
    md.append("; ".join(f"{LABELS.get(k, k)}: {fmt_at(v)}" for k, v in s["latency_at_target"].items()) + ".\n\n")
    if s["savings"]:
        md.append(md_table(["vitedge vs baseline", "latency saved at equal accuracy"],
                           [[k, f"{100 * v:+.1f} %"] for k, v in s["savings"].items()]))
    for v, b, goal in (("vitedge_threshold", "rctp_flops", 0.09), ("vitedge_threshold", "topk", 0.15),
                       ("vitedge_capacity", "rctp_flops", 0.09), ("vitedge_capacity", "topk", 0.15)):
        key = f"{v} vs {b}"
        if key in s["savings"]:
            got = s["savings"][key]
            md.append(f"\n- {key}: {100 * got:+.1f} % (goal >= {100 * goal:.0f} %): "
                      + ("met" if got >= goal else f"short by {100 * (goal - got):.1f} points") + "\n")
    short = [k for k, g in (("vitedge_threshold vs rctp_flops", 0.09), ("vitedge_threshold vs topk", 0.15))
             if k in s["savings"] and s["savings"][k] < g]
    if short and table is not None:
        lin = table["linearity_attention_plus_mlp"]
        md.append(f"\nWhy short: on this device the block cost is {linear_words(lin)} in the token count (attention + MLP: "
                  f"R² = {lin['r2']:.4f} against a straight line, max residual {100 * lin['max_rel_residual']:.1f} % of the largest latency, "
                  f"plateaus {table['plateaus'] or 'none'}), so a latency cost ranks the candidates almost as FLOPs do and "
                  "there are few plateaus/cliffs to exploit; the selector costs "
                  f"{table['selector_median_ms']} ms per block, which a FLOPs model ignores.\n")
    return "".join(md)


def ablation_verdict(abl: dict, target: float) -> str:
    at = {k: latency_at_accuracy(v, target)["latency"] for k, v in abl.items()}
    ok = {k: v for k, v in at.items() if v is not None}
    if not ok:
        return "No importance criterion reaches the accuracy target below the unpruned latency."
    best = min(ok, key=ok.get)
    others = ", ".join(f"{k} {'not reached' if v is None else f'{v:.3f} ms'}" for k, v in at.items() if k != best)
    return f"Winner at the accuracy target: **{best}** ({ok[best]:.3f} ms); {others}."


def plot_main(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = data["reference"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ort = ref["runtimes"].get("onnxruntime") or next(iter(ref["runtimes"].values()))
    ax = axes[0]
    for m, pts in ort["methods"].items():
        c, mk = STYLE.get(m, ("k", "."))
        ax.errorbar([p["measured_ms"] for p in pts], [100 * p["accuracy"] for p in pts],
                    xerr=[[0] * len(pts), [p["p90_ms"] - p["measured_ms"] for p in pts]], fmt=mk + "-", color=c, ms=4,
                    lw=1, elinewidth=0.4, ecolor=matplotlib.colors.to_rgba(c, 0.3), capsize=0, label=LABELS.get(m, m))
    u = ort["unpruned"]
    ax.plot([u["measured_ms"]], [100 * u["accuracy"]], "k*", ms=12, label="unpruned")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8, label="unpruned - 1 point")
    pk = ort["pomt_grid"]["pick"]
    pick = [p for p in ort["methods"].get("pomt", []) if p.get("site") == pk["site"] and p.get("K") == pk["K"]]
    if pick:
        ax.plot([pick[0]["measured_ms"]], [100 * pick[0]["accuracy"]], "o", mfc="none", mec="tab:green", ms=14, label="POMT utility optimum")
    ax.set(xlabel=f"measured median latency, {ort['table']['device']['runtime']} (ms; bar to p90)", ylabel="top-1 % (digits test)",
           title=f"{ref['model']}: accuracy vs measured latency ({ort['table']['device']['threads']} threads)")
    lo = min(100 * p["accuracy"] for pts in ort["methods"].values() for p in pts if p["method"] != "random")
    ax.set_ylim(max(0, lo - 5), 100 * max(u["accuracy"], max(p["accuracy"] for pts in ort["methods"].values() for p in pts)) + 2)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    for rt, res in ref["runtimes"].items():
        ls = "-" if rt == "onnxruntime" else "--"
        for m, pts in res["methods"].items():
            if m == "random":
                continue
            c, mk = STYLE.get(m, ("k", "."))
            ax.plot([p["relative_latency"] for p in pts], [100 * p["accuracy"] for p in pts], mk + ls, color=c, ms=4, lw=1,
                    label=f"{LABELS.get(m, m)} [{rt}]")
    if "torch_eager" in ref:
        for m, pts in ref["torch_eager"]["methods"].items():
            c, mk = STYLE.get(m, ("k", "."))
            ax.plot([p["relative_latency"] for p in pts], [100 * p["accuracy"] for p in pts], mk + ":", color=c, ms=5, lw=1.2,
                    label=f"{LABELS.get(m, m)} [torch eager]")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8)
    ax.plot([1.0], [100 * ref["unpruned_accuracy"]], "k*", ms=12)
    ax.set(xlabel="latency / unpruned latency in the same runtime (axis cut at 1.6)", ylabel="top-1 %",
           title="all runtimes (solid: ONNX Runtime, dashed: LiteRT, dotted: PyTorch eager)")
    ax.set_xlim(0, 1.6)
    ax.set_ylim(axes[0].get_ylim())
    ax.legend(fontsize=6, loc="lower right")
    for a in axes:
        a.grid(alpha=0.3)
    save_plot(fig, path)
    plt.close(fig)


def plot_ablation(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = data["reference"]
    res = ref["runtimes"]["onnxruntime"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for imp, pts in res["ablation"].items():
        c, mk = STYLE[f"ablation_{imp}"]
        ax.plot([p["measured_ms"] for p in pts], [100 * p["accuracy"] for p in pts], mk + "-", color=c, label=LABELS[f"ablation_{imp}"])
    u = res["unpruned"]
    ax.plot([u["measured_ms"]], [100 * u["accuracy"]], "k*", ms=12, label="unpruned")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8, label="unpruned - 1 point")
    ax.set(xlabel="measured median latency, ONNX Runtime (ms)", ylabel="top-1 % (digits test)",
           title="RCTP Fig. 4 ablation: importance criterion (latency Viterbi, threshold mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_plot(fig, path)
    plt.close(fig)


def plot_large(large: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = large["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], models.items()):
        for fam, pts in r["families"].items():
            c, mk = STYLE.get(fam, ("k", "."))
            pts = sorted(pts, key=lambda p: p["mean_kept_avg"])
            ax.plot([p["mean_kept_avg"] for p in pts], [p["measured_ms"] for p in pts], mk + "-", color=c, label=LABELS.get(fam, fam))
        ax.axhline(r["unpruned_ms"], color="k", ls=":", label="unpruned")
        ax.set(xlabel="mean kept patch tokens per block (measured)", ylabel="measured median latency (ms)",
               title=f"{name} (random weights)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_plot(fig, path)
    plt.close(fig)


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
    p.add_argument("--eager-threads", type=int, default=0, help="PyTorch eager threads (0: the device's, as ONNX Runtime)")
    p.add_argument("--no-ablation", action="store_true", help="skip the RCTP importance ablation")
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
