"""Latency table: measured latency of a block's parts vs. token count on one device (SPViT eq. (9)).

All blocks of a ViT have the same shape, so one table per part serves every block:

- ``attention`` T_att(n): MSA + residual on n tokens, also producing the CLS scores;
- ``selector``  T_sel(n): threshold + NonZero + Gather on n tokens (profiled keeping all: worst case);
- ``capacity_selector`` T_cap(n): rank by counting + one-hot MatMul on n tokens (profiled at K = n - p);
- ``mlp``       T_mlp(n): MLP + residual on n tokens;
- fixed parts: ``embed`` (image -> N tokens), ``head`` (N tokens -> logits) and ``run_overhead``
  (one runtime call with nothing computed).

Each part was timed as its own runtime call, so its time holds one call overhead; the model is
one call. The whole-model prediction is therefore::

    T = o + (embed - o) + sum_l [ (att(n_in_l) - o) + s_l (sel(n_in_l) - o) + (mlp(n_out_l) - o) ] + (head - o)

with o the run overhead, n = prefix + kept patch tokens, s_l = 1 where block l has a selector.

A part timed alone need not run as it does inside the model (measured on ViT-S, ONNX Runtime, 1 thread: on a
core shared with another process the same blocks run in one graph took 1.38-1.49x the sum of the parts timed
alone, fp32 and int8 alike, since a 1-5 ms part mostly runs between the scheduler's interruptions and a 100 ms
graph does not; on a quiet core 0.79-1.06x, ``benchmarks/results/table_error.md``). So each table
also times the ``blocks`` in-graph reference (every block, each with its own weights, then the head, one call; no
selector) at two token counts (:data:`IN_GRAPH`, each timed :data:`IN_GRAPH_REPEATS` times spread over the
profile), and charges a block ``beta * (att(n) + mlp(n) - 2o) + gamma`` with the line fitted through those points
(:meth:`LatencyTable.in_graph_fit`; selectors scaled by ``beta``). A table without the reference (older files) is
used as measured (``beta = 1``, ``gamma = 0``).
Runtimes that need static shapes (LiteRT) are measured on a grid of token counts
(``meta["measured_tokens"]``); the table holds every n = 1..N, linearly interpolated between
measured points, and the capacity search only uses measured counts (exact latency).
The file is JSON (format ``vitedge-latency-table``, version 1); raw samples are kept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_json

FORMAT = "vitedge-latency-table"
VERSION = 1
PARTS = ("attention", "selector", "capacity_selector", "mlp")
REQUIRED_PARTS = ("attention", "mlp")
SELECTOR_PART = {"threshold": "selector", "capacity": "capacity_selector"}
FIXED = ("embed", "head", "run_overhead")
IN_GRAPH = "blocks"   # the in-graph reference: all blocks and the head in one graph, timed at two token counts
IN_GRAPH_REPEATS = 3  # times each in-graph point is timed (shuffled into the profile; the median of their medians)
IN_GRAPH_SLOPE = (0.5, 2.0)  # in-graph ms per part-alone ms a fitted line may have (measured: 0.93-1.49); else the ratio
SHAPE_KEYS = ("dim", "num_heads", "mlp_ratio", "depth", "num_tokens", "num_prefix", "input_size")


class LatencyTableError(ValueError):
    """Corrupt, mismatched or incomplete latency table (one-line message naming the fix)."""


@dataclass
class LatencyTable:
    """Per-part latency (ms) for n = 1..N tokens on one device/runtime/threads.

    Attributes:
        model: model shape and identity: name, hash, dim, num_heads, mlp_ratio, depth, num_tokens (N),
            num_prefix, input_size.
        device: name, runtime, runtime_version, threads, environment.
        parts: {part: {"median_ms": [N floats], "p90_ms": [N], "samples_ms": [N lists]}} for :data:`PARTS`.
        fixed: {name: {"median_ms": float, "p90_ms": float, "samples_ms": [...]}} for :data:`FIXED`.
        protocol: the measurement settings; drift: the reference point's medians and the verdict.
        in_graph: the in-graph reference: {"tokens": [n...], "median_ms": [...], "p90_ms": [...],
            "samples_ms": [[...]...]} (empty: none measured, parts used as measured).
    """

    model: dict
    device: dict
    parts: dict
    fixed: dict
    protocol: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    in_graph: dict = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.model["num_tokens"])

    @property
    def measured_tokens(self) -> list[int]:
        """Token counts n (prefix included) measured directly; the others are interpolated."""
        return list(self.meta.get("measured_tokens") or range(1, self.num_tokens + 1))

    def has_part(self, part: str) -> bool:
        return part in self.parts

    def _selector(self, mode: str) -> str:
        part = SELECTOR_PART[mode]
        if part not in self.parts:
            raise LatencyTableError(f"the latency table ({self.device.get('runtime')}) has no {part} part: "
                                    f"{mode} mode is not profiled for this runtime; use the other --mode or re-profile")
        return part

    @property
    def overhead_ms(self) -> float:
        return float(self.fixed["run_overhead"]["median_ms"])

    def part_ms(self, part: str, n, *, raw: bool = False, fit: dict | None = None) -> np.ndarray:
        """Latency (ms) of ``part`` on ``n`` tokens inside the model: its median minus one call overhead (clamped at
        0), corrected by the in-graph fit (:meth:`in_graph_fit`: times beta, plus half the per-block gamma for the
        attention and the MLP part; ``raw``: as timed alone; ``fit``: :meth:`in_graph_fit` when the caller already has it).

        Args:
            part: "attention", "selector", "capacity_selector" or "mlp".
            n: int or int array of token counts (prefix included), 1 <= n <= N.

        Raises:
            LatencyTableError: n outside the table (no silent extrapolation).
        """
        n = np.asarray(n)
        if n.size and (n.min() < 1 or n.max() > self.num_tokens):
            raise LatencyTableError(f"token count {int(n.min())}..{int(n.max())} outside the table's 1..{self.num_tokens}")
        med = np.asarray(self.parts[part]["median_ms"], np.float64)
        alone = np.maximum(med[n - 1] - self.overhead_ms, 0.0)
        if raw:
            return alone
        fit = fit or self.in_graph_fit()
        return fit["beta"] * alone + (fit["gamma"] / 2 if part in REQUIRED_PARTS else 0.0)

    def in_graph_fit(self) -> dict:
        """The correction from parts timed alone to the same parts inside the model, from the in-graph reference.

        With y_i = (blocks(n_i) - o - head) / depth the in-graph time of one block at n_i tokens and
        x_i = att(n_i) + mlp(n_i) - 2o the parts timed alone: the line y = beta * x + gamma through the points
        (gamma, ms per block, is what a block costs inside the model whatever its token count, e.g. its weights
        streamed from memory where a part timed alone finds them in cache). A line whose slope is outside
        :data:`IN_GRAPH_SLOPE` or whose intercept is < 0 (noise between two points on a loaded machine: a slope of
        0.2 would say the token count barely matters inside the model, and make every pruned schedule look as slow
        as the unpruned one) falls back to the ratio through the origin, beta = sum y / sum x, gamma = 0. A ratio
        outside :data:`IN_GRAPH_SLOPE` too is a failed reference (e.g. one point timed during a stall: a fresh-clone
        test run measured the blocks at N tokens 6.7x their parts, which made every schedule 4.7x too slow): it is
        ignored (beta 1, gamma 0, fit "ignored"), and the closed loop's measured bias corrects the table.

        Returns:
            {"beta": float, "gamma": ms per block, "tokens": [n_i], "ratio": [y_i / x_i], "fit": "line" | "ratio" |
            "ignored" | "none"}; beta 1, gamma 0 when the table has no in-graph reference or an implausible one.
        """
        if not self.in_graph:
            return {"beta": 1.0, "gamma": 0.0, "tokens": [], "ratio": [], "fit": "none"}
        ns = np.asarray(self.in_graph["tokens"], np.int64)
        y = (np.asarray(self.in_graph["median_ms"], np.float64) - self.overhead_ms - self.fixed_ms("head")) \
            / int(self.model["depth"])
        x = sum(self.part_ms(p, ns, raw=True) for p in REQUIRED_PARTS)
        out = {"beta": float(y.sum() / x.sum()) if x.sum() > 0 and y.sum() > 0 else 1.0, "gamma": 0.0,
               "tokens": ns.tolist(), "ratio": (y / np.maximum(x, 1e-12)).round(4).tolist(), "fit": "ratio"}
        if len(ns) >= 2 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            if np.isfinite(slope) and IN_GRAPH_SLOPE[0] <= slope <= IN_GRAPH_SLOPE[1] and icpt >= 0:
                out.update(beta=float(slope), gamma=float(icpt), fit="line")
        if out["fit"] == "ratio" and not IN_GRAPH_SLOPE[0] <= out["beta"] <= IN_GRAPH_SLOPE[1]:
            out.update(beta=1.0, fit="ignored")
        return out

    def fixed_ms(self, name: str) -> float:
        """Median of a fixed part (ms) minus one call overhead (``run_overhead`` itself: as measured)."""
        med = float(self.fixed[name]["median_ms"])
        return med if name == "run_overhead" else max(med - self.overhead_ms, 0.0)

    def base_ms(self) -> float:
        """The cost no schedule changes: one call, embedding, block 1's attention on N tokens, head."""
        return (self.overhead_ms + self.fixed_ms("embed") + self.fixed_ms("head")
                + float(self.part_ms("attention", self.num_tokens)))

    def predict_ms(self, kept: np.ndarray, selectors: np.ndarray | None = None, mode: str = "threshold") -> np.ndarray:
        """Predicted whole-model latency (ms) for kept patch-token counts.

        Args:
            kept: (L,) or (L, D) patch tokens leaving each block (D images); with the package token it counts as one
                (P + 1 after a threshold selector that kept every patch token: read at N, the table's largest count).
            selectors: (L,) bool, block has a selector; default: where a block keeps fewer tokens
                than it received.
            mode: "threshold" or "capacity" (which selector part is charged).

        Returns:
            () or (D,) predicted latency in ms.
        """
        kept = np.asarray(kept, np.int64)
        p, N = int(self.model["num_prefix"]), self.num_tokens
        n_out = np.minimum(kept + p, N)
        n_in = np.concatenate([np.full((1,) + kept.shape[1:], N), n_out[:-1]], axis=0)
        if selectors is None:
            selectors = (n_out < n_in).any(axis=tuple(range(1, kept.ndim))) if kept.ndim > 1 else n_out < n_in
        sel = np.asarray(selectors, bool).reshape((-1,) + (1,) * (kept.ndim - 1))
        fit = self.in_graph_fit()  # one fit for the three parts
        sel_ms = self.part_ms(self._selector(mode), n_in, fit=fit) if sel.any() else 0.0
        t = self.part_ms("attention", n_in, fit=fit) + sel * sel_ms + self.part_ms("mlp", n_out, fit=fit)
        return self.overhead_ms + self.fixed_ms("embed") + self.fixed_ms("head") + t.sum(axis=0)

    def candidate_costs(self, kept: np.ndarray, mode: str = "threshold") -> tuple[np.ndarray, float]:
        """Cost table for the search, threshold mode (expected over calibration images).

        Choosing candidate m at block l makes ``kept[l, m, :]`` patch tokens leave block l; that
        costs block l's MLP and block l+1's attention on those tokens, plus block l's selector when
        m > 0 (charged on N tokens: an upper bound, the selector is nearly flat in n).

        Args:
            kept: (L, M, D) kept patch tokens per block, candidate and image (calibration); in
                capacity mode (L, M, 1) with the capacities K (exact, the same for every image).
            mode: "threshold" or "capacity" (which selector part is charged).

        Returns:
            cost: (L, M) expected ms per candidate; base: ms common to every schedule
            (:meth:`base_ms`), so that total = base + sum_l cost[l, m_l].
        """
        kept = np.asarray(kept, np.int64)
        L, M, _ = kept.shape
        n = kept + int(self.model["num_prefix"])
        fit = self.in_graph_fit()
        per_image = self.part_ms("mlp", n, fit=fit)
        per_image[:-1] += self.part_ms("attention", n[:-1], fit=fit)
        cost = per_image.mean(axis=2)
        cost[:, 1:] += self.selector_charge_ms(mode)
        return cost, self.base_ms()

    def selector_charge_ms(self, mode: str = "threshold") -> float:
        """What :meth:`candidate_costs` charges for one selector (ms): its latency on N tokens."""
        return float(self.part_ms(self._selector(mode), self.num_tokens))

    # -- checks and IO -------------------------------------------------------------------------------
    def check_model(self, shape: dict, *, source: str = "latency table") -> None:
        """Raise :class:`LatencyTableError` if the table was measured for another model shape."""
        for key in SHAPE_KEYS:
            mine, theirs = self.model.get(key), shape.get(key)
            if isinstance(mine, (list, tuple)) or isinstance(theirs, (list, tuple)):
                mine, theirs = list(mine or []), list(theirs or [])
            if mine != theirs:
                raise LatencyTableError(f"{source} was measured for {key}={mine}, this model has {key}={theirs}: "
                                        "profile this model with `vitedge profile`")

    def check_device(self, device: str, runtime: str, threads: int, *, source: str = "latency table") -> None:
        """Raise :class:`LatencyTableError` if the table was measured on another device/runtime/threads."""
        want = {"name": device, "runtime": runtime, "threads": threads}
        for key, value in want.items():
            if self.device.get(key) != value:
                raise LatencyTableError(f"{source} is for {key}={self.device.get(key)}, not {value}: "
                                        f"profile with `vitedge profile --device {device} --runtime {runtime} --threads {threads}`")

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "device": self.device,
                "protocol": self.protocol, "drift": self.drift, "meta": self.meta, "parts": self.parts,
                "fixed": self.fixed, "in_graph": self.in_graph}

    def save(self, path) -> None:
        """Write JSON atomically (:mod:`vitedge.io`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "LatencyTable":
        """Read and validate a table file.

        Raises:
            LatencyTableError: missing, not JSON, other format/version, missing parts or wrong lengths.
        """
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {path} does not exist: run `vitedge profile` first")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyTableError(f"latency table {path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}): re-run `vitedge profile`") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LatencyTableError(f"{path} is not a vitedge latency table: re-run `vitedge profile`")
        if d.get("version") != VERSION:
            raise LatencyTableError(f"{path} has table version {d.get('version')}, this vitedge reads {VERSION}: re-run `vitedge profile`")
        try:
            table = cls(model=d["model"], device=d["device"], parts=d["parts"], fixed=d["fixed"],
                        protocol=d.get("protocol", {}), drift=d.get("drift", {}), meta=d.get("meta", {}),
                        in_graph=d.get("in_graph") or {})
            N = table.num_tokens
            missing = [p for p in REQUIRED_PARTS if p not in table.parts]
            if missing or not any(p in table.parts for p in SELECTOR_PART.values()):
                raise LatencyTableError(f"{path} is missing parts {missing or ['a selector']}: re-run `vitedge profile`")
            for part in table.parts:
                for key in ("median_ms", "p90_ms"):
                    if len(table.parts[part][key]) != N:
                        raise LatencyTableError(f"{path}: part {part!r} has {len(table.parts[part][key])} {key} entries, expected {N}: re-run `vitedge profile`")
                if not np.all(np.isfinite(table.parts[part]["median_ms"])):
                    raise LatencyTableError(f"{path}: part {part!r} has failed measurements: re-run `vitedge profile`")
            for name in FIXED:
                float(table.fixed[name]["median_ms"])
            if table.in_graph and (len(table.in_graph["tokens"]) != len(table.in_graph["median_ms"])
                                   or not np.all(np.isfinite(table.in_graph["median_ms"]))):
                raise LatencyTableError(f"{path}: its in-graph reference is malformed: re-run `vitedge profile`")
        except (KeyError, TypeError) as e:
            raise LatencyTableError(f"{path} is missing {e}: re-run `vitedge profile`") from None
        return table
