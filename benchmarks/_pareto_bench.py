"""The measurement side of pareto.py: operating points to export (``Cand``: constant Top-K, Viterbi budgets,
bisection on the mean kept tokens), the POMT single-site sweep, ``RuntimeBench`` (export once per distinct
schedule, evaluate in the runtime, time interleaved) and the PyTorch eager bench (ToMe).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from _methods import constant_capacities, pomt_utility, single_site_accuracy_grid, single_site_capacities, torch_threads
from _tome import evaluate_tome, tome_forward, tome_max_r
from vitedge.context import Context
from vitedge.devices.runner import measure, open_session
from vitedge.evaluate import evaluate_pruned, predict_unpruned
from vitedge.exporters.registry import get_exporter
from vitedge.search import BudgetUnreachableError
from vitedge.search.planner import Planner


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
    token_score: str = "cls-attention"  # the baselines' (RCTP, POMT) score; vitedge's schedules carry theirs
    package_token: bool = False         # the baselines drop the pruned tokens; vitedge's schedules carry theirs

    @property
    def key(self) -> tuple:
        return (self.mode, tuple(self.thresholds or ()), tuple(self.capacities or ()), self.token_score, self.package_token)

    @property
    def selectors(self) -> list[bool]:
        L = len(self.thresholds or self.capacities or [])
        return [(self.thresholds or [None] * L)[l] is not None or (self.capacities or [None] * L)[l] is not None
                for l in range(L)]

    def apply(self, model) -> None:
        model.token_score, model.package_token = self.token_score, self.package_token
        if self.mode == "capacity":
            model.set_capacities(self.capacities)
        else:
            model.set_thresholds(self.thresholds or [None] * model.depth)


def from_schedule(method: str, param: float, s) -> Cand:
    return Cand(method, float(param), s.mode, list(s.thresholds) if s.mode == "threshold" else None,
                list(s.capacities) if s.mode == "capacity" else None,
                {"budget": float(param), "unit": s.unit, "search_predicted": s.predicted, "fisher_loss": s.fisher_loss,
                 "candidates": list(s.candidates), "predicted_kept": list(s.predicted_kept)},
                s.meta.get("token_score") or "cls-attention", bool(s.meta.get("package_token")))


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
        self.art = get_exporter(ctx.format)
        self.artifacts: dict[tuple, dict] = {}
        self.points: dict[str, list[tuple[Cand, dict]]] = {}

    def artifact(self, cand: Cand) -> dict:
        a = self.artifacts.get(cand.key)
        if a is not None:
            return a
        model = self.ctx.model
        score, package = model.token_score, model.package_token  # restored after the export (a sweep may prune as vitedge does)
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
            model.token_score, model.package_token = score, package
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


# ------------------------------------------------------------------------------------------ eager (ToMe)
def eager_bench(model, ctx: Context, test, ref_top1, args, P: int, L: int, topk_rs: list[float]) -> dict:
    """ToMe and the unpruned/Top-K models in PyTorch eager (same threads as the device), interleaved."""
    threads = args.eager_threads or ctx.device.threads
    feeds = [torch.from_numpy(f["image"]) for f in ctx.feeds()]
    rmax = max(tome_max_r(P, L), 8)
    # r = 0: the ToMe forward merging nothing (its own attention, which returns the keys): its own baseline
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
