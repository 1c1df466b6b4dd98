"""Schedule search on quality measured on the pruned model (DESIGN.md, "Objective").

RCTP's Fisher-loss table (eq. (7)) is a proxy taken on the unpruned model and summed over blocks;
pruning compounds (a token dropped at block l is gone for every later block, and later CLS attention
is computed among the survivors), so the proxy can rank schedules wrongly. Here the schedule that is
returned for a budget is the one with the best quality *measured on the pruned model* over the
calibration images, among candidates whose predicted latency fits. Predicted latency: the measured
latency table at the *realised* per-image kept-token counts of the pruned model (compounding included).

Which measured quality ranks the candidates (``rank``, ``--select-by``):

- ``kl`` (default): the mean KL divergence of the pruned model's softmax from the unpruned model's
  (lower first), ties broken by top-1 (accuracy when labelled, else agreement);
- ``top1``: the top-1 accuracy when the images are labelled, else the top-1 agreement with the unpruned
  model, ties broken by the KL divergence.

KL is the default because it is continuous: on 200 calibration images top-1 moves in 0.5-point steps,
and among hundreds of candidates the one that ranks first by top-1 is often a faster one the sampling
noise flattered by an image or two, which then wins every larger budget as well (measured on held-out
test images over budgets of 45-97.5 % of the unpruned latency: mean test top-1 +0.5 points on the
shipped model and +0.8 on a second seed with ``kl``; benchmarks/results/selection_rule.md).
``--max-accuracy-drop`` is in top-1 points either way.

Candidates (all evaluated on the same images; every evaluation is cached and reused across budgets):

- ``fisher``: RCTP's monotone Viterbi over the Fisher-loss table, solved over a sweep of budgets;
- ``single-cut``: prune at one block l only, every block x every grid candidate (POMT's family:
  threshold mode keeps no selector after l; capacity mode keeps K from block l on);
- ``constant-rate``: the same candidate at every block (threshold mode: the same FLOPs-reduction rank
  m/M, RCTP §III-B) or RCTP's constant Top-K, K_l = P - r (l + 1) (capacity mode);
- ``measured-viterbi``: the same monotone Viterbi over a per-block loss *measured on the pruned model*:
  the mean KL of the single cut at (l, m) (activations before block l cached), over the sweep;
- ``refined``: from the best candidate that fits, local moves (one block's candidate one grid step up
  or down) kept while they improve the measured quality and still fit.

Given planners of both pruning modes (``--mode auto``, the default for ONNX), every family is built in
each mode on the same images and the best candidate of either mode is returned: which selector keeps
more accuracy for the milliseconds depends on the model (threshold: an image-dependent token count;
capacity: exactly K tokens, static shapes), so it is measured rather than assumed.

Pure NumPy: the measurement is a callable the caller hands in (``evaluator.evaluate(mode, values)``
returning an object with ``agreement``, ``kl``, ``accuracy``, ``kept`` (L, D), and
``evaluator.drop_points(q)``; :class:`vitedge.quality.QualityEvaluator` in practice).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from ..schedule import Schedule
from .viterbi import BudgetUnreachableError, MonotoneViterbi, _fmt_up

OBJECTIVES = ("measured", "fisher")
RANKS = ("kl", "top1")  # the measured quality that ranks candidates (see the module docstring)


@dataclass(frozen=True)
class SearchKnobs:
    """Cost knobs of the measured search (each evaluation runs the pruned model on the search images).

    Attributes:
        grid: candidates per block for single cuts, constant rates and the measured-loss table
            (evaluations: about ``depth x grid`` once per model); more finds finer trade-offs, costs linearly.
        sweep: budgets of the Fisher and measured-loss Viterbi sweeps (at most 2 x sweep evaluations).
        refine: rounds of local refinement per budget (each at most 2 x depth evaluations).
    """

    grid: int = 24
    sweep: int = 16
    refine: int = 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < (0 if f.name == "refine" else 1):
                raise ValueError(f"search knob {f.name} must be an integer >= {0 if f.name == 'refine' else 1}, got {v!r}")

    def forwards(self, depth: int) -> float:
        """Rough cost of the budget-independent families plus one budget's refinement, in unpruned
        forwards over the search images (a single cut at block l runs blocks l.. on about half the tokens)."""
        return 0.55 * (self.grid * (depth + 1) / 2 + self.grid) + 0.7 * 2 * self.sweep + 0.6 * self.refine * 2 * depth


def plan_knobs(depth: int, num_images: int, forward_s: float, seconds: float, *, min_grid: int = 8,
               min_images: int = 32, fixed: dict | None = None) -> tuple[SearchKnobs, int]:
    """Knobs and the number of search images that fit a time budget.

    Args:
        depth: L blocks. num_images: calibration images available.
        forward_s: measured seconds of one unpruned forward over all ``num_images``.
        seconds: time budget of the search (s). fixed: knobs the user set (kept as given).

    Returns:
        (knobs, images): the default grid (24) and every image when they fit; else the grid shrinks
        to ``min_grid``, then the images to ``min_images``, then the grid to 3.
    """
    fixed = dict(fixed or {})
    base = SearchKnobs(**fixed)
    per_image = forward_s / max(num_images, 1)
    images = num_images

    def cost(knobs, n):
        return knobs.forwards(depth) * per_image * n

    grid = base.grid
    if "grid" not in fixed:
        while grid > min_grid and cost(dataclasses.replace(base, grid=grid), images) > seconds:
            grid -= 1
    knobs = dataclasses.replace(base, grid=grid)
    while images > min_images and cost(knobs, images) > seconds:
        images = max(min_images, int(images * 0.8))
    if "grid" not in fixed:
        while grid > 3 and cost(dataclasses.replace(knobs, grid=grid), images) > seconds:
            grid -= 1
    return dataclasses.replace(knobs, grid=grid), images


@dataclass(frozen=True)
class Candidate:
    """One evaluated schedule: ``indices`` (L,) candidate per block (0 = no selector) in pruning ``mode``,
    the family that proposed it first, its measured quality, predicted latency (ms), accuracy drop
    (points) and the drop's one-sided 90 % upper bound (points)."""

    mode: str
    family: str
    indices: tuple
    quality: object
    predicted_ms: float
    drop: float
    drop_bound: float

    @property
    def top1(self) -> float:
        """Calibration top-1: accuracy when the images are labelled, else agreement with the unpruned model."""
        q = self.quality
        return q.accuracy if q.accuracy is not None else q.agreement

    def key(self, rank: str = "kl") -> tuple:
        """Larger is better: (-KL, top-1) with ``rank="kl"``, (top-1, -KL) with ``rank="top1"``."""
        return (-self.quality.kl, self.top1) if rank == "kl" else (self.top1, -self.quality.kl)

    def to_dict(self) -> dict:
        q = self.quality
        return {"mode": self.mode, "family": self.family, "candidates": list(self.indices), "predicted_ms": self.predicted_ms,
                "agreement": q.agreement, "kl": q.kl, "accuracy": q.accuracy, "drop_points": self.drop, "drop_bound_points": self.drop_bound,
                "mean_kept": [float(v) for v in np.asarray(q.kept).mean(axis=1)]}


