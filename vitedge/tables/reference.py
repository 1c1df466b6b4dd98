"""Reference latency tables published in papers, shipped as data with their source
(``devices/reference/*.json``), usable by ``vitedge search`` when the board is not at hand.

Shipped: SPViT Table 2 (Kong et al., ECCV 2022): latency of ONE DeiT-T / DeiT-S block on the
Xilinx ZCU102 FPGA at token pruning rates 0.0, 0.1, ..., 0.5 -- ``zcu102-spvit-deit-t`` and
``zcu102-spvit-deit-s``.

Cost model (SPViT eq. (9)-(10): ``sum_l Block_lat(rho_l) <= LatencyLimit``): a block that receives
n tokens (prefix included) runs at pruning rate ``rho = 1 - n / N``; its latency is interpolated
linearly between the table's rows.  Block 1 always receives all N tokens.  vitedge prunes between
MSA and MLP of a block; the table has whole blocks only, so the tokens kept in block l are charged
to block l+1, and block l's own MLP is charged at its input count (an upper bound).  The table
covers blocks only (no patch embedding, no head) and rates 0..0.5: a candidate that would make any
calibration image's block run above rate 0.5 is excluded (never extrapolated), and a budget that
only such candidates could meet is refused with the smallest budget the table covers.

The class has the planner's table interface: ``num_tokens``, ``model``, ``device``,
``candidate_costs(kept)``, ``predict_ms(kept, selectors)``; :class:`ReferencePlanner` adds the
coverage limits to :class:`~vitedge.search.planner.Planner`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np

from ..search.planner import Planner
from ..search.viterbi import BudgetUnreachableError
from .latency import LatencyTableError

FORMAT = "vitedge-reference-table"
_SHAPE_KEYS = ("dim", "depth", "num_tokens", "num_prefix", "num_heads")


class ReferenceTableError(LatencyTableError):
    """A reference table is unknown, malformed, mismatched, or asked beyond its coverage."""


def _data_dir():
    return resources.files("vitedge.devices") / "reference"


def available_references() -> list:
    return sorted(p.name[:-5] for p in _data_dir().iterdir() if p.name.endswith(".json"))


def is_reference_name(name: str) -> bool:
    return name in available_references()


def load_reference(name: str) -> "ReferenceTable":
    """The shipped reference table ``name`` (see :func:`available_references`)."""
    if not is_reference_name(name):
        raise ReferenceTableError(f"unknown reference table {name!r}: use one of {', '.join(available_references())}")
    d = json.loads((_data_dir() / f"{name}.json").read_text())
    if d.get("format") != FORMAT or d.get("version") != 1:
        raise ReferenceTableError(f"reference table {name} has an unknown format: reinstall vitedge")
    rates, ms = np.asarray(d["pruning_rate"], np.float64), np.asarray(d["block_ms"], np.float64)
    if rates.shape != ms.shape or rates.size < 2 or rates[0] != 0 or np.any(np.diff(rates) <= 0) or np.any(ms <= 0):
        raise ReferenceTableError(f"reference table {name} is malformed (rates must start at 0 and increase)")
    return ReferenceTable(name=name, model=d["model"], device=dict(d["device"], reference=name), source=d["source"],
                          rates=rates, block_ms=ms, quantity=d.get("quantity", ""))


@dataclass
class ReferenceTable:
    name: str
    model: dict
    device: dict
    source: dict
    rates: np.ndarray      # pruning rates, ascending from 0
    block_ms: np.ndarray   # latency of one block at each rate (ms)
    quantity: str = ""

    @property
    def num_tokens(self) -> int:
        return int(self.model["num_tokens"])

    @property
    def max_rate(self) -> float:
        return float(self.rates[-1])

    @property
    def measured_tokens(self) -> list:
        """Token counts inside the table (capacity mode's candidates): N(1 - max_rate) .. N."""
        n_min = math.ceil(self.num_tokens * (1 - self.max_rate) - 1e-9)
        return list(range(n_min, self.num_tokens + 1))

    def citation(self) -> str:
        s = self.source
        return f"{s['paper']} ({s['venue']}, arXiv:{s['arxiv']}), {s['table'].split(':')[0]}"

    def note(self) -> str:
        return (f"latency table: reference {self.name} = {self.source['table']} ({self.citation()}); per-block latency "
                f"interpolated linearly between the table's rows at pruning rates {self.rates[0]:g}..{self.max_rate:g}; "
                f"candidates beyond rate {self.max_rate:g} are excluded (no extrapolation); blocks only (no embedding/head)")

    def rate(self, n_tokens) -> np.ndarray:
        """Pruning rate of a block that receives ``n_tokens`` (prefix included): 1 - n / N."""
        return 1.0 - np.asarray(n_tokens, np.float64) / self.num_tokens

    def in_coverage(self, n_tokens) -> np.ndarray:
        return self.rate(n_tokens) <= self.max_rate + 1e-12

    def block_latency(self, n_tokens, *, clamp: bool = False) -> np.ndarray:
        """Latency (ms) of one block receiving ``n_tokens`` tokens, interpolated linearly in the rate.

        Raises ReferenceTableError beyond the table's coverage unless ``clamp`` (used only for
        candidates the planner excludes anyway).
        """
        r = self.rate(n_tokens)
        if not clamp and np.any(r > self.max_rate + 1e-12):
            n_min = math.ceil(self.num_tokens * (1 - self.max_rate) - 1e-9)
            raise ReferenceTableError(f"{self.name} covers pruning rates up to {self.max_rate:g} (>= {n_min} of "
                                      f"{self.num_tokens} tokens per block); asked for rate {float(r.max()):.3f}: "
                                      "no extrapolation beyond the table")
        return np.interp(np.clip(r, 0.0, self.max_rate), self.rates, self.block_ms)

    def covered(self, kept: np.ndarray) -> np.ndarray:
        """(L, M) bool: candidate m of block l keeps every calibration image inside the table
        (its kept tokens feed block l+1; the last block's feed only the head, not in the table)."""
        kept = np.asarray(kept, np.int64)
        ok = self.in_coverage(kept + int(self.model["num_prefix"])).all(axis=2)
        ok[-1] = True
        return ok

    # -- the planner's table interface -------------------------------------------------------------
    def base_ms(self) -> float:
        """Block 1 on all N tokens: the part no schedule changes."""
        return float(self.block_ms[0])

    def candidate_costs(self, kept: np.ndarray, mode: str = "threshold") -> tuple:
        """cost[l, m]: expected ms (over calibration images) of block l+1 receiving the tokens that
        candidate m keeps in block l; 0 for the last block.  Excluded candidates (:meth:`covered`)
        get the boundary row's cost, only to stay finite: :class:`ReferencePlanner` never picks them.
        ``mode`` ("threshold" or "capacity": kept (L, M, 1) = K) changes nothing: selectors are free."""
        kept = np.asarray(kept, np.int64)
        n = kept + int(self.model["num_prefix"])
        cost = self.block_latency(n, clamp=True).mean(axis=2)
        cost[-1] = 0.0
        return cost, self.base_ms()

    def selector_charge_ms(self, mode: str = "threshold") -> float:
        """Selectors are free on a reference table (SPViT's rows include them): 0.0 ms."""
        return 0.0

    def predict_ms(self, kept, selectors=None) -> np.ndarray:
        """Sum of block latencies for kept patch tokens (L,) or (L, D); selectors are free (SPViT:
        < 1 % of a block, disregarded).  Raises ReferenceTableError beyond the coverage."""
        kept = np.asarray(kept, np.int64)
        n = kept[:-1] + int(self.model["num_prefix"])
        return self.base_ms() + self.block_latency(n).sum(axis=0)

    def check_model(self, shape: dict, *, source: str = "reference table") -> None:
        for key in _SHAPE_KEYS:
            if shape.get(key) is not None and int(shape[key]) != int(self.model[key]):
                m = self.model
                raise ReferenceTableError(
                    f"{source} is for {m['name']} (dim {m['dim']}, {m['depth']} blocks, {m['num_tokens']} tokens), this "
                    f"model has {key}={shape[key]}: pass --model {m['name']}")

    def planner(self, calibration, mode: str | None = None, **kwargs) -> "ReferencePlanner":
        """A planner on this table; ``mode`` "threshold" (default) or "capacity" (exact K tokens per
        block: the rate is exact, candidates are the token counts inside the table)."""
        return ReferencePlanner(calibration, self, mode=mode or "threshold", **kwargs)


class ReferencePlanner(Planner):
    """:class:`Planner` on a reference table, with its coverage enforced: candidates outside the
    table get a prohibitive loss (the Viterbi takes them only if nothing covered fits), and a
    schedule that still needs one is refused with the smallest budget the table covers."""

    def __init__(self, calibration, table: ReferenceTable, mode: str = "threshold", min_patch_tokens: int = 0,
                 package_token: bool = False):
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
            n_in = np.array([N]) if l == 0 else kept_of(l - 1) + p
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
