"""RCTP calibration stages 2 and 3 (§III-B): candidate threshold table and FLOPs-Fisher table.

Pure NumPy (no torch). Inputs come from stage 1, for L blocks, D calibration images and P patch
tokens per image (N = P + p tokens in total; p prefix tokens -- 1 for CLS, 2 for distilled DeiT --
are never pruned and never counted as kept/pruned here):

* ``scores`` (L, D, P): CLS-attention score of each patch token in each block, unpruned model.
* ``fisher`` (L, D, P): per-token Fisher information (dL_d/dm_j)^2, eq. (4) before averaging.

Pruning rule everywhere: a patch token is KEPT in block l iff ``score >= threshold`` (pruned iff
``score < threshold``). Thresholds are float64; a threshold of ``-inf`` keeps every token.
FLOPs are counted as in the paper, eq. (5): multiply-accumulates of one transformer block.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "block_flops", "tokens_for_flops", "normalise_fisher", "candidate_thresholds",
    "kept_counts", "fisher_loss_table", "flops_reduction",
]


def block_flops(n, dim):
    """FLOPs of one transformer block with ``n`` tokens of width ``dim``: RCTP eq. (5).

    ``phi(n, d) = 12 n d^2 + 2 n^2 d`` (multiply-accumulates, as the paper counts them).
    ``n`` may be a float (mean token count) or an array; returns a float, or a float64 array
    of ``n``'s shape.
    """
    d = float(dim)
    n = np.asarray(n, dtype=np.float64)
    out = 12.0 * n * d * d + 2.0 * n * n * d
    return float(out) if out.ndim == 0 else out


def tokens_for_flops(flops, dim):
    """Inverse of :func:`block_flops`: the token count ``n >= 0`` with ``phi(n, dim) = flops``.

    Positive root of ``2 d n^2 + 12 d^2 n - flops = 0`` (used to solve eq. (6)), written as
    ``c / (3d + sqrt(9d^2 + c))`` with ``c = flops / (2d)`` to avoid cancellation. ``flops``
    (FLOPs, >= 0) may be a float or an array; returns a float or a float64 array (tokens).
    """
    d = float(dim)
    c = np.asarray(flops, dtype=np.float64) / (2.0 * d)
    out = c / (3.0 * d + np.sqrt(9.0 * d * d + c))
    return float(out) if out.ndim == 0 else out


def normalise_fisher(fisher, mode="block") -> np.ndarray:
    """Normalise stage-1 per-token Fisher information; returns float64 (L, D, P).

    * ``"block"`` (RCTP §III-B, default): divide each block's values by the block's total over
      (D, P), so every block sums to 1 and a FLOPs-Fisher entry is the *fraction* of that
      block's FI removed. The paper needs this because FI decays exponentially with depth.
      A block whose total is 0 stays all-zero (no division by zero).
    * ``"raw"`` (the paper's ablation, Fig. 4): divide by D only -- eq. (4)'s mean over images.

    Raises:
        ValueError: unknown ``mode``; ``fisher`` not 3-D, not finite, or negative (FI is a mean
            of squares).
    """
    if mode not in ("block", "raw"):
        raise ValueError(f"unknown Fisher normalisation mode {mode!r}; use 'block' or 'raw'")
    f = np.asarray(fisher, dtype=np.float64)
    if f.ndim != 3:
        raise ValueError(f"fisher must have shape (L, D, P), got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("fisher contains NaN or inf; check stage 1 (loss or gradients diverged)")
    if (f < 0).any():
        raise ValueError("fisher contains negative values; Fisher information is a mean of squares")
    if mode == "raw":
        return f / max(f.shape[1], 1)
    total = f.sum(axis=(1, 2))
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    return f * scale[:, None, None]


# --------------------------------------------------------------------------- helpers

def _check_scores(scores) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 3 or 0 in s.shape:
        raise ValueError(f"scores must have shape (L, D, P) with no empty axis, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf; check stage 1 attention capture")
    return s


def _check_thresholds(thresholds, num_layers) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != num_layers:
        raise ValueError(f"thresholds must have shape (L={num_layers}, M), got {t.shape}")
    if np.isnan(t).any():
        raise ValueError("thresholds contain NaN")
    return t


def _sort_pooled(s_l):
    """Pool a block's (D, P) scores: returns (ascending float64 values, argsort order)."""
    flat = np.asarray(s_l, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    return flat[order], order


def _counts_at_least(shape, asc, order, thr) -> np.ndarray:
    """Per-image number of patch tokens with score >= thr[m]; returns int64 (M, D).

    Vectorised with two ``searchsorted`` calls: a token is kept iff its rank in the pooled
    ascending order is >= pos = #{pooled scores < thr} (ties never straddle pos). Each image's
    sorted ranks are shifted by ``d * D*P`` into disjoint ranges, so one searchsorted over the
    concatenation answers all (image, threshold) pairs at once.
    """
    D, P = shape
    dp = D * P
    rank = np.empty(dp, dtype=np.int64)
    rank[order] = np.arange(dp, dtype=np.int64)
    rows = np.sort(rank.reshape(D, P), axis=1)
    base = np.arange(D, dtype=np.int64) * dp
    rows += base[:, None]
    pos = np.searchsorted(asc, thr, side="left")                      # (M,)
    query = pos[None, :] + base[:, None]                              # (D, M)
    below = np.searchsorted(rows.ravel(), query.ravel(), side="left").reshape(D, -1)
    below -= (np.arange(D, dtype=np.int64) * P)[:, None]
    return (P - below).T


def _float32_above(x: float) -> float:
    """Smallest float32-representable value strictly above ``x`` (float64 fallback near overflow)."""
    up = float(np.nextafter(np.float32(x), np.float32(np.inf)))
    return up if np.isfinite(up) and up > x else float(np.nextafter(x, np.inf))


def _thresholds_for_k(asc, k) -> np.ndarray:
    """Threshold keeping the k largest pooled scores: mean of the k-th and (k+1)-th largest.

    k = D*P -> -inf (keep all); k = 0 -> the next float32 above the maximum (prune every patch
    token). The mean is rounded to float32 when that keeps it in (b, a] (a, b the k-th and
    (k+1)-th largest score), else a is used; so thresholds select the same tokens whether the
    runtime compares in float32 or float64.
    """
    dp = asc.size
    k = np.asarray(k, dtype=np.int64)
    if dp > 1:
        mid = np.clip(k, 1, dp - 1)
        a, b = asc[dp - mid], asc[dp - mid - 1]
        out = (0.5 * (a + b)).astype(np.float32).astype(np.float64)
        out = np.where((out > b) & (out <= a), out, a)
    else:  # a single pooled score: only k = 0 or k = 1 are possible, both handled below
        out = np.zeros(k.shape)
    out = np.where(k >= dp, -np.inf, out)
    return np.where(k <= 0, _float32_above(asc[-1]), out)


# --------------------------------------------------------------------------- stage 2

def candidate_thresholds(scores, *, dim, num_prefix, num_candidates=201, correction=True) -> np.ndarray:
    """Stage 2 (RCTP §III-B, eqs. (5)-(6)): candidate threshold table, float64 (L, M).

    Candidate m = 0..M-1 of block l aims at a FLOPs reduction ratio r = m/M of that block.
    Step 1: pool block l's D*P scores and solve eq. (6),
    ``phi(p + k/D, d) = (1 - r) phi(N, d)``, for the mean kept patch count n = p + k/D
    (closed form, :func:`tokens_for_flops`); k = round((n - p) D) clamped to [0, D*P]. The
    threshold is the mean of the k-th and (k+1)-th largest pooled score (k = D*P -> -inf,
    k = 0 -> just above the maximum, pruning every patch token); values are float32-representable
    (mean rounded to float32, see ``_thresholds_for_k``) so float32 runtimes prune identically.

    Step 2 (``correction=True``, the paper's one-step correction): FLOPs are counted per image
    and phi is convex in n, so the achieved ratio r(θ̃) = 1 - mean_d phi(p + k_d(θ̃)) / phi(N)
    (k_d = #{j: s_dj >= θ̃}) falls short of m/M. Step 1 is redone with the ratio
    r + (r - r(θ̃)), clamped into [0, r_max], r_max = 1 - phi(p)/phi(N) (prune all patches).

    m = 0 is exactly -inf (keep every token). Finally ``np.maximum.accumulate`` along m makes
    each row non-decreasing: a safeguard only -- step-1 rows are monotone by construction and
    a monotone row is left unchanged, but the corrected ratio r + (r - r(θ̃)) can dip when
    r(θ̃) jumps (large tie clusters, few images), which would otherwise break monotonicity.

    Args:
        scores: (L, D, P) CLS-attention scores of patch tokens (stage 1).
        dim: embedding dimension d. num_prefix: p (>= 0). num_candidates: M (>= 1).

    Raises:
        ValueError: bad shapes, non-finite scores, M < 1 or p < 0.
    """
    s = _check_scores(scores)
    L, D, P = s.shape
    M, p = int(num_candidates), int(num_prefix)
    if M < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if p < 0:
        raise ValueError(f"num_prefix must be >= 0, got {num_prefix}")
    phi_n = block_flops(P + p, dim)
    r_max = 1.0 - block_flops(p, dim) / phi_n
    ratio = np.arange(M, dtype=np.float64) / M

    def k_for(r):
        n = tokens_for_flops((1.0 - r) * phi_n, dim)
        return np.clip(np.rint((n - p) * D), 0, D * P).astype(np.int64)

    out = np.empty((L, M), dtype=np.float64)
    for l in range(L):
        asc, order = _sort_pooled(s[l])
        thr = _thresholds_for_k(asc, k_for(ratio))
        thr[0] = -np.inf
        if correction:
            kept = _counts_at_least((D, P), asc, order, thr)          # (M, D)
            achieved = 1.0 - block_flops(p + kept, dim).mean(axis=1) / phi_n
            target = np.clip(ratio + (ratio - achieved), 0.0, r_max)
            thr = _thresholds_for_k(asc, k_for(target))
            thr[0] = -np.inf
        out[l] = np.maximum.accumulate(thr)
    return out


def kept_counts(scores, thresholds) -> np.ndarray:
    """Kept patch tokens per candidate and image: uint16 (L, M, D).

    ``kept[l, m, d] = #{j : scores[l, d, j] >= thresholds[l, m]}`` (prefix tokens not counted).
    Vectorised with ``np.searchsorted`` on per-image sorted ranks (one call per block).

    Raises:
        ValueError: bad shapes, non-finite scores, NaN thresholds, or P > 65535.
    """
    s = _check_scores(scores)
    L, D, P = s.shape
    t = _check_thresholds(thresholds, L)
    if P > np.iinfo(np.uint16).max:
        raise ValueError(f"{P} patch tokens do not fit the uint16 kept-count table")
    out = np.empty((L, t.shape[1], D), dtype=np.uint16)
    for l in range(L):
        asc, order = _sort_pooled(s[l])
        out[l] = _counts_at_least((D, P), asc, order, t[l])
    return out


# --------------------------------------------------------------------------- stage 3

def fisher_loss_table(scores, fisher_normalised, thresholds) -> np.ndarray:
    """Stage 3 (RCTP §III-B): FLOPs-Fisher table, float64 (L, M).

    ``f[l, m] = sum over (d, j) with scores[l, d, j] < thresholds[l, m] of fisher_normalised[l, d, j]``
    -- the (normalised) FI lost by candidate m; f[l, m] is non-decreasing in m for
    non-decreasing thresholds, and 0 for a -inf threshold. Computed by sorting each block's
    pooled scores once, a cumulative sum of FI in that order, and ``searchsorted``.

    Raises:
        ValueError: shapes of scores / fisher_normalised / thresholds disagree, non-finite input.
    """
    s = _check_scores(scores)
    L = s.shape[0]
    f = np.asarray(fisher_normalised, dtype=np.float64)
    if f.shape != s.shape:
        raise ValueError(f"fisher_normalised shape {f.shape} differs from scores shape {s.shape}")
    if not np.isfinite(f).all():
        raise ValueError("fisher_normalised contains NaN or inf")
    t = _check_thresholds(thresholds, L)
    out = np.empty(t.shape, dtype=np.float64)
    for l in range(L):
        asc, order = _sort_pooled(s[l])
        cum = np.concatenate(([0.0], np.cumsum(f[l].ravel()[order])))
        out[l] = cum[np.searchsorted(asc, t[l], side="left")]
    return out


def flops_reduction(kept, dim, num_prefix, num_patches) -> np.ndarray:
    """Achieved mean FLOPs reduction ratio: ``1 - mean_d phi(p + kept_d, d) / phi(N, d)``.

    ``kept`` (..., D) kept patch counts (e.g. (L, M, D) from :func:`kept_counts`); returns
    float64 of shape ``kept.shape[:-1]`` (e.g. (L, M)), unitless in [0, 1]. FLOPs per eq. (5).
    """
    k = np.asarray(kept, dtype=np.float64)
    p = int(num_prefix)
    phi_n = block_flops(int(num_patches) + p, dim)
    return 1.0 - block_flops(p + k, dim).mean(axis=-1) / phi_n
