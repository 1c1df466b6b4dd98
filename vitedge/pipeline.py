"""The main job: calibrate -> profile -> search -> export -> measure on the device (closed loop).

``run_export`` is what ``vitedge export --budget-ms B`` calls. Outputs go to a temporary folder and
are moved into ``out`` only when everything succeeded (no partial files).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .context import Context
from .evaluate import evaluate_schedule, predict_unpruned
from .exporters.onnx import file_sha256
from .exporters.registry import get_exporter
from .io import atomic_path, atomic_write_json
from .quantile import check_quantile, latency_at
from .quantized import with_precision
from .quantized_search import rerank_quantized
from .schedule import Schedule
from .search import BudgetUnreachableError
from .search.measured import MeasuredSearch, plan_knobs
from .search.planner import Planner
from .tables.latency import SELECTOR_PART

AIM = 0.95          # aim the measured median at this fraction of the budget
ACCEPT_LOW = 0.90   # accept a measured median in [ACCEPT_LOW, 1.0] x budget at once
MAX_STEP = 1.25     # one round re-aims the search budget, and moves the table's bias, by at most this factor


class BudgetNotMetError(RuntimeError):
    """After the bounded closed loop, the measured latency is still over the budget."""


class AccuracyBudgetError(ValueError):
    """``--max-accuracy-drop`` and ``--budget-ms`` cannot both hold (bad input: exit 2)."""


def make_search(ctx: Context, cal, table, *, log=print):
    """The search that answers budgets: :class:`MeasuredSearch` (``ctx.opts.objective == "measured"``,
    the default) or RCTP's Fisher :class:`Planner` (``"fisher"``). Returns (search, evaluator)."""
    from .quality import QualityEvaluator

    model, o = ctx.model, ctx.opts

    def planner(mode):
        return Planner(cal, "latency", table, mode=mode, min_patch_tokens=model.min_patch_tokens,
                       package_token=model.package_token)

    modes = ctx.search_modes if o.objective == "measured" else (ctx.mode,)
    modes = tuple(m for m in modes if table.has_part(SELECTOR_PART[m])) or (ctx.mode,)
    key = (cal.meta.get("model_hash"), cal.meta.get("image_set_hash"), cal.meta.get("token_score"), table.meta.get("created"), repr(table.device),
           modes, o.objective, o.select_by, model.package_token, tuple(sorted(o.search_knobs.items())), o.search_seconds)
    cached = ctx.searches.get(key)
    if cached is not None:  # one sweep of budgets on one context reuses every evaluated schedule
        return cached
    t0 = time.perf_counter()
    evaluator = QualityEvaluator(model, ctx.images)
    forward_s = time.perf_counter() - t0
    if o.objective == "fisher":
        ctx.searches[key] = (planner(ctx.mode), evaluator)
        return ctx.searches[key]
    knobs, n = plan_knobs(model.depth, len(ctx.images), forward_s, o.search_seconds / len(modes), fixed=o.search_knobs)
    if n < len(ctx.images):
        log(f"search: {n} of {len(ctx.images)} calibration images and {knobs.grid} candidates per block fit "
            f"--search-seconds {o.search_seconds:g} (one unpruned forward over all images took {forward_s:.1f} s)")
        evaluator = QualityEvaluator(model, ctx.images.subset(n))
    from tqdm.auto import tqdm

    bar = tqdm(desc="search (measured on the pruned model)", unit="schedule", disable=not o.progress, leave=False)
    ctx.searches[key] = (MeasuredSearch([planner(m) for m in modes], evaluator, knobs, progress=bar.update, rank=o.select_by), evaluator)
    return ctx.searches[key]


