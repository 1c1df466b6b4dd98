"""Tests for vitedge.search (monotone Viterbi, RCTP eq. (7)-(8)) against brute force."""

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

import vitedge.search as search
from vitedge.search import (
    BudgetUnreachableError,
    MonotoneViterbi,
    Solution,
    exhaustive_search,
    flops_cost_table,
)

SEEDS = range(12)


def _instance(seed, *, integer_loss=False):
    """Small random instance; neither loss nor cost is monotone in m."""
    rng = np.random.default_rng(seed)
    L, M = int(rng.integers(1, 5)), int(rng.integers(2, 7))
    loss = rng.integers(0, 4, (L, M)).astype(float) if integer_loss else rng.random((L, M))
    return rng, loss, rng.integers(0, 6, (L, M)).astype(float)


def _all_totals(cost):
    L, M = cost.shape
    seqs = itertools.combinations_with_replacement(range(M), L)  # all non-decreasing sequences
    return [math.fsum(cost[np.arange(L), list(s)]) for s in seqs]


def _check_valid(sol, cost, budget):
    assert sol.indices.dtype == np.int64 and sol.indices.shape == (cost.shape[0],)
    assert np.all(np.diff(sol.indices) >= 0)
    assert sol.cost <= budget
    assert sol.cost == math.fsum(cost[np.arange(cost.shape[0]), sol.indices])
    assert sol.budget == budget


def _assert_matches_exhaustive(mv, loss, cost, budgets, *, same_indices=False):
    for b in budgets:
        ex = exhaustive_search(loss, cost, b)
        if ex is None:
            with pytest.raises(BudgetUnreachableError):
                mv.solve(b)
            continue
        sol = mv.solve(b)
        _check_valid(sol, cost, b)
        assert sol.loss == pytest.approx(ex.loss, rel=1e-5, abs=1e-6)
        if same_indices:  # exact integer data: the documented tie-break reproduces brute force
            np.testing.assert_array_equal(sol.indices, ex.indices)


