"""Monotone Viterbi search for per-block token-pruning settings under a cost budget.

Source: RCTP, eq. (7)-(8), generalised from a FLOPs ratio to any additive per-block cost
(measured latency in ms, FLOPs, ...). Pure NumPy.

Problem. ``loss`` and ``cost`` are (L, M) arrays: L blocks, M candidates per block; candidate
m = 0 keeps every token and larger m prunes more. Choose m_1 <= m_2 <= ... <= m_L (deeper blocks
prune at least as much) minimising sum_l loss[l, m_l] subject to sum_l cost[l, m_l] <= budget.
Neither table is assumed monotone in m; only the schedule is constrained.

Method. Costs are quantised to integer buckets of width ``resolution`` with ceil, so a schedule
whose bucket sum fits floor(budget / resolution) truly meets the budget (conservative; the
reported ``Solution.cost`` is the true float sum). Eq. (8),
    F_l[m, p] = loss[l, m] + min_{m' <= m} F_{l-1}[m', p - c[l, m]],
is tabulated once for every accumulated bucket p (prefix-min over m', O(L*M*P)); each budget is
then answered by backtracking only.

Tie-breaking (deterministic). Among schedules of minimal table loss: the smallest quantised total
cost, then the smallest m_L, then the smallest m_{L-1}, ... (lexicographically smallest when read
from the last block backwards). Losses are tabulated in float32, so schedules whose losses differ
by less than float32 rounding (~1e-7 relative) count as tied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BudgetUnreachableError", "Solution", "MonotoneViterbi", "exhaustive_search", "flops_cost_table",
]

_MAX_TABLE_ENTRIES = 1 << 28  # float32 entries (1 GiB); beyond this ask for a coarser resolution


class BudgetUnreachableError(ValueError):
    """No monotone schedule fits the budget.

    ``min_budget`` (float, same unit as cost) is the smallest budget that ``solve`` accepts: the
    smallest reachable total cost, rounded up to the quantisation grid (equal to ``min_cost`` when
    costs are multiples of the resolution). The message is a single line naming it.
    """

    def __init__(self, message: str, min_budget: float):
        super().__init__(message)
        self.min_budget = float(min_budget)


@dataclass(frozen=True, eq=False)
class Solution:
    """One schedule. ``indices``: (L,) int64, non-decreasing, read-only; ``loss``: sum_l loss[l, m_l];
    ``cost``: true (unquantised) sum_l cost[l, m_l]; ``budget``: the budget it was solved for."""

    indices: np.ndarray
    loss: float
    cost: float
    budget: float

    def __post_init__(self):
        idx = np.array(self.indices, dtype=np.int64).reshape(-1)
        idx.flags.writeable = False
        object.__setattr__(self, "indices", idx)

    def __eq__(self, other):
        if not isinstance(other, Solution):
            return NotImplemented
        return (np.array_equal(self.indices, other.indices) and self.loss == other.loss
                and self.cost == other.cost and self.budget == other.budget)


def _validate_tables(loss, cost) -> tuple[np.ndarray, np.ndarray]:
    loss = np.asarray(loss, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    for name, a in (("loss", loss), ("cost", cost)):
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"{name} must be a 2-D (L, M) array with L >= 1 and M >= 1, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
        if np.any(a < 0):
            raise ValueError(f"{name} must be >= 0 (min is {a.min():g})")
    if loss.shape != cost.shape:
        raise ValueError(f"loss and cost shapes differ: {loss.shape} vs {cost.shape}")
    return loss, cost


def _check_budget(budget) -> float:
    b = float(budget)
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    return b


def _totals(loss: np.ndarray, cost: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    rows = np.arange(loss.shape[0])
    return math.fsum(loss[rows, idx]), math.fsum(cost[rows, idx])


def _fmt_up(x: float) -> str:
    """Shortest decimal (>= 2 places) that parses back to a float >= x, so 'at least X' is honest."""
    for d in range(2, 18):
        s = f"{x:.{d}f}" if abs(x) < 1e6 else f"{x:.{d}e}"
        if float(s) >= x:
            return s
    return repr(x)


def _extreme_schedule(cost: np.ndarray, better) -> np.ndarray:
    """Exact (unquantised) monotone schedule minimising (better=np.minimum) or maximising the total cost."""
    L, M = cost.shape
    H = np.empty((L, M))
    H[0] = cost[0]
    for l in range(1, L):
        H[l] = cost[l] + better.accumulate(H[l - 1])
    pick = np.argmin if better is np.minimum else np.argmax
    idx = np.empty(L, dtype=np.int64)
    idx[-1] = pick(H[-1])
    for l in range(L - 1, 0, -1):
        idx[l - 1] = pick(H[l - 1, : idx[l] + 1])
    return idx


class MonotoneViterbi:
    """Monotone Viterbi tables (RCTP eq. (7)-(8)) built once; ``solve``/``sweep`` backtrack per budget.

    Args:
        loss: (L, M) array >= 0, loss of candidate m at block l (e.g. Fisher-information loss).
        cost: (L, M) array >= 0, cost of candidate m at block l, in ``unit`` (ms, FLOPs, ...).
        resolution: bucket width in ``unit``. None: sum_l max_m cost[l, m] / ``max_buckets``.
        max_buckets: number of buckets spanning the largest possible total when resolution is None.
        unit: unit of cost and budget, used in messages.

    Attributes: ``min_cost`` / ``max_cost`` (float): exact smallest / largest total cost of any
    monotone schedule; ``resolution`` (float); ``num_buckets`` (int, P).

    Raises:
        ValueError: bad shapes (not 2-D, empty or mismatched), NaN/inf or negative entries, a
            non-positive resolution or max_buckets, or a table over 2**28 entries (coarser resolution).
    """

    def __init__(self, loss: np.ndarray, cost: np.ndarray, *, resolution: float | None = None,
                 max_buckets: int = 4096, unit: str = "ms"):
        self._loss, self._cost = _validate_tables(loss, cost)
        self.unit = unit
        L, M = self._cost.shape
        if int(max_buckets) < 1:
            raise ValueError(f"max_buckets must be >= 1, got {max_buckets!r}")
        if resolution is None:
            top = float(self._cost.max(axis=1).sum())
            resolution = top / int(max_buckets) if top > 0 else 1.0
        resolution = float(resolution)
        if not math.isfinite(resolution) or resolution <= 0:
            raise ValueError(f"resolution must be a finite number > 0, got {resolution!r}")
        self.resolution = resolution

        cq = np.ceil(self._cost / resolution)
        cq[cq * resolution < self._cost] += 1  # guard against float division rounding down
        self._cq = cq.astype(np.int64)
        P = int(self._cq.max(axis=1).sum()) + 1
        if L * M * P > _MAX_TABLE_ENTRIES:
            raise ValueError(f"table of {L}x{M}x{P} entries is too large: "
                             f"use a coarser resolution than {resolution:g}")
        self.num_buckets = P

        lq = self._loss.astype(np.float32)
        F = np.full((L, M, P), np.inf, dtype=np.float32)
        F[0, np.arange(M), self._cq[0]] = lq[0]
        for l in range(1, L):
            G = np.minimum.accumulate(F[l - 1], axis=0)  # G[m, p] = min_{m' <= m} F_{l-1}[m', p]
            for m in range(M):
                c = self._cq[l, m]
                np.add(G[m, : P - c], lq[l, m], out=F[l, m, c:])
        self._F = F
        self._last = F[-1].min(axis=0)  # (P,) best loss ending exactly at bucket p
        reachable = np.flatnonzero(np.isfinite(self._last))
        self._p_min = int(reachable[0])

        lo, hi = _extreme_schedule(self._cost, np.minimum), _extreme_schedule(self._cost, np.maximum)
        self.min_cost = _totals(self._loss, self._cost, lo)[1]
        self.max_cost = _totals(self._loss, self._cost, hi)[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self._cost.shape

    def _bucket(self, budget: float) -> int:
        """Largest k with k * resolution <= budget (exact in float, clipped to the table)."""
        P, r = self.num_buckets, self.resolution
        q = budget / r
        if q >= P:
            return P - 1
        k = int(math.floor(q))
        while (k + 1) * r <= budget:
            k += 1
        while k >= 0 and k * r > budget:
            k -= 1
        return min(k, P - 1)

    def solve(self, budget: float) -> Solution:
        """Best monotone schedule with true total cost <= ``budget`` (in ``unit``), by backtracking.

        Raises:
            ValueError: budget not finite or <= 0.
            BudgetUnreachableError: budget below ``min_cost``, or below the smallest total reachable
                on the quantisation grid; ``.min_budget`` is the smallest budget this method accepts.
        """
        budget = _check_budget(budget)
        k = self._bucket(budget)
        if k < self._p_min or budget < self.min_cost:
            need = max(self._p_min * self.resolution, self.min_cost)
            raise BudgetUnreachableError(
                f"budget {_fmt_up(budget)} {self.unit} is below the smallest reachable {_fmt_up(need)} "
                f"{self.unit}: raise {'--budget-ms' if self.unit == 'ms' else 'the budget'} "
                f"to at least {_fmt_up(need)}", need)
        F, cq = self._F, self._cq
        L = F.shape[0]
        p = int(np.argmin(self._last[: k + 1]))  # first minimum: smallest quantised cost
        idx = np.empty(L, dtype=np.int64)
        idx[-1] = np.argmin(F[-1, :, p])
        for l in range(L - 1, 0, -1):
            p -= int(cq[l, idx[l]])
            idx[l - 1] = np.argmin(F[l - 1, : idx[l] + 1, p])
        loss, cost = _totals(self._loss, self._cost, idx)
        return Solution(idx, loss, cost, budget)

    def sweep(self, budgets) -> list[Solution]:
        """``[solve(b) for b in budgets]``; the tables are not rebuilt. Raises as ``solve``."""
        return [self.solve(b) for b in np.asarray(budgets, dtype=np.float64).reshape(-1)]


def exhaustive_search(loss, cost, budget) -> Solution | None:
    """Brute force over all non-decreasing index sequences (for tests and tiny instances only).

    ``loss``, ``cost``: (L, M) arrays as for ``MonotoneViterbi``; no quantisation (true float cost
    <= budget). Ties: smaller cost, then smallest m_L, m_{L-1}, ... . Returns None if nothing fits.
    Raises ValueError on bad tables or a non-finite / non-positive budget.
    """
    loss, cost = _validate_tables(loss, cost)
    budget = _check_budget(budget)
    L, M = loss.shape
    best, best_key = None, None
    for seq in itertools.combinations_with_replacement(range(M), L):  # sorted = non-decreasing
        idx = np.array(seq, dtype=np.int64)
        lo, co = _totals(loss, cost, idx)
        if co > budget:
            continue
        key = (lo, co, seq[::-1])
        if best_key is None or key < best_key:
            best, best_key = Solution(idx, lo, co, budget), key
    return best


def flops_cost_table(num_layers: int, num_candidates: int, block_flops: float) -> np.ndarray:
    """RCTP's FLOPs cost as an (L, M) table: cost[l, m] = (1 - m/M) * block_flops (same for every l).

    Candidate m keeps (1 - m/M) of the block's FLOPs, so with budget = (1 - C) * L * block_flops the
    constraint sum_l cost[l, m_l] <= budget is exactly RCTP eq. (7): (1/L) sum_l m_l/M >= C.
    Raises ValueError for num_layers < 1, num_candidates < 1 or block_flops not finite and > 0.
    """
    L, M, phi = int(num_layers), int(num_candidates), float(block_flops)
    if L < 1 or M < 1:
        raise ValueError(f"need num_layers >= 1 and num_candidates >= 1, got {num_layers}, {num_candidates}")
    if not math.isfinite(phi) or phi <= 0:
        raise ValueError(f"block_flops must be a finite number > 0, got {block_flops!r}")
    row = (1.0 - np.arange(M, dtype=np.float64) / M) * phi
    return np.tile(row, (L, 1))
