"""The search's planner on a paper's reference latency table (:mod:`vitedge.tables.reference`, e.g.
SPViT Table 2 on the ZCU102): :class:`~vitedge.search.planner.Planner` with the table's coverage enforced
(no extrapolation beyond the published pruning rates). The table offers only data; the planner is built here.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..tables.reference import ReferenceTable
from .planner import Planner
from .viterbi import BudgetUnreachableError


class ReferencePlanner(Planner):
    """:class:`Planner` on a reference table, with its coverage enforced: candidates outside the
    table get a prohibitive loss (the Viterbi takes them only if nothing covered fits), and a
    schedule that still needs one is refused with the smallest budget the table covers."""

    def __init__(self, calibration, table: ReferenceTable, mode: str | None = "threshold", min_patch_tokens: int = 0,
                 package_token: bool = False):
        """``mode`` "threshold" (default, also for None) or "capacity" (exact K tokens per block: the rate
        is exact, candidates are the token counts inside the table)."""
        mode = mode or "threshold"
        self.reference = table
        self._accepted_min = None
        if mode == "capacity":  # candidates are token counts inside the table: all covered, rates exact
            super().__init__(calibration, "latency", table, mode="capacity", min_patch_tokens=min_patch_tokens,
                             package_token=package_token)
            self.covered = np.ones(self.cost.shape, bool)
            return
        kept = calibration.kept.astype(np.int64)
        if package_token:
            kept[:, 1:] = np.minimum(kept[:, 1:] + 1, calibration.meta["num_patches"])
        self.covered = table.covered(kept)
        loss = np.asarray(calibration.fisher_loss, np.float64)
        penalty = (loss.shape[0] + 1) * (float(loss.max()) + 1.0)
        super().__init__(replace(calibration, fisher_loss=np.where(self.covered, loss, penalty)), "latency", table,
                         mode=mode, min_patch_tokens=min_patch_tokens, package_token=package_token)
        self.calibration = calibration

    def _is_covered(self, indices) -> bool:
        return all(self.covered[l, int(m)] for l, m in enumerate(indices))

    def exact_min_ms(self) -> float:
        """Smallest predicted total of any monotone schedule inside the table (exact, unquantised)."""
        cost = np.where(self.covered, self.cost, np.inf)
        H = cost[0].copy()
        for l in range(1, cost.shape[0]):
            H = cost[l] + np.minimum.accumulate(H)
        return self.base + float(H.min())

    @property
    def min_budget(self) -> float:
        """Smallest budget (ms) :meth:`solve` accepts on this table (coverage and quantisation)."""
        if self._accepted_min is None:
            lo, hi = self.exact_min_ms(), self.full
            for _ in range(60):
                if hi - lo <= 1e-9 * max(hi, 1.0):
                    break
                mid = 0.5 * (lo + hi)
                try:
                    ok = self._is_covered(super().solve(mid).candidates)
                except BudgetUnreachableError:
                    ok = False
                lo, hi = (lo, mid) if ok else (mid, hi)
            self._accepted_min = hi
        return self._accepted_min

    def _refuse(self, budget: float):
        need = self.min_budget
        up = f"{math.ceil(need * 100) / 100:.2f}"  # accepted: every budget >= need
        raise BudgetUnreachableError(
            f"budget {budget:.4g} ms is below the smallest {up} ms that the reference table {self.reference.name} "
            f"covers (pruning rates up to {self.reference.max_rate:g}, blocks only; no extrapolation beyond the table): "
            f"raise --budget-ms to at least {up}", need)

    def solve(self, budget: float):
        if not np.isfinite(budget) or budget <= 0:
            return super().solve(budget)  # raises the usual ValueError
        if budget < self.exact_min_ms():
            self._refuse(budget)
        try:
            schedule = super().solve(budget)
        except BudgetUnreachableError:
            self._refuse(budget)
        if not self._is_covered(schedule.candidates):
            self._refuse(budget)
        return schedule

    def _schedule(self, indices, budget, total, loss):
        s = super()._schedule(indices, budget, total, loss)
        t = self.reference
        s.meta["latency_table"] = {"reference": t.name, "source": t.citation(), "interpolation": "linear in pruning rate",
                                   "coverage": [float(t.rates[0]), t.max_rate], "scope": "blocks only"}
        return s

    def explain(self, schedule) -> list:
        """Lines: per block, the tokens it receives, its pruning rate and interpolated latency, and
        the selector chosen inside it (candidate, threshold, mean kept patch tokens)."""
        t, cal = self.reference, self.calibration
        p, N, L = int(t.model["num_prefix"]), t.num_tokens, cal.kept.shape[0]
        if self.mode == "capacity":  # exact K_l patch tokens: one "image"
            kept_of = lambda l: np.array([self.capacities[schedule.candidates[l]]])  # noqa: E731
        else:
            kept_of = lambda l: cal.kept[l, schedule.candidates[l]]  # noqa: E731
        lines = [f"schedule on reference table {t.name} ({t.citation()}): block latency interpolated linearly between "
                 f"the rows at pruning rates {t.rates[0]:g}..{t.max_rate:g}",
                 f"{'block':>5} {'tokens in':>9} {'rate':>6} {'block ms':>9}   {'candidate':>9} {'selector':>10} {'kept patches':>12}"]
        for l in range(L):
            if l == 0:
                n_in = np.array([N])
            else:  # the package token travels with the kept tokens of a candidate that prunes (as the planner counts it)
                pkg = int(self.package_token and schedule.candidates[l - 1] > 0)
                n_in = np.minimum(kept_of(l - 1) + pkg, N - p) + p
            ms = float(t.block_latency(n_in).mean())
            m = schedule.candidates[l]
            if self.mode == "capacity":
                thr = "-" if schedule.capacities[l] is None else f"K={schedule.capacities[l]}"
            else:
                thr = "-" if schedule.thresholds[l] is None else f"{schedule.thresholds[l]:.4g}"
            lines.append(f"{l + 1:>5} {n_in.mean():>9.1f} {float(t.rate(n_in).mean()):>6.3f} {ms:>9.3f}   {m:>9} "
                         f"{thr:>10} {schedule.predicted_kept[l]:>12.1f}")
        lines.append(f"{'sum':>5} {'':>9} {'':>6} {schedule.predicted:>9.3f}   (budget {schedule.budget:g} ms; unpruned "
                     f"{self.full:.3f} ms)")
        return lines
