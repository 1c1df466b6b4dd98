"""Budgeted search of per-block pruning settings (RCTP eq. (7)-(8)), pure NumPy."""

import sys
import types

from .viterbi import (
    BudgetUnreachableError,
    MonotoneViterbi,
    Solution,
    exhaustive_search,
    flops_cost_table,
)

__all__ = ["BudgetUnreachableError", "MonotoneViterbi", "Solution", "exhaustive_search", "flops_cost_table"]


class _CallablePackage(types.ModuleType):
    """This package, callable: ``vitedge.search(model, budget_ms=...)`` is :func:`vitedge.api.search`, the
    Python API's name for it, while ``vitedge.search.planner`` and the other modules stay where they are."""

    def __call__(self, *args, **kwargs):
        from ..api import search

        return search(*args, **kwargs)

    @property
    def __signature__(self):  # inspect.signature / help() show the API function's
        import inspect

        from ..api import search

        return inspect.signature(search)


sys.modules[__name__].__class__ = _CallablePackage