class MeasuredSearch:
    """Budget -> the schedule with the best measured calibration quality (``rank``) whose predicted latency fits.

    Drop-in for :class:`~vitedge.search.planner.Planner` where a schedule is asked for a budget in ms
    (``solve``, ``keep_all``, ``table``, ``full``, ``min_budget``), plus :meth:`fastest_within` (the
    dual: the fastest schedule within an accuracy drop).

    Args:
        planner: a latency :class:`~vitedge.search.planner.Planner` (candidates, costs, Fisher-Viterbi), or
            a sequence of them, one per pruning mode, over the same latency table (the first mode is the
            default, e.g. for :meth:`keep_all`).
        evaluator: measures candidates (see the module docstring).
        knobs: :class:`SearchKnobs`.
        progress: optional callable(n) advancing a progress bar by n evaluations.
        rank: the quality that ranks candidates, one of :data:`RANKS` (module docstring).

    Raises:
        ValueError: a planner that is not over measured latency; two planners of one mode; an unknown rank.
    """

    def __init__(self, planner, evaluator, knobs: SearchKnobs | None = None, progress=None, rank: str = "kl"):
        if rank not in RANKS:
            raise ValueError(f"unknown ranking {rank!r}: use one of {', '.join(RANKS)}")
        self.rank = rank
        planners = list(planner) if isinstance(planner, (list, tuple)) else [planner]
        if any(p.unit != "ms" for p in planners):
            raise ValueError("the measured objective searches over measured latency: use --budget-ms (or --objective fisher)")
        self.planners = {p.mode: p for p in planners}
        if len(self.planners) != len(planners):
            raise ValueError(f"one planner per pruning mode, got modes {[p.mode for p in planners]}")
        self.planner, self.evaluator = planners[0], evaluator
        self.knobs = knobs or SearchKnobs()
        self.table, self.mode, self.unit = self.planner.table, self.planner.mode, "ms"
        self.modes = tuple(self.planners)
        self.full = max(p.full for p in planners)  # every mode's keep-all is the same model
        self._progress = progress or (lambda n: None)
        self._cands: dict[tuple, Candidate] = {}
        self.depth = self.planner.loss.shape[0]
        self._cols = {}  # mode -> the grid of candidate indices used by the families
        for mode, p in self.planners.items():
            M = p.loss.shape[1]
            self._cols[mode] = np.unique(np.round(np.linspace(1, M - 1, min(self.knobs.grid, M - 1))).astype(np.int64)) \
                if M > 1 else np.zeros(0, np.int64)
        self.cols = self._cols[self.mode]
        self._families_done = False
        self._refined: set[float] = set()  # budgets already refined
        self.seconds = 0.0  # spent measuring candidates

    def key(self, c: Candidate) -> tuple:
        """Larger is better: ``c.key(self.rank)``."""
        return c.key(self.rank)

    # -- candidates ------------------------------------------------------------------------------------
    def grid(self, mode: str | None = None) -> np.ndarray:
        """The candidate indices (ascending, > 0) the families and refinement use in ``mode`` (default the first)."""
        return self._cols[mode or self.mode]

    def _normalise(self, indices, mode: str) -> tuple:
        idx = [int(i) for i in indices]
        if mode == "capacity":  # K never grows: a larger K after a smaller one is the same model
            idx = [int(i) for i in np.maximum.accumulate(idx)]
        return tuple(idx)

    def values(self, indices, mode: str | None = None) -> list:
        """Per-block θ_l (threshold) or K_l (capacity) of candidate indices; None where m_l = 0.
        ``mode``: default the first planner's."""
        mode = mode or self.mode
        planner = self.planners[mode]
        if mode == "capacity":
            return [None if m == 0 else int(planner.capacities[m]) for m in indices]
        th = planner.calibration.thresholds
        return [None if m == 0 else float(th[l, m]) for l, m in enumerate(indices)]

    def evaluate(self, family: str, indices, mode: str | None = None) -> Candidate:
        """Measure (cached) the schedule with these candidate indices in ``mode`` (default the first planner's).

        Raises:
            KeyError: a mode this search has no planner for.
        """
        mode = mode or self.mode
        planner = self.planners[mode]
        idx = self._normalise(indices, mode)
        c = self._cands.get((mode, idx))
        if c is not None:
            return c
        t0 = time.perf_counter()
        q = self.evaluator.evaluate(mode, self.values(idx, mode))
        self.seconds += time.perf_counter() - t0
        self._progress(1)
        sel = planner.schedule(idx, math.inf, 0.0).selectors
        pred = float(np.mean(self.table.predict_ms(np.asarray(q.kept), np.array(sel), mode=mode)))
        c = Candidate(mode, family, idx, q, pred, float(self.evaluator.drop_points(q)), float(self.evaluator.drop_bound(q)))
        self._cands[(mode, idx)] = c
        return c

    @property
    def candidates(self) -> list[Candidate]:
        """Every evaluated candidate, in evaluation order."""
        return list(self._cands.values())

    def _sweep_budgets(self, planner) -> np.ndarray:
        lo, hi = planner.min_budget, self.full
        return np.linspace(lo, hi, self.knobs.sweep + 2)[1:-1] if hi > lo else np.zeros(0)

    def ensure_families(self) -> None:
        """Evaluate the budget-independent families once per mode: single cuts, constant rates, both Viterbi sweeps."""
        if self._families_done:
            return
        self.evaluate("unpruned", [0] * self.depth)
        for mode in self.modes:
            self._families(mode)
        self._families_done = True

    def _families(self, mode: str) -> None:
        L, planner, grid = self.depth, self.planners[mode], self._cols[mode]
        single = np.zeros((L, len(grid)))  # mean KL of the single cut at (l, m): the measured per-block loss
        for l in range(L):
            for j, m in enumerate(grid):
                idx = [0] * L
                idx[l] = m
                if mode == "capacity":
                    idx[l:] = [m] * (L - l)
                single[l, j] = self.evaluate("single-cut", idx, mode).quality.kl
        if mode == "capacity":
            caps, P = planner.capacities, int(planner.capacities[0])
            for r in range(1, max(2, math.ceil(P / L)) + 1):
                want = [max(P - r * (l + 1), int(caps[-1])) for l in range(L)]
                self.evaluate("constant-rate", [int(np.argmin(np.abs(caps - k))) for k in want], mode)
        else:
            for m in grid:
                self.evaluate("constant-rate", [m] * L, mode)
        for b in self._sweep_budgets(planner):
            try:
                self.evaluate("fisher", planner.solve(float(b)).candidates, mode)
            except BudgetUnreachableError:
                continue
        cols = np.concatenate([[0], grid])
        loss = np.concatenate([np.zeros((L, 1)), single], axis=1)
        vit = MonotoneViterbi(loss, planner.cost[:, cols], unit="ms")
        for b in self._sweep_budgets(planner):
            try:
                sol = vit.solve(float(b) - planner.base)
            except (BudgetUnreachableError, ValueError):
                continue
            self.evaluate("measured-viterbi", cols[sol.indices], mode)

    # -- selection ---------------------------------------------------------------------------------------
    def _fitting(self, budget: float) -> list[Candidate]:
        return [c for c in self._cands.values() if c.predicted_ms <= budget]

    def _neighbours(self, idx: tuple, mode: str):
        cols = np.concatenate([[0], self._cols[mode]])
        for l in range(self.depth):
            pos = int(np.searchsorted(cols, idx[l]))
            for p in (pos - 1, pos + 1 if pos < len(cols) and cols[pos] == idx[l] else pos):
                if 0 <= p < len(cols) and cols[p] != idx[l]:
                    new = list(idx)
                    new[l] = int(cols[p])
                    yield new

    def _refine(self, start: Candidate, better, fits) -> Candidate:
        best = start
        for _ in range(self.knobs.refine):
            moved = False
            for idx in self._neighbours(best.indices, best.mode):
                c = self.evaluate("refined", idx, best.mode)
                if fits(c) and better(c, best):
                    best, moved = c, True
            if not moved:
                break
        return best

    @property
    def min_budget(self) -> float:
        """Smallest predicted latency (ms) of any evaluated candidate."""
        self.ensure_families()
        return min(c.predicted_ms for c in self._cands.values())

    def best(self, budget: float) -> Candidate:
        """The best measured candidate with predicted latency <= ``budget`` ms (after local refinement).

        Raises:
            ValueError: budget not a positive number.
            BudgetUnreachableError: no candidate fits (the message names the smallest reachable budget).
        """
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be a positive number, got {budget}: pass --budget-ms > 0")
        self.ensure_families()
        for mode, planner in self.planners.items():  # RCTP's own schedule for this budget is always a candidate
            try:
                self.evaluate("fisher", planner.solve(float(budget)).candidates, mode)
            except BudgetUnreachableError:
                pass
        fit = self._fitting(budget)
        if not fit:
            reach = self.min_budget
            raise BudgetUnreachableError(f"budget {budget:.4g} ms is below the smallest reachable {_fmt_up(reach)} ms on "
                                         f"this device: raise --budget-ms to at least {_fmt_up(reach)}", reach)
        top = max(fit, key=self.key)
        if budget not in self._refined:
            self._refined.add(budget)
            self._refine(top, lambda a, b: self.key(a) > self.key(b), lambda c: c.predicted_ms <= budget)
        return max(self._fitting(budget), key=self.key)

    def fastest_within(self, drop_points: float) -> Candidate:
        """The fastest (predicted) candidate whose accuracy drop is at most ``drop_points`` with 90 %
        confidence, by :meth:`drop_bounds`. The unpruned model always qualifies.

        Raises:
            ValueError: a negative or non-finite drop.
        """
        if not (isinstance(drop_points, (int, float)) and math.isfinite(drop_points) and drop_points >= 0):
            raise ValueError(f"--max-accuracy-drop must be a number of points >= 0, got {drop_points}")
        self.ensure_families()
        bounds = self.drop_bounds()

        def within(c: Candidate) -> bool:
            b = bounds.get(id(c), c.drop_bound)  # refinement's new candidates: their own bound
            return b <= drop_points + 1e-9 or all(i == 0 for i in c.indices)

        start = min(filter(within, self._cands.values()), key=lambda c: (c.predicted_ms, -c.top1))  # any mode
        self._refine(start, lambda a, b: a.predicted_ms < b.predicted_ms, within)
        bounds = self.drop_bounds()
        return min(filter(within, self._cands.values()), key=lambda c: (c.predicted_ms, -c.top1))

    def drop_bounds(self) -> dict:
        """{id(candidate): the drop bound (points) ``--max-accuracy-drop`` holds}, over every evaluated candidate.

        A candidate's own one-sided 90 % bound (``drop_bound``) is not enough when hundreds are compared:
        the fastest candidate whose bound fits is typically the one the calibration images' noise
        flattered most. So a candidate must also fit with its drop read off the *pooled* trend: the
        isotonic (non-decreasing) regression of every candidate's measured drop on its KL divergence
        from the unpruned model (KL is continuous and ranks test accuracy closely), plus the same margin.
        Returns max(own bound, pooled drop + (own bound - own drop)).
        """
        from sklearn.isotonic import IsotonicRegression

        cands = list(self._cands.values())
        kl = np.array([c.quality.kl for c in cands])
        drop = np.array([c.drop for c in cands])
        pooled = IsotonicRegression(increasing=True).fit(kl, drop).predict(kl) if len(cands) > 1 else drop
        return {id(c): max(c.drop_bound, float(p) + c.drop_bound - c.drop) for c, p in zip(cands, pooled)}

    def drop_bound_of(self, cand: Candidate) -> float:
        """The drop bound (points) ``--max-accuracy-drop`` holds ``cand`` to (:meth:`drop_bounds`)."""
        return self.drop_bounds()[id(cand)]

    # -- Planner interface -----------------------------------------------------------------------------------
    def schedule(self, cand: Candidate, budget: float) -> Schedule:
        """The :class:`~vitedge.schedule.Schedule` of an evaluated candidate (predicted = its realised prediction)."""
        s = self.planners[cand.mode].schedule(cand.indices, budget, cand.predicted_ms)
        q = cand.quality
        meta = {**s.meta, "objective": "measured", "family": cand.family, "select_by": self.rank,
                "calibration_quality": {"agreement": q.agreement, "kl": q.kl, "accuracy": q.accuracy,
                                        "drop_points": cand.drop, "drop_bound_points": cand.drop_bound}}
        return dataclasses.replace(s, predicted=cand.predicted_ms,
                                   predicted_kept=[float(v) for v in np.asarray(q.kept).mean(axis=1)], meta=meta)

    def solve(self, budget: float) -> Schedule:
        """:meth:`best` as a schedule. Raises as :meth:`best`."""
        return self.schedule(self.best(budget), budget)

    def keep_all(self, budget: float) -> Schedule:
        return self.planner.keep_all(budget)

    def realised(self, schedule: Schedule) -> tuple[float, np.ndarray]:
        """(predicted ms at the realised kept counts, kept (L, D)) of a schedule, from the cache when evaluated."""
        c = self.evaluate("closed-loop", schedule.candidates, schedule.mode)
        return c.predicted_ms, np.asarray(c.quality.kept)