def choose_schedule(ctx: Context, *, budget_ms: float | None = None, budget_flops: float | None = None,
                    max_accuracy_drop: float | None = None, calibration_path=None, table_path=None, log=print):
    """The schedule ``vitedge search`` writes (CLI and Python API), without exporting or measuring it.

    A latency budget and/or an accuracy drop use :func:`make_search` (the measured objective by default);
    a paper's reference table (e.g. "zcu102-spvit-deit-s") its own Fisher planner; ``budget_flops`` RCTP's
    FLOPs formulation (eq. (7)). Returns (schedule, the planner or search that chose it).

    Raises:
        ValueError: --max-accuracy-drop with a paper's reference table; plus the searches' and loaders' errors.
    """
    from .search.reference import ReferencePlanner
    from .tables.reference import ReferenceTable

    # the table first (a paper's reference table is checked before calibrating)
    table = ctx.latency_table(table_path, allow_reference=True) if budget_flops is None else None
    cal = ctx.calibration(calibration_path)
    if budget_flops is not None:
        planner = Planner(cal, "flops")
        return planner.solve(budget_flops), planner
    if isinstance(table, ReferenceTable):  # its own planner, Fisher objective
        if max_accuracy_drop is not None:
            raise ValueError("--max-accuracy-drop measures the pruned model against your device's table: "
                             "not with a paper's reference table (profile the device, or drop the flag)")
        planner = ReferencePlanner(cal, table, mode=ctx.mode, min_patch_tokens=ctx.model.min_patch_tokens,
                                   package_token=ctx.model.package_token)
    else:
        planner, _ = make_search(ctx, cal, table, log=log)
        planner = rerank_quantized(ctx, planner, with_precision(ctx, Artifact(ctx.format, ctx.tflite_converter)), log=log)
        if max_accuracy_drop is not None:
            return pick_for_accuracy(planner, budget_ms, max_accuracy_drop), planner
    return (planner.solve(budget_ms) if budget_ms < planner.full else planner.keep_all(budget_ms)), planner


def calibration_estimate(evaluator, schedule: Schedule) -> dict | None:
    """Measured quality of ``schedule`` on the calibration images (None without an evaluator)."""
    if evaluator is None:
        return None
    values = schedule.capacities if schedule.mode == "capacity" else schedule.thresholds
    q = evaluator.evaluate(schedule.mode, values)
    return {"images": len(evaluator), "agreement": q.agreement, "kl": q.kl, "accuracy": q.accuracy,
            "unpruned_accuracy": evaluator.unpruned_accuracy, "drop_points": evaluator.drop_points(q),
            "drop_bound_points": evaluator.drop_bound(q),
            "drop_measure": "accuracy (labelled)" if q.accuracy is not None else "top-1 agreement with the unpruned model"}


def large_drop_warning(estimate: dict | None, search, scale: float = 1.0, limit: float = 5.0) -> str | None:
    """The summary's warning when the estimated drop exceeds ``limit`` points: it names the budget (ms, the
    search's prediction times ``scale`` = measured / predicted) that keeps the drop within 1 point (90 % bound)."""
    if estimate is None or estimate["drop_points"] <= limit or not isinstance(search, MeasuredSearch):
        return None
    within = search.fastest_within(1.0)
    return (f"warning: estimated accuracy drop {estimate['drop_points']:.1f} points on the calibration images; "
            f"a budget of about {within.predicted_ms * scale:.3g} ms keeps it within 1 point (or use --max-accuracy-drop 1)")


def pick_for_accuracy(search, budget_ms: float | None, max_drop: float) -> Schedule:
    """The fastest schedule (predicted) within ``max_drop`` points (one-sided 90 % bound on the calibration
    images); with a budget, the most accurate within it, whose bound must keep the drop.

    Raises:
        AccuracyBudgetError: both cannot hold (names the fastest latency that keeps the drop and the
            drop at the budget).
    """
    if not isinstance(search, MeasuredSearch):
        raise ValueError("--max-accuracy-drop needs the measured objective: drop --objective fisher")
    fast = search.fastest_within(max_drop)
    if budget_ms is None:
        return search.schedule(fast, fast.predicted_ms)
    at = search.best(budget_ms)
    bound = search.drop_bound_of(at)  # int8/fp16: of the quantized export (vitedge.quantized_search)
    if bound > max_drop + 1e-9:
        raise AccuracyBudgetError(
            f"no schedule within {budget_ms:.4g} ms keeps the accuracy drop within {max_drop:g} points (90 % bound on the "
            f"calibration images): the fastest that does is predicted {fast.predicted_ms:.4g} ms, and at {budget_ms:.4g} ms "
            f"the drop is {at.drop:.1f} points (bound {bound:.1f}) (raise --budget-ms or --max-accuracy-drop)")
    return search.schedule(at, budget_ms)


