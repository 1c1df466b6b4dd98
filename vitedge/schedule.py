"""Schedule: the per-block pruning decision the search picks and the export compiles (JSON)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import token_score
from .io import atomic_write_json

FORMAT = "vitedge-schedule"
VERSION = 2  # 2: capacity mode (``capacities``); version 1 files (threshold mode only) still load


class ScheduleError(ValueError):
    """Corrupt or mismatched schedule file."""


def capacity_selectors(capacities, num_patches: int) -> list[bool]:
    """(L,) whether each block runs its capacity selector: the one place this rule lives.

    A block with K_l set runs a selector only when K_l is below the patch tokens it receives (P into
    the first selector, K of the last selector that ran after it); at or above them it prunes nothing
    and is compiled out (identity, no cost), K_0 = P included. The package token is not a patch token
    (it is never ranked), so it changes nothing here. Used by the adapter, :attr:`Schedule.selectors`,
    the planner and the quality evaluator.

    Args:
        capacities: (L,) K_l per block, None = no selector.
        num_patches: P, the patch tokens entering the first block.
    """
    out, present = [], num_patches
    for k in capacities:
        runs = k is not None and k < present
        out.append(runs)
        if runs:
            present = k
    return out


@dataclass
class Schedule:
    """Per-block thresholds chosen by the search.

    Attributes:
        mode: "threshold" (keep = score >= θ_l; NonZero + Gather) or "capacity" (exactly K_l patch
            tokens; rank by counting + one-hot MatMul; static shapes).
        candidates: (L,) candidate indices m_l (0 = keep every token, no selector).
        thresholds: (L,) θ_l; None where m_l = 0 (and in capacity mode).
        capacities: (L,) K_l; None where m_l = 0 (and in threshold mode).
        budget: the budget searched for, in ``unit`` ("ms" or "flops").
        cost_model: "latency" or "flops".
        predicted: predicted cost (same unit) from the calibration tables (independent blocks).
        predicted_kept: (L,) mean kept patch tokens per block the calibration predicts.
        fisher_loss: sum of the chosen f[l, m_l] (RCTP eq. (7) objective).
        meta: identities (model hash, calibration file hash, table hash, device).
    """

    mode: str
    candidates: list
    thresholds: list
    capacities: list
    budget: float
    unit: str
    cost_model: str
    predicted: float
    predicted_kept: list
    fisher_loss: float
    meta: dict = field(default_factory=dict)

    @property
    def keeps_everything(self) -> bool:
        return all(t is None for t in self.thresholds) and all(k is None for k in self.capacities)

    def apply(self, model) -> None:
        """Configure a :class:`~vitedge.models.adapter.PrunableViT` with this schedule: its thresholds or capacities
        and the token score they were searched with (``meta["token_score"]``; files without it: "cls-attention")."""
        model.token_score = token_score.recorded(self.meta)
        if self.mode == "capacity":
            model.set_capacities(self.capacities)
        else:
            model.set_thresholds(self.thresholds)

    @property
    def selectors(self) -> list[bool]:
        """(L,) whether each block runs a selector.

        A capacity at or above the tokens its block receives prunes nothing and is compiled out
        (:func:`capacity_selectors`; P from ``meta["num_patches"]``, unbounded in files without it).
        """
        caps = capacity_selectors(self.capacities, self.meta.get("num_patches") or math.inf)
        return [t is not None or k for t, k in zip(self.thresholds, caps)]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, path) -> None:
        """Write JSON atomically (:mod:`vitedge.io`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path) -> "Schedule":
        """Raises ScheduleError on a missing, corrupt or foreign file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ScheduleError(f"schedule {path} does not exist: run `vitedge search` first") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ScheduleError(f"schedule {path} is not valid JSON: re-run `vitedge search`") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") not in (1, VERSION):
            raise ScheduleError(f"{path} is not a vitedge schedule (version <= {VERSION}): re-run `vitedge search`")
        if d.get("version") == 1 and isinstance(d.get("thresholds"), list):
            d.setdefault("capacities", [None] * len(d["thresholds"]))
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        try:
            s = cls(**d)
        except TypeError as e:
            raise ScheduleError(f"schedule {path} is incomplete ({e}): re-run `vitedge search`") from None
        if len(s.thresholds) != len(s.candidates) or any(t is not None and not math.isfinite(t) for t in s.thresholds):
            raise ScheduleError(f"schedule {path} has inconsistent thresholds: re-run `vitedge search`")
        return s
