"""Capacity-mode loss table: the Fisher information of the tokens outside each image's top K.

Capacity mode keeps exactly K_l patch tokens per block (static shapes). The loss of candidate K at
block l is the (normalised) Fisher information of the tokens ranked K+1.. by CLS attention, summed
over the calibration images -- the capacity analogue of RCTP §III-B stage 3. NumPy, calibration time.
"""
from __future__ import annotations

import numpy as np


def capacity_loss_table(scores: np.ndarray, fisher: np.ndarray, capacities) -> np.ndarray:
    """f[l, m] = sum_d sum_{j not in top-K_m of image d} Î[l, d, j].

    Args:
        scores: (L, D, P) CLS-attention scores (ties broken by token index, as the exported
            selector does).
        fisher: (L, D, P) normalised Fisher information.
        capacities: (M,) ints in 0..P, the candidate K per block.

    Returns:
        (L, M) float64.

    Raises:
        ValueError: shapes disagree or a capacity is outside 0..P.
    """
    scores, fisher = np.asarray(scores), np.asarray(fisher, np.float64)
    caps = np.asarray(capacities, np.int64)
    if scores.ndim != 3 or fisher.shape != scores.shape:
        raise ValueError(f"scores {scores.shape} and fisher {fisher.shape} must both be (L, D, P)")
    P = scores.shape[2]
    if caps.ndim != 1 or caps.min(initial=0) < 0 or caps.max(initial=0) > P:
        raise ValueError(f"capacities must be a 1-D list of ints in 0..{P}")
    order = np.argsort(-scores, axis=2, kind="stable")             # best first; ties: lower index first
    fi = np.take_along_axis(fisher, order, axis=2)
    kept_fi = np.concatenate([np.zeros(fi.shape[:2] + (1,)), np.cumsum(fi, axis=2)], axis=2)  # (L, D, P+1)
    pruned = kept_fi[..., -1:] - kept_fi[..., caps]                 # (L, D, M)
    return np.maximum(pruned, 0.0).sum(axis=1)