class Artifact:
    """An export route (an entry of :mod:`vitedge.exporters.registry`) and the log of its conversions.

    ``converter`` (TFLite only): "litert-torch" (the default) or "onnx2tf", whose files are checked
    against the ONNX file on ``feeds`` before they are kept; each such check is logged in ``conversions``.
    """

    def __init__(self, fmt: str, converter: str | None = None, feeds: list | None = None):
        self.exporter = get_exporter(fmt, converter)
        self.fmt, self.suffix, self.converter = fmt, self.exporter.suffix, self.exporter.converter
        self.feeds = feeds
        self.conversions: list[dict] = []  # onnx2tf: seconds and parity of each conversion

    def export(self, model, path, *, pruned: bool = True) -> None:
        record = self.exporter.export(model, path, pruned=pruned, feeds=self.feeds)
        if record is not None:
            self.conversions.append(record)

    def audit(self, path) -> dict:
        """{"op_types": {...}} plus, for TFLite, the XNNPACK delegation."""
        return self.exporter.audit(path)

    def parity(self, model, path, images) -> dict:
        return self.exporter.parity(model, path, images)


def _measurement_summary(m: dict) -> dict:
    return {"median": m["median_ms"], "p90": m["p90_ms"], "mad": m["mad_ms"], "runs": m["runs"]}


class ClosedLoop:
    """Search -> real kept counts -> export -> measure, re-aiming the search budget each round.

    The search budget ``target`` starts at the user's budget. Each round: (1) real per-block kept
    counts of the pruned PyTorch model on the calibration images (pruning compounds across blocks,
    which the per-block calibration counts ignore) re-predict the latency from the table, and
    ``target`` is re-aimed (up to 3 times, without exporting) until that prediction, times the
    table's bias (measured / predicted of the last round, 1 at first), is AIM x budget; (2) the
    model is exported and measured on the device, which updates the bias. The unpruned model (keep every
    token) is exported as it is while the table times the bias says it fits the budget, and ends the loop when it
    measures within it; when it measured over, the loop re-aims below it.
    """

    def __init__(self, ctx: Context, planner: Planner, workdir: Path, artifact: Artifact, *, max_rounds: int = 5, log=print):
        self.ctx, self.planner, self.workdir, self.max_rounds, self.log = ctx, planner, workdir, max_rounds, log
        self.artifact = artifact
        self.rounds: list[dict] = []

    def _realised(self, schedule: Schedule, limit: int = 64) -> tuple[float, np.ndarray]:
        if isinstance(self.planner, MeasuredSearch):  # every calibration image, batched and cached
            return self.planner.realised(schedule)
        ev = evaluate_schedule(self.ctx.model, self.ctx.images, schedule, limit=limit)
        pred = self.planner.table.predict_ms(ev.kept, np.array(schedule.selectors), mode=schedule.mode)
        return float(pred.mean()), ev.kept

    def _solve(self, target: float) -> tuple[Schedule, float]:
        """Solve, falling back to the smallest reachable search budget (only the first call may fail)."""
        try:
            return self.planner.solve(target), target
        except BudgetUnreachableError as e:
            if not self.rounds:
                raise
            return self.planner.solve(e.min_budget), e.min_budget

    @staticmethod
    def _step(goal: float, value: float) -> float:
        return min(max(goal / value, 1 / MAX_STEP), MAX_STEP)

    def run(self, budget: float) -> tuple[Schedule, Path, dict]:
        target, best, bias = budget, None, 1.0   # bias: measured / predicted, learned each round
        for r in range(self.max_rounds):
            goal = AIM * budget / bias            # what the table should predict for AIM x budget measured
            tried = []
            for _ in range(3):
                schedule, target = self._solve(target)
                realised, kept = self._realised(schedule)
                tried.append((realised, schedule, kept, target))
                # keeping every token is tried as it is while the table (times its bias) says it fits; once the
                # unpruned model measured over the budget (a table that predicted it under), re-aim below it
                if abs(realised - goal) <= 0.03 * goal or (schedule.keeps_everything and realised * bias <= budget):
                    break
                target *= self._step(goal, realised)
            # re-aiming may overshoot where schedules are sparse: export the slowest tried one that fits the goal
            fit = [t for t in tried if t[0] <= 1.03 * goal]
            realised, schedule, kept, target = max(fit, key=lambda t: t[0]) if fit else min(tried, key=lambda t: t[0])
            path = self.workdir / f"round{r}{self.artifact.suffix}"
            with self.ctx.model.pruning(schedule):
                self.artifact.export(self.ctx.model, path)
            m = self.ctx.device.measure_model(path, self.ctx.feeds(), name=f"round{r}")
            med = m["at_quantile_ms"] = latency_at(m, self.ctx.opts.budget_quantile)  # the median by default
            self.rounds.append({"round": r, "search_budget_ms": target, "predicted_ms": schedule.predicted,
                                "predicted_realised_ms": realised, "measured_ms": med,
                                "mean_kept": [float(v) for v in kept.mean(axis=1)], "candidates": schedule.candidates})
            self.log(f"  round {r}: search budget {target:.3f} ms -> predicted {realised:.3f} ms, measured {med:.3f} ms")
            if med <= budget and (best is None or med > best[2]["at_quantile_ms"]):
                best = (schedule, path, m)
            if best is not None and (best[2]["at_quantile_ms"] >= ACCEPT_LOW * budget or best[0].keeps_everything):
                break  # close enough to the budget, or nothing pruned and within it (nothing is more accurate)
            # the bias moves at most MAX_STEP per round from the last one (a noisy round cannot swing it), so a
            # device slower than its table by more than MAX_STEP is still reached in a few rounds
            bias = min(max(med / realised, bias / MAX_STEP), bias * MAX_STEP) if realised > 0 else bias
        if best is None:
            raise BudgetNotMetError(f"measured {min(x['measured_ms'] for x in self.rounds):.3f} ms > budget {budget:.3f} ms "
                                    f"after {len(self.rounds)} rounds: the device is slower than its table (re-profile with --no-cache) "
                                    "or the budget is too tight")
        return best


