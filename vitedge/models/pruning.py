"""Sort-free token-pruning ops. Small pure functions, traced as-is into ONNX.

Shapes: B batch, H heads, N tokens (prefix + patch), p prefix tokens (CLS, distillation,
registers; never pruned), P = N - p patch tokens, C channels.
"""
from __future__ import annotations

import torch


def cls_attention_scores(attn: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """CLS-attention score of each patch token, averaged over heads (RCTP §III-A).

    Args:
        attn: (B, H, N, N) softmax attention probabilities.
        num_prefix: p, the number of prefix tokens; the CLS token is token 0.

    Returns:
        (B, P) attention of the CLS query to each patch key, mean over heads.
    """
    return attn[:, :, 0, num_prefix:].mean(dim=1)


def threshold_keep_indices(scores: torch.Tensor, threshold: float | torch.Tensor, num_prefix: int,
                           keep_best: bool = False) -> torch.Tensor:
    """Indices (into all N tokens) of the tokens kept by ``score >= threshold``; prefix tokens always kept.

    Exported as GreaterOrEqual + Concat + NonZero: no TopK, no sort. Batch 1 only, because the
    number of kept tokens depends on the image.

    Args:
        scores: (1, P) CLS-attention scores of the patch tokens.
        threshold: scalar threshold θ_l of the block (RCTP's LTP-style threshold pruning).
        num_prefix: p.
        keep_best: also keep the best-scoring patch token when every score is below the threshold
            (θ is lowered to max(scores); ReduceMax, still sort-free). For heads that pool patch tokens.

    Returns:
        (p + K,) int64 indices in increasing order (token order is preserved).

    Raises:
        ValueError: batch size is not 1.
    """
    if scores.shape[0] != 1:
        raise ValueError(f"threshold pruning runs at batch 1 (kept-token counts differ per image); got batch {scores.shape[0]}")
    if keep_best and scores.shape[-1] > 0:
        threshold = torch.minimum(torch.as_tensor(threshold, dtype=scores.dtype), scores[0].max())
    keep = scores[0] >= threshold
    # the prefix mask is built with a concat of ones, not a symbolic arange (export-friendly)
    keep = torch.cat([torch.ones(num_prefix, dtype=torch.bool, device=scores.device), keep])
    return torch.nonzero(keep).squeeze(1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keep the tokens at ``index``: (B, N, C), (K,) -> (B, K, C). Exported as a single Gather."""
    return x.index_select(1, index)


def rank_by_counting(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each patch token without any sort: rank_j = #{i : s_i > s_j} + #{i < j : s_i = s_j}.

    Ties are broken by token index, so ranks are a permutation of 0..P-1.

    Args:
        scores: (B, P) scores.

    Returns:
        (B, P) int64 ranks (0 = highest score). O(P^2) compares; exported as Greater/Equal/ReduceSum.
    """
    P = scores.shape[-1]
    s_i, s_j = scores.unsqueeze(-1), scores.unsqueeze(-2)  # [b, i, j]: does token i beat token j?
    earlier = torch.ones(P, P, dtype=torch.bool, device=scores.device).triu(1)
    beats = (s_i > s_j) | ((s_i == s_j) & earlier)
    return beats.sum(dim=-2)


def capacity_gather_matrix(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """One-hot gather matrix that keeps the ``capacity`` best patch tokens in token order.

    keep_j = rank_j < K; the kept tokens' output slots are CumSum(keep) - 1; G[b, k, j] = 1 when
    kept token j goes to slot k. Static shapes, MatMul-only gather (no TopK, no scatter).

    Args:
        scores: (B, P) scores.
        capacity: K, 0 <= K <= P.

    Returns:
        (B, K, P) float matrix, each row one-hot.

    Raises:
        ValueError: K outside [0, P].
    """
    P = scores.shape[-1]
    if not 0 <= capacity <= P:
        raise ValueError(f"capacity {capacity} outside 0..{P} patch tokens: pick a capacity within the token count")
    keep = rank_by_counting(scores) < capacity                      # (B, P)
    slot = torch.cumsum(keep.to(torch.int64), dim=-1) - 1           # (B, P)
    slots = torch.ones(capacity, dtype=torch.int64, device=scores.device).cumsum(0) - 1  # 0..K-1, a constant
    hit = (slot.unsqueeze(-2) == slots.view(1, -1, 1)) & keep.unsqueeze(-2)             # (B, K, P)
    return hit.to(scores.dtype)


def capacity_select(x: torch.Tensor, scores: torch.Tensor, capacity: int, num_prefix: int) -> torch.Tensor:
    """Keep the prefix tokens and the ``capacity`` best patch tokens: (B, N, C) -> (B, p + K, C)."""
    gather = capacity_gather_matrix(scores, capacity)
    return torch.cat([x[:, :num_prefix], gather @ x[:, num_prefix:]], dim=1)
