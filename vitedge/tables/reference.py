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
``candidate_costs(kept)``, ``predict_ms(kept, selectors)``. It offers data only: the search builds
its planner from it (:class:`vitedge.search.reference.ReferencePlanner` adds the coverage limits to
:class:`~vitedge.search.planner.Planner`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

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
        get the boundary row's cost, only to stay finite: the reference planner never picks them.
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