@pytest.mark.parametrize("integer_loss", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_integer_costs_match_exhaustive(seed, integer_loss):
    _, loss, cost = _instance(seed, integer_loss=integer_loss)
    mv = MonotoneViterbi(loss, cost, resolution=1.0)
    budgets = np.arange(0.5, cost.max(axis=1).sum() + 1.5, 0.5)
    _assert_matches_exhaustive(mv, loss, cost, budgets, same_indices=integer_loss)


@pytest.mark.parametrize("seed", SEEDS)
def test_dyadic_float_costs_match_exhaustive(seed):
    rng, loss, _ = _instance(seed)
    cost = rng.integers(0, 40, loss.shape) / 8.0  # multiples of the resolution: no quantisation error
    mv = MonotoneViterbi(loss, cost, resolution=0.125)
    budgets = sorted(set(t for t in _all_totals(cost) if t > 0)) + list(rng.uniform(0.01, cost.sum() + 1, 15))
    _assert_matches_exhaustive(mv, loss, cost, budgets)


@pytest.mark.parametrize("seed", SEEDS)
def test_coarse_quantisation_is_conservative(seed):
    rng, loss, _ = _instance(seed)
    cost = rng.random(loss.shape) * 3.0
    mv = MonotoneViterbi(loss, cost, max_buckets=8)  # coarse: resolution = max total / 8
    L, r = loss.shape[0], mv.resolution
    for b in list(rng.uniform(0.01, cost.max(axis=1).sum() * 1.1, 25)) + _all_totals(cost):
        if b <= 0:
            continue
        ex = exhaustive_search(loss, cost, b)
        # any schedule with true cost <= b - L*r has bucket sum <= floor(b / r), so it is seen
        ex_inner = exhaustive_search(loss, cost, b - L * r) if b - L * r > 0 else None
        try:
            sol = mv.solve(b)
        except BudgetUnreachableError as err:
            assert ex_inner is None
            assert err.min_budget > b and err.min_budget >= mv.min_cost
            continue
        _check_valid(sol, cost, b)
        assert sol.loss >= ex.loss - 1e-6  # cannot beat the true optimum
        if ex_inner is not None:
            assert sol.loss <= ex_inner.loss + 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_min_budget_is_smallest_accepted_budget(seed):
    rng, loss, _ = _instance(seed)
    mv = MonotoneViterbi(loss, rng.random(loss.shape) * 3.0 + 0.1, max_buckets=8)
    with pytest.raises(BudgetUnreachableError) as info:
        mv.solve(mv.min_cost * 0.5)
    need = info.value.min_budget
    assert need >= mv.min_cost
    assert mv.solve(need).cost <= need
    with pytest.raises(BudgetUnreachableError):
        mv.solve(np.nextafter(need, 0.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_min_and_max_cost_are_exact(seed):
    rng, loss, _ = _instance(seed)
    cost = rng.random(loss.shape) * 5.0
    mv = MonotoneViterbi(loss, cost)
    totals = _all_totals(cost)
    assert mv.min_cost == min(totals) and mv.max_cost == max(totals)


def test_unreachable_budget_error():
    loss = np.zeros((3, 3))
    cost = np.array([[5.0, 2.0, 1.0], [3.0, 4.0, 1.0], [2.0, 1.0, 6.0]])
    # per-block minima (2, 2, 0) would cost 3 but are not monotone; the monotone minimum is (1, 1, 1) = 7
    mv = MonotoneViterbi(loss, cost, resolution=1.0)
    expected = min(_all_totals(cost))
    assert mv.min_cost == expected == 7.0
    with pytest.raises(BudgetUnreachableError) as info:
        mv.solve(expected - 0.5)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.min_budget == expected
    msg = str(err)
    assert "\n" not in msg and f"{expected:.2f}" in msg and "--budget-ms" in msg
    assert mv.solve(expected).cost == expected


def test_unreachable_message_uses_unit():
    mv = MonotoneViterbi(np.zeros((2, 2)), np.full((2, 2), 3e9), unit="FLOPs")
    with pytest.raises(BudgetUnreachableError, match="FLOPs") as info:
        mv.solve(1e9)
    assert info.value.min_budget == pytest.approx(6e9)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_bad_budget_raises_value_error(budget):
    mv = MonotoneViterbi(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError) as info:
        mv.solve(budget)
    assert type(info.value) is ValueError
    with pytest.raises(ValueError):
        exhaustive_search(np.ones((2, 3)), np.ones((2, 3)), budget)


GOOD = np.ones((2, 3))


@pytest.mark.parametrize(
    "loss, cost",
    [
        (np.ones(3), np.ones(3)),  # 1-D
        (np.ones((2, 3, 1)), np.ones((2, 3, 1))),  # 3-D
        (np.ones((0, 3)), np.ones((0, 3))),  # L = 0
        (np.ones((2, 0)), np.ones((2, 0))),  # M = 0
        (GOOD, np.ones((2, 4))),  # shape mismatch
        (np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]]), GOOD),
        (GOOD, np.array([[1.0, np.inf, 1.0], [1.0, 1.0, 1.0]])),
        (-GOOD, GOOD),
        (GOOD, np.array([[1.0, -0.5, 1.0], [1.0, 1.0, 1.0]])),
    ],
)
def test_bad_tables_raise_value_error(loss, cost):
    with pytest.raises(ValueError) as info:
        MonotoneViterbi(loss, cost)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        exhaustive_search(loss, cost, 1.0)


@pytest.mark.parametrize("kwargs", [{"resolution": 0.0}, {"resolution": -1.0}, {"resolution": float("nan")},
                                    {"max_buckets": 0}, {"resolution": 1e-9}])
def test_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        MonotoneViterbi(GOOD, GOOD, **kwargs)


def test_huge_budget_gives_all_zeros_when_pruning_costs_loss():
    rng = np.random.default_rng(0)
    loss = np.cumsum(rng.random((6, 8)), axis=1)
    loss[:, 0] = 0.0
    cost = rng.random((6, 8)) * 2
    sol = MonotoneViterbi(loss, cost).solve(1e12)
    np.testing.assert_array_equal(sol.indices, np.zeros(6, dtype=np.int64))
    assert sol.loss == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_huge_budget_gives_unconstrained_monotone_optimum(seed):
    _, loss, cost = _instance(seed)
    sol = MonotoneViterbi(loss, cost).solve(1e12)
    assert sol.loss == pytest.approx(exhaustive_search(loss, cost, 1e12).loss, rel=1e-5)


