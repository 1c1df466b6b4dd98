"""The planner (vitedge.search.planner): latency and FLOPs cost models over a synthetic calibration."""
from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import make_calibration, make_table
from vitedge.calibration.tables import block_flops
from vitedge.schedule import Schedule
from vitedge.search.planner import Planner
from vitedge.search.viterbi import BudgetUnreachableError
from vitedge.tables.latency import LatencyTableError

L, M = 3, 11


@pytest.fixture
def planner(synthetic_calibration, synthetic_table):
    return Planner(synthetic_calibration, "latency", synthetic_table)


def _budgets(pl, k=7):
    lo, hi = pl.min_budget, pl.full
    return np.linspace(lo + 0.02 * (hi - lo), hi, k)


def _check_schedule(pl, s, budget):
    cal = pl.calibration
    assert isinstance(s, Schedule)
    idx = np.array(s.candidates)
    assert len(idx) == L and np.all(np.diff(idx) >= 0)  # monotone: deeper blocks prune at least as much
    total = pl.base + sum(pl.cost[l, m] for l, m in enumerate(idx))
    assert total <= budget + 1e-9
    assert s.predicted == pytest.approx(total)
    assert s.fisher_loss == pytest.approx(sum(cal.fisher_loss[l, m] for l, m in enumerate(idx)))
    for l, m in enumerate(idx):
        if m == 0:
            assert s.thresholds[l] is None
        else:
            assert s.thresholds[l] == cal.thresholds[l, m]
        assert s.predicted_kept[l] == pytest.approx(cal.kept[l, m].mean())
    assert s.budget == budget and s.unit == "ms" and s.cost_model == "latency" and s.mode == "threshold"


def test_solve_meets_budget(planner):
    assert planner.unit == "ms" and planner.cost.shape == (L, M)
    for b in _budgets(planner):
        _check_schedule(planner, planner.solve(float(b)), float(b))


def test_costs_come_from_table(planner, synthetic_calibration, synthetic_table):
    cost, base = synthetic_table.candidate_costs(synthetic_calibration.kept)
    np.testing.assert_array_equal(planner.cost, cost)
    assert planner.base == base
    assert planner.full == pytest.approx(float(synthetic_table.predict_ms(np.full(L, 16))))
    # keeping every token costs exactly the unpruned model
    assert planner.base + planner.cost[:, 0].sum() == pytest.approx(planner.full)


def test_tighter_budget_is_faster_and_lossier(planner):
    schedules = [planner.solve(float(b)) for b in _budgets(planner, 9)]  # increasing budgets
    pred = [s.predicted for s in schedules]
    loss = [s.fisher_loss for s in schedules]
    assert all(a <= b + 1e-9 for a, b in zip(pred, pred[1:]))
    assert all(a >= b - 1e-6 for a, b in zip(loss, loss[1:]))
    assert loss[0] > loss[-1]                   # the tightest budget really prunes
    # the unpruned cost plus the quantisation slack (ceil per block, floor of the budget) keeps everything
    slack = (L + 1) * planner.viterbi.resolution
    assert planner.solve(planner.full + slack).fisher_loss == 0.0


def test_large_budget_keeps_everything(planner):
    s = planner.solve(planner.full * 2)
    assert s.keeps_everything and s.candidates == [0] * L and s.fisher_loss == 0.0
    k = planner.keep_all(123.0)
    assert k.thresholds == [None] * L and k.candidates == [0] * L and k.keeps_everything
    assert k.predicted == pytest.approx(planner.full) and k.budget == 123.0 and k.fisher_loss == 0.0
    assert k.meta["device"] == "local" and k.meta["threads"] == 1 and k.meta["num_layers"] == L


def test_unreachable_budget(planner):
    budget = planner.min_budget * 0.9
    with pytest.raises(BudgetUnreachableError) as err:
        planner.solve(budget)
    msg = str(err.value)
    assert "\n" not in msg and "ms" in msg
    reach = float(re.search(r"smallest reachable ([0-9.]+) ms", msg).group(1))
    assert reach == pytest.approx(err.value.min_budget, abs=0.006)
    assert err.value.min_budget >= planner.min_budget - 1e-9
    assert err.value.min_budget <= planner.min_budget + planner.viterbi.resolution + 1e-9
    # a budget below the fixed cost (embed, head, first attention) is unreachable too
    with pytest.raises(BudgetUnreachableError):
        planner.solve(planner.base * 0.5)


def _unreachable(pl):
    with pytest.raises(BudgetUnreachableError) as err:
        pl.solve(pl.min_budget * 0.5)
    return err.value



def test_error_min_budget_is_accepted(planner):
    err = _unreachable(planner)
    s = planner.solve(err.min_budget)
    assert s.predicted <= err.min_budget



def test_suggested_budget_in_message_is_accepted(planner):
    err = _unreachable(planner)
    suggested = float(re.search(r"at least ([0-9.]+)", str(err)).group(1))
    planner.solve(suggested)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_budget(planner, budget):
    with pytest.raises(ValueError, match="positive") as err:
        planner.solve(budget)
    assert not isinstance(err.value, BudgetUnreachableError)


def test_flops_cost_model(synthetic_calibration):
    pl = Planner(synthetic_calibration, "flops")
    phi = block_flops(17, 32)
    assert pl.unit == "flops" and pl.base == 0.0 and pl.full == pytest.approx(L * phi)
    for R in (1.0, 0.8, 0.5, 0.3):
        s = pl.solve(R)
        m = np.array(s.candidates)
        assert np.mean(m / M) >= 1 - R - 1e-12  # RCTP eq. (7): mean pruning ratio >= C = 1 - R
        assert s.predicted <= R + 1e-12 and s.unit == "flops" and s.cost_model == "flops"
        assert np.all(np.diff(m) >= 0)
        assert s.meta["device"] is None
    assert np.mean(np.array(pl.solve(0.5).candidates) / M) >= 0.5
    with pytest.raises(ValueError, match="fraction"):
        pl.solve(1.5)
    with pytest.raises(BudgetUnreachableError) as err:
        pl.solve(0.01)
    assert "\n" not in str(err.value) and "--budget-flops" in str(err.value)


def test_planner_argument_errors(synthetic_calibration):
    with pytest.raises(ValueError, match="unknown cost model"):
        Planner(synthetic_calibration, "energy")
    with pytest.raises(ValueError, match="latency table"):
        Planner(synthetic_calibration, "latency", None)


@pytest.mark.parametrize("table_kwargs", [{"N": 65}, {"dim": 64}, {"depth": 4}, {"N": 18, "prefix": 2}])
def test_table_calibration_mismatch(synthetic_calibration, table_kwargs):
    with pytest.raises(LatencyTableError) as err:
        Planner(synthetic_calibration, "latency", make_table(**table_kwargs))
    assert "\n" not in str(err.value) and "calibration is for N=17, dim=32, depth=3" in str(err.value)


def test_distilled_calibration_with_two_prefix_tokens():
    cal = make_calibration(seed=5, prefix=2, L=3)
    pl = Planner(cal, "latency", make_table(N=18, prefix=2))
    for b in _budgets(pl, 4):
        _check_schedule(pl, pl.solve(float(b)), float(b))
