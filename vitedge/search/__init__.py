"""Budgeted search of per-block pruning settings (RCTP eq. (7)-(8)), pure NumPy."""

from .viterbi import (
    BudgetUnreachableError,
    MonotoneViterbi,
    Solution,
    exhaustive_search,
    flops_cost_table,
)

__all__ = ["BudgetUnreachableError", "MonotoneViterbi", "Solution", "exhaustive_search", "flops_cost_table"]