def test_monotone_constraint_not_data_is_enforced():
    # Per block the best choices are m=1 then m=0 (loss 0), which is not monotone.
    loss = np.array([[1.0, 0.0], [0.0, 1.0]])
    cost = np.array([[0.0, 3.0], [1.0, 0.0]])  # cost increasing in m at block 0
    sol = MonotoneViterbi(loss, cost, resolution=1.0).solve(100.0)
    np.testing.assert_array_equal(sol.indices, [0, 0])  # ties (0,0),(1,1) at loss 1: cheaper one wins
    assert sol.loss == 1.0 and sol.cost == 1.0
    sol = MonotoneViterbi(loss, np.zeros((2, 2))).solve(1.0)  # equal cost: smallest m_L wins
    np.testing.assert_array_equal(sol.indices, [0, 0])


def test_degenerate_shapes():
    sol = MonotoneViterbi(np.array([[3.0, 1.0, 2.0]]), np.array([[1.0, 2.0, 0.5]]), resolution=0.5).solve(1.9)
    assert sol.indices.tolist() == [2] and sol.loss == 2.0  # L = 1
    sol = MonotoneViterbi(np.ones((4, 1)), np.ones((4, 1))).solve(4.0)
    assert sol.indices.tolist() == [0, 0, 0, 0] and sol.cost == 4.0  # M = 1


@pytest.mark.parametrize("C", [0.1, 0.25, 0.4, 0.5, 0.6, 0.75])
def test_flops_formulation_matches_paper_constraint(C):
    L, M, phi = 3, 4, 4.0  # costs are integers 4 - m: no quantisation error at resolution 1
    rng = np.random.default_rng(int(C * 100))
    loss = np.cumsum(rng.random((L, M)), axis=1)
    cost = flops_cost_table(L, M, phi)
    budget = (1 - C) * L * phi
    sol = MonotoneViterbi(loss, cost, resolution=1.0, unit="FLOPs").solve(budget)
    assert np.mean(sol.indices / M) >= C - 1e-12
    ex = exhaustive_search(loss, cost, budget)
    assert sol.loss == pytest.approx(ex.loss, rel=1e-5)


@pytest.mark.parametrize("C", [0.2, 0.5, 0.8])
def test_flops_formulation_realistic_scale(C):
    L, M, phi = 12, 20, 1.7e9
    loss = np.cumsum(np.random.default_rng(1).random((L, M)), axis=1)
    sol = MonotoneViterbi(loss, flops_cost_table(L, M, phi), unit="FLOPs").solve((1 - C) * L * phi)
    assert np.all(np.diff(sol.indices) >= 0)
    assert np.mean(sol.indices / M) >= C - 1e-9


def test_flops_cost_table_values_and_errors():
    t = flops_cost_table(2, 4, 8.0)
    np.testing.assert_array_equal(t, [[8.0, 6.0, 4.0, 2.0]] * 2)
    for args in [(0, 4, 1.0), (2, 0, 1.0), (2, 4, 0.0), (2, 4, float("nan"))]:
        with pytest.raises(ValueError):
            flops_cost_table(*args)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_sweep_equals_solve(seed):
    rng, loss, _ = _instance(seed)
    cost = rng.random(loss.shape) * 4
    mv = MonotoneViterbi(loss, cost, max_buckets=64)
    lowest = mv.min_cost + loss.shape[0] * mv.resolution  # always reachable on the grid
    budgets = np.linspace(lowest, mv.max_cost + 1.0, 17)
    assert mv.sweep(budgets) == [mv.solve(b) for b in budgets]
    assert mv.sweep(list(budgets[:3])) == mv.sweep(budgets[:3])


def test_solution_is_immutable_and_comparable():
    a = Solution(np.array([0, 1]), 1.0, 2.0, 3.0)
    assert a == Solution([0, 1], 1.0, 2.0, 3.0) and a != Solution([0, 2], 1.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        a.indices[0] = 5
    with pytest.raises(AttributeError):
        a.loss = 0.0


def test_public_api_and_no_torch():
    assert set(search.__all__) >= {"BudgetUnreachableError", "MonotoneViterbi", "Solution",
                                   "exhaustive_search", "flops_cost_table"}
    for path in Path(search.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] == "torch" for n in names), path