def run_export(ctx: Context, budget_ms: float | None, out: str | Path, *, max_accuracy_drop: float | None = None,
               calibration_path=None, table_path=None, max_rounds: int = 5, log=print) -> dict:
    """Run the main job and write ``out/model.onnx`` (or ``.tflite``), ``out/schedule.json``, ``out/report.json``.

    Args:
        ctx: the loaded model, images and device.
        budget_ms: latency budget (ms, median on the device over calibration images), or None with
            ``max_accuracy_drop``.
        out: output folder (created; files replaced only when the job succeeded).
        max_accuracy_drop: points on the calibration images (accuracy when labelled, else top-1
            agreement with the unpruned model). Alone: the fastest schedule within it (measured once
            on the device); with a budget: the most accurate within the budget, which must keep it.

    Returns:
        The report dict (also written to ``report.json``).

    Raises:
        ValueError: budget <= 0, neither budget nor drop; AccuracyBudgetError: budget and drop cannot
        both hold; BudgetUnreachableError: below the smallest reachable latency; BudgetNotMetError:
        still over budget after ``max_rounds``; plus the loaders' errors.
    """
    if budget_ms is None and max_accuracy_drop is None:
        raise ValueError("give --budget-ms, --max-accuracy-drop, or both")
    if budget_ms is not None and not (isinstance(budget_ms, (int, float)) and math.isfinite(budget_ms) and budget_ms > 0):
        raise ValueError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms}")
    if max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise ValueError(f"--max-accuracy-drop must be a number of points >= 0, got {max_accuracy_drop}")
    q = ctx.opts.budget_quantile = check_quantile(ctx.opts.budget_quantile)
    t0 = time.time()
    out = Path(out)
    model = ctx.model
    ctx.require_exporter()  # a missing converter is reported before calibrating and profiling
    mode = ctx.mode
    feeds = ctx.exporter.feeds
    artifact = Artifact(ctx.format, ctx.tflite_converter, feeds=ctx.feeds(feeds) if feeds else None)
    artifact = with_precision(ctx, artifact)  # fp16/int8: the fp32 file quantized (vitedge.quantized)
    notes: list[str] = []
    if ctx.profiled_apart:
        notes.append("threshold mode in TFLite through onnx2tf: the token count is dynamic inside the model; the "
                     "selection ops (WHERE, GATHER, SHAPE, ...) run on LiteRT's reference kernels, delegates that need "
                     "static shapes (GPU, NNAPI, NPUs) reject the dynamic-shaped nodes, XNNPACK's coverage is in 'xnnpack'; "
                     f"the latency table was profiled with ONNX Runtime on {ctx.table_device.name}, the closed loop "
                     f"measured the .tflite in {ctx.device.runtime}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vitedge-", dir=out.parent) as tmp:
        work = Path(tmp)
        unpruned_path = work / f"unpruned{artifact.suffix}"
        with model.pruning():
            artifact.export(model, unpruned_path, pruned=False)
        unpruned = ctx.device.measure_model(unpruned_path, ctx.feeds(), name="unpruned")
        log(f"unpruned: {unpruned['median_ms']:.3f} ms median on {ctx.device.name} ({ctx.device.runtime}, {ctx.device.threads} threads)")
        keep_all = budget_ms is not None and budget_ms >= latency_at(unpruned, q)
        cal = table = search = evaluator = None
        rounds: list[dict] = []
        if keep_all:  # fast path: neither calibration nor a latency table is needed
            notes.append(f"budget {budget_ms:.3f} ms is at or above the unpruned latency {unpruned['median_ms']:.3f} ms: every token is kept")
            log(notes[-1])
            schedule = Schedule(mode=mode, candidates=[0] * model.depth, thresholds=[None] * model.depth,
                                capacities=[None] * model.depth, budget=float(budget_ms), unit="ms", cost_model="latency",
                                predicted=unpruned["median_ms"], predicted_kept=[float(model.num_patches)] * model.depth,
                                fisher_loss=0.0, meta={"package_token": model.package_token})
            path = work / f"keep_all{artifact.suffix}"
            with model.pruning(schedule):
                artifact.export(model, path)  # the pruned graph's interface (kept-token outputs), nothing pruned
            measured = ctx.device.measure_model(path, ctx.feeds(), name="keep_all")
            if latency_at(measured, q) > budget_ms:  # the budget sits within the unpruned latency's noise: prune a little
                notes[-1] = (f"budget {budget_ms:.3f} ms is near the unpruned latency ({unpruned['median_ms']:.3f} ms, "
                             f"then {measured['median_ms']:.3f} ms without pruning): searching")
                log(notes[-1])
                keep_all = False
        if not keep_all:
            cal = ctx.calibration(calibration_path)
            table = ctx.latency_table(table_path)
            search, evaluator = make_search(ctx, cal, table, log=log)
            search = rerank_quantized(ctx, search, artifact, log=log)  # int8/fp16: shortlist re-ranked (vitedge.quantized_search)
            loop = ClosedLoop(ctx, search, work, artifact, max_rounds=max_rounds, log=log)
            if max_accuracy_drop is not None:
                schedule = pick_for_accuracy(search, budget_ms, max_accuracy_drop)
                if budget_ms is None:  # the fastest within the drop: export it and measure it once
                    path = work / f"accuracy{artifact.suffix}"
                    with model.pruning(schedule):
                        artifact.export(model, path)
                    measured = ctx.device.measure_model(path, ctx.feeds(), name="accuracy")
                    rounds.append({"round": 0, "predicted_ms": schedule.predicted, "measured_ms": measured["median_ms"],
                                   "mean_kept": schedule.predicted_kept, "candidates": schedule.candidates})
                else:
                    schedule, path, measured = loop.run(budget_ms)
            else:
                if budget_ms < search.min_budget:
                    search.solve(budget_ms)  # raises BudgetUnreachableError naming the smallest reachable budget
                schedule, path, measured = loop.run(budget_ms)
            rounds = rounds or loop.rounds
        audit = artifact.audit(path)
        with model.pruning(schedule):
            parity = artifact.parity(model, path, ctx.images)
        if evaluator is not None and len(evaluator) == len(ctx.images):  # measured already (batched, cached)
            values = schedule.capacities if schedule.mode == "capacity" else schedule.thresholds
            kept = evaluator.evaluate(schedule.mode, values).kept
        else:
            kept = evaluate_schedule(model, ctx.images, schedule).kept
        accuracy = _accuracy(ctx, schedule)
        estimate = calibration_estimate(evaluator, schedule)
        if isinstance(search, MeasuredSearch):
            log(f"search: {len(search.candidates)} schedules measured on {len(evaluator)} calibration images in {search.seconds:.1f} s")
        if estimate is not None and accuracy.get("available"):
            accuracy["calibration_to_eval_gap_points"] = estimate["drop_points"] - 100.0 * (accuracy["unpruned"] - accuracy["pruned"])
        warning = large_drop_warning(estimate, search, measured["median_ms"] / schedule.predicted if schedule.predicted > 0 else 1.0)
        if warning is not None:
            notes.append(warning)
            log(warning)
        predicted = (float(table.predict_ms(kept, np.array(schedule.selectors), mode=schedule.mode).mean())
                     if table is not None else unpruned["median_ms"])
        blocks = [{"block": l, "candidate": schedule.candidates[l], "threshold": schedule.thresholds[l],
                   "capacity": schedule.capacities[l], "mean_kept_tokens": float(kept[l].mean()),
                   "calibration_predicted_kept": schedule.predicted_kept[l]} for l in range(model.depth)]
        report = {
            "budget_ms": budget_ms, "budget_met": budget_ms is None or latency_at(measured, q) <= budget_ms,
            "budget_quantile": q, "measured_at_quantile_ms": latency_at(measured, q),
            "footprint": {"model": measured.get("footprint"), "unpruned": unpruned.get("footprint")},
            "max_accuracy_drop": max_accuracy_drop,
            "predicted_ms": predicted, "search_predicted_ms": schedule.predicted,
            "measured_ms": _measurement_summary(measured), "unpruned_ms": _measurement_summary(unpruned),
            "speedup": unpruned["median_ms"] / measured["median_ms"],
            "format": artifact.fmt, "mode": schedule.mode, "package_token": model.package_token,
            "modes_searched": list(search.modes) if isinstance(search, MeasuredSearch) else [] if keep_all else [schedule.mode],
            "objective": "keep-all" if keep_all else ("measured" if isinstance(search, MeasuredSearch) else "fisher"),
            **({"tflite_converter": artifact.converter} if artifact.converter else {}),
            **({"conversions": artifact.conversions} if artifact.conversions else {}),
            "schedule": {"mode": schedule.mode, "blocks": blocks, "fisher_loss": schedule.fisher_loss,
                         "family": schedule.meta.get("family")},
            **audit, "parity": parity, "calibration_estimate": estimate, "accuracy": accuracy, "rounds": rounds,
            **({"search": {"evaluations": len(search.candidates), "seconds": round(search.seconds, 1),
                           "knobs": dataclasses.asdict(search.knobs), "select_by": search.rank}}
               if isinstance(search, MeasuredSearch) else {}),
            "model": {"name": model.model_name, "hash": ctx.model_hash, **ctx.shape, "has_weights": model.has_weights},
            "device": {**(table.device if table is not None else {"name": ctx.device.name, "runtime": ctx.device.runtime,
                                                                  "threads": ctx.device.threads}),
                       "measure_protocol": ctx.device.describe()["config"],
                       "model_runtime": ctx.device.runtime},  # the table's runtime differs for threshold mode via onnx2tf
            "images": {"calibration": ctx.images.name, "count": len(ctx.images), "measured_on": len(ctx.feeds()),
                       "measure_data": ctx.measure_images.name},  # the images the budget was measured on
            "artifacts": {f"model{artifact.suffix}": file_sha256(path),
                          "calibration_model_hash": cal.meta["model_hash"] if cal is not None else None,
                          "calibration_image_set_hash": cal.meta["image_set_hash"] if cal is not None else None,
                          "latency_table_created": table.meta.get("created") if table is not None else None},
            "notes": notes, "seconds": round(time.time() - t0, 1),
        }
        out.mkdir(parents=True, exist_ok=True)
        schedule.save(work / "schedule.json")
        atomic_write_json(work / "report.json", report, indent=1, default=float)
        for name, src in ((f"model{artifact.suffix}", path), ("schedule.json", work / "schedule.json"), ("report.json", work / "report.json")):
            with atomic_path(out / name) as part:
                shutil.move(str(src), str(part))
    return report


def _accuracy(ctx: Context, schedule: Schedule) -> dict | None:
    images, source = ctx.eval_images()
    if images is None or not ctx.model.has_weights:
        return {"available": False, "reason": source if images is None else "random weights"}
    ref = predict_unpruned(ctx.model, images)
    ev = evaluate_schedule(ctx.model, images, schedule, reference_top1=ref)
    return {"available": True, "images": source, "count": len(images), "label_mapping": images.label_mapping,
            "unpruned": float((ref == images.labels).mean()), "pruned": ev.accuracy,
            "top1_agreement_with_unpruned": ev.agreement}
