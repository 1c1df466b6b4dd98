"""From tables to a schedule: the cost model (measured latency or RCTP's FLOPs) + monotone Viterbi.

Pure NumPy: reads a :class:`~vitedge.calibration.store.Calibration` and, for the latency cost model,
a :class:`~vitedge.tables.latency.LatencyTable`.
"""
from __future__ import annotations

import numpy as np

from ..calibration.tables import block_flops
from ..schedule import Schedule, capacity_selectors
from ..tables.latency import LatencyTable
from ..token_score import recorded as recorded_token_score
import math

from .viterbi import BudgetUnreachableError, MonotoneViterbi, _fmt_up, flops_cost_table

COST_MODELS = ("latency", "flops")
MODES = ("threshold", "capacity")


class Planner:
    """Build the Viterbi tables once; answer any budget by backtracking ("one shot", RCTP §III-C).

    Args:
        calibration: thresholds θ (L, M), FI loss f (L, M), kept counts n (L, M, D).
        cost_model: "latency" -- cost[l, m] = expected ms of what candidate m's kept tokens cost
            downstream (:meth:`LatencyTable.candidate_costs`), budget in ms for the whole model;
            "flops" -- RCTP's cost[l, m] = (1 - m/M) φ_BLK(N) (eq. (5), (7)), budget as a fraction R
            of the unpruned blocks' FLOPs (R = 1 - C of the paper).
        table: the latency table (required for "latency").
        mode: "threshold" (candidates: the calibration's M thresholds, cost expected over images) or
            "capacity" (candidates: token counts K measured in the table, exact cost; loss: FI of the
            tokens outside each image's top K, :func:`~vitedge.calibration.capacity.capacity_loss_table`).
        min_patch_tokens: smallest K allowed (1 for heads that pool patch tokens).
        package_token: candidates that prune carry one more token (SPViT eq. (8)).

    Raises:
        ValueError: unknown cost model or missing table; LatencyTableError: table/model mismatch.
    """

    def __init__(self, calibration, cost_model: str = "latency", table: LatencyTable | None = None,
                 mode: str = "threshold", min_patch_tokens: int = 0, package_token: bool = False):
        if cost_model not in COST_MODELS:
            raise ValueError(f"unknown cost model {cost_model!r}: use one of {', '.join(COST_MODELS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if mode == "capacity" and cost_model != "latency":
            raise ValueError("capacity mode searches over measured latency: use --budget-ms with a latency table")
        self.calibration, self.cost_model, self.table, self.mode = calibration, cost_model, table, mode
        self.package_token = bool(package_token)
        self._repeat_saves = 0.0  # ms the search charged for a selector that the export compiles out
        L, M = calibration.thresholds.shape
        meta = calibration.meta
        self.capacities = None
        loss = calibration.fisher_loss
        if cost_model == "latency":
            if table is None:
                raise ValueError("the latency cost model needs a latency table: run `vitedge profile` or pass --latency-table")
            if table.num_tokens != meta["num_patches"] + meta["num_prefix"] or int(table.model["dim"]) != meta["dim"] \
                    or int(table.model["depth"]) != L:
                from ..tables.latency import LatencyTableError

                raise LatencyTableError(f"latency table is for N={table.num_tokens}, dim={table.model['dim']}, depth={table.model['depth']}; "
                                        f"calibration is for N={meta['num_patches'] + meta['num_prefix']}, dim={meta['dim']}, depth={L}: "
                                        "profile and calibrate the same model")
            if mode == "capacity":  # candidates: token counts K measured in the table (exact latency)
                p, P = meta["num_prefix"], meta["num_patches"]
                ks = sorted({n - p for n in table.measured_tokens if min_patch_tokens <= n - p <= P} | {P}, reverse=True)
                self.capacities = np.array(ks, np.int64)
                from ..calibration.capacity import capacity_loss_table

                loss = capacity_loss_table(calibration.scores, calibration.fisher, self.capacities)
                kept = np.broadcast_to(self.capacities[None, :, None], (L, len(ks), 1)).copy()
                kept[:, 1:] += int(package_token)  # the package token travels with the kept ones
                self.cost, self.base = table.candidate_costs(kept, mode="capacity")
                # K_l = K_{l-1}: the selector is the identity and compiled out
                self._repeat_saves = table.selector_charge_ms("capacity")
            else:
                kept = calibration.kept.astype(np.int64)
                if package_token:
                    kept[:, 1:] = np.minimum(kept[:, 1:] + 1, meta["num_patches"])
                self.cost, self.base = table.candidate_costs(kept)
            self.unit = "ms"
            self.full = float(table.predict_ms(np.full(L, meta["num_patches"]), np.zeros(L, bool)))
        else:
            phi = float(block_flops(meta["num_patches"] + meta["num_prefix"], meta["dim"]))
            self.cost, self.base = flops_cost_table(L, M, phi), 0.0
            self.unit = "flops"
            self.full = L * phi
        self.loss = loss
        self.viterbi = MonotoneViterbi(loss, self.cost, unit=self.unit)

    @property
    def min_budget(self) -> float:
        """Smallest total (ms, or FLOPs fraction for "flops") any monotone schedule reaches."""
        v = self.base + self.viterbi.min_cost
        return v if self.unit == "ms" else v / self.full

    def _schedule(self, indices, budget: float, total: float, loss: float) -> Schedule:
        cal = self.calibration
        L = len(indices)
        idx = [int(i) for i in indices]
        if self.mode == "capacity":
            caps = [int(self.capacities[m]) for m in idx]
            thr = [None] * L
            capacities = [None if m == 0 else k for m, k in zip(idx, caps)]
            kept = [float(k) for k in caps]
            # the search charges a selector to every m > 0 (additive costs: an upper bound); the
            # export compiles out those that prune nothing (K_l repeats the previous block's), so the
            # prediction drops them too
            running = capacity_selectors(capacities, int(cal.meta["num_patches"]))
            total -= (sum(k is not None for k in capacities) - sum(running)) * self._repeat_saves
        else:
            thr = [None if m == 0 else float(cal.thresholds[l, m]) for l, m in enumerate(idx)]
            capacities = [None] * L
            kept = [float(cal.kept[l, m].mean()) for l, m in enumerate(idx)]
        return Schedule(mode=self.mode, candidates=idx, thresholds=thr, capacities=capacities, budget=float(budget), unit=self.unit,
                        cost_model=self.cost_model, predicted=float(total), predicted_kept=kept, fisher_loss=float(loss),
                        meta={"model_hash": cal.meta.get("model_hash"), "package_token": self.package_token, "image_set_hash": cal.meta.get("image_set_hash"),
                              "token_score": recorded_token_score(cal.meta),
                              "num_patches": int(cal.meta["num_patches"]),
                              "num_candidates": int(cal.thresholds.shape[1] if self.capacities is None else len(self.capacities)),
                              "num_layers": L,
                              "device": None if self.table is None else self.table.device.get("name"),
                              "runtime": None if self.table is None else self.table.device.get("runtime"),
                              "threads": None if self.table is None else self.table.device.get("threads")})

    def schedule(self, indices, budget: float, predicted: float) -> Schedule:
        """The schedule of candidate ``indices`` (L,) (0 = no selector; any order, not only monotone),
        with ``predicted`` (in :attr:`unit`) as its prediction and its table loss as ``fisher_loss``."""
        idx = np.asarray(indices, np.int64)
        loss = float(self.loss[np.arange(len(idx)), idx].sum())
        s = self._schedule(idx, budget, 0.0, loss)
        s.predicted = float(predicted)
        return s

    def keep_all(self, budget: float) -> Schedule:
        """The schedule that prunes nothing (used when the budget is at or above the unpruned cost)."""
        L = self.calibration.thresholds.shape[0]
        return self._schedule(np.zeros(L, np.int64), budget, self.base + float(self.cost[:, 0].sum()), 0.0)

    def solve(self, budget: float) -> Schedule:
        """Best schedule for ``budget`` (ms for "latency"; fraction of unpruned FLOPs for "flops").

        Raises:
            ValueError: budget <= 0 or not finite (or a FLOPs fraction above 1).
            BudgetUnreachableError: below :attr:`min_budget` (the message names it).
        """
        if not np.isfinite(budget) or budget <= 0:
            flag = "--budget-ms" if self.unit == "ms" else "--budget-flops"
            raise ValueError(f"budget must be a positive number, got {budget}: pass {flag} > 0")
        if self.unit == "flops" and budget > 1:
            raise ValueError(f"--budget-flops is a fraction of the unpruned FLOPs in (0, 1], got {budget}")
        absolute = budget if self.unit == "ms" else budget * self.full
        variable = absolute - self.base
        try:
            sol = self.viterbi.solve(max(variable, 1e-300))  # <= 0 left for the base: Viterbi names its minimum
        except BudgetUnreachableError as e:
            reach = self.base + e.min_budget
            if self.unit == "flops":
                reach /= self.full
            # the smallest budget this method accepts (float rounding of base + variable part)
            while (reach if self.unit == "ms" else reach * self.full) - self.base < e.min_budget:
                reach = math.nextafter(reach, math.inf)
            if self.unit == "ms":
                msg = (f"budget {budget:.4g} ms is below the smallest reachable {_fmt_up(reach)} ms on this device: "
                       f"raise --budget-ms to at least {_fmt_up(reach)}")
            else:
                msg = (f"budget {budget:.4g} of the FLOPs is below the smallest reachable {_fmt_up(reach)}: "
                       f"raise --budget-flops to at least {_fmt_up(reach)}")
            raise BudgetUnreachableError(msg, reach) from None
        total = self.base + sol.cost
        return self._schedule(sol.indices, budget, total if self.unit == "ms" else total / self.full, sol.loss)
