"""The closed loop (vitedge.pipeline.ClosedLoop) with a fake search and device: re-aiming, not timing."""
from __future__ import annotations

import contextlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from vitedge.pipeline import BudgetNotMetError, ClosedLoop

FULL = 1.556      # the table's prediction of the unpruned model (ms)
SLOWER = 1.06     # the device measures every model 6 % slower than the table predicts


class _Search:
    """Keeps every token when the budget allows the unpruned prediction, else prunes to the budget."""

    def solve(self, target: float):
        if target >= FULL:
            return SimpleNamespace(keeps_everything=True, predicted=FULL, candidates=[0, 0])
        return SimpleNamespace(keeps_everything=False, predicted=0.99 * target, candidates=[1, 1])


class _Fakes:
    def __init__(self, tmp_path):
        self.current = None
        self.exported = []
        fakes = self

        class Model:
            @contextlib.contextmanager
            def pruning(self, schedule):
                fakes.current = schedule
                yield self

        class Artifact:
            suffix = ".onnx"

            def export(self, model, path):
                path.write_bytes(b"model")
                fakes.exported.append(fakes.current)

        class Device:
            def measure_model(self, path, feeds, name):
                return {"median_ms": SLOWER * fakes.exported[-1].predicted}

        self.ctx = SimpleNamespace(model=Model(), device=Device(), feeds=lambda: [], opts=SimpleNamespace(budget_quantile=0.5))
        self.artifact = Artifact()
        self.tmp = tmp_path


def _loop(tmp_path, monkeypatch):
    f = _Fakes(tmp_path)
    monkeypatch.setattr(ClosedLoop, "_realised", lambda self, s, limit=64: (s.predicted, np.ones((2, 1))))
    return f, ClosedLoop(f.ctx, _Search(), tmp_path, f.artifact, max_rounds=5, log=lambda m: None)


def test_unpruned_over_budget_re_aims_down(tmp_path, monkeypatch):
    """The budget is above the table's unpruned prediction but below what the unpruned model measures: the loop must
    prune (it used to export the unpruned model five times and fail)."""
    f, loop = _loop(tmp_path, monkeypatch)
    budget = 1.01 * FULL                      # fits the table's unpruned prediction; the device measures 1.06x
    schedule, path, m = loop.run(budget)
    assert f.exported[0].keeps_everything     # round 0 tries the unpruned model (the table says it fits) ...
    assert not schedule.keeps_everything      # ... and the loop re-aims below it
    assert m["median_ms"] <= budget and path.is_file()
    assert len(loop.rounds) == 2 and loop.rounds[1]["measured_ms"] <= budget


def test_unpruned_within_budget_stops_at_once(tmp_path, monkeypatch):
    f, loop = _loop(tmp_path, monkeypatch)
    budget = 1.2 * FULL                       # the unpruned model measures 1.06 x FULL: within the budget
    schedule, _, m = loop.run(budget)
    assert schedule.keeps_everything and len(loop.rounds) == 1 and m["median_ms"] <= budget


def test_budget_below_every_schedule_still_fails(tmp_path, monkeypatch):
    f, loop = _loop(tmp_path, monkeypatch)
    monkeypatch.setattr(_Search, "solve", lambda self, target: SimpleNamespace(keeps_everything=True, predicted=FULL, candidates=[0, 0]))
    with pytest.raises(BudgetNotMetError, match="after 5 rounds"):
        loop.run(1.01 * FULL)


def test_a_device_much_slower_than_its_table_is_still_reached(tmp_path, monkeypatch):
    """The table's bias (measured / predicted) moves at most x1.25 per round from the last round's: a device 40 % slower
    than its table is reached in a few rounds (the bias used to be clamped to 1.25 in every round, so the loop
    re-exported the same schedule, 6 % over the budget, until it failed)."""
    monkeypatch.setattr(sys.modules[__name__], "SLOWER", 1.4)
    f, loop = _loop(tmp_path, monkeypatch)
    budget = 0.8 * FULL
    schedule, path, m = loop.run(budget)
    assert m["median_ms"] <= budget and path.is_file() and not schedule.keeps_everything
    assert [r["measured_ms"] > budget for r in loop.rounds] == [True, True, False]
