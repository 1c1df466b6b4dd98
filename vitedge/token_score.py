"""The names of the token scores (``--token-score``) and the rule for files that predate them, without torch.

The scores themselves are computed in :data:`vitedge.models.pruning.TOKEN_SCORES`.
"""
from __future__ import annotations

#: significance averaged over the blocks since the previous selector | CLS attention x value norm (after ATS) |
#: RCTP's and POMT's CLS attention
NAMES = ("cumulative-significance", "significance", "cls-attention")
DEFAULT = "significance"                   # measured to keep more accuracy (benchmarks/results/token_score.md)
LEGACY = "cls-attention"                   # what a calibration or schedule without ``meta["token_score"]`` used


def recorded(meta: dict) -> str:
    """The token score a calibration's or schedule's ``meta`` records (files without one: :data:`LEGACY`)."""
    return meta.get("token_score") or LEGACY
