"""Sort-free token-pruning ops. Small pure functions, traced as-is into ONNX.

Shapes: B batch, H heads, N tokens (prefix + patch), p prefix tokens (CLS, distillation,
registers; never pruned), P = N - p patch tokens, C channels.
"""
from __future__ import annotations

import functools

import numpy as np
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


def significance_scores(attn: torch.Tensor, v: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Significance score of each patch token after ATS's token scoring (Fayyaz et al., "Adaptive Token Sampler
    for Efficient Vision Transformers", ECCV 2022, §3, arXiv 2111.15667): the CLS attention to a token weighted by
    the norm of its value vector, normalised over the patch tokens. Multi-head form (ours): per head, summed.

    S_j = sum_h A_h[0, j] ||V_h[j]|| / sum_i sum_h A_h[0, i] ||V_h[i]||, j, i patch tokens. A token the CLS
    attends to but whose value is small adds little to the CLS output; this score ranks by that contribution.
    Retraining-free; measured to keep more top-1 than the head-averaged CLS attention at the same kept count
    (``benchmarks/results/token_score.md``). Mul, ReduceSum, Sqrt, Div: no sort, exportable as is.

    Args:
        attn: (B, H, Nq, N) softmax attention probabilities (row 0 is the CLS query).
        v: (B, H, N, d) value vectors.
        num_prefix: p.

    Returns:
        (B, P) non-negative scores summing to 1 over the patch tokens of each image.
    """
    w = (attn[:, :, 0, num_prefix:] * v[:, :, num_prefix:].pow(2).sum(-1).sqrt()).sum(dim=1)
    return w / (w.sum(dim=-1, keepdim=True) + 1e-12)


#: how a selector scores the patch tokens (``--token-score``; the names, torch-free: :data:`vitedge.token_score.NAMES`):
#: name -> (B, H, Nq, N) attn, (B, H, N, d) v, p -> (B, P), the score of one block
TOKEN_SCORES = {
    "cumulative-significance": significance_scores,                       # averaged over blocks: ACCUMULATED
    "significance": significance_scores,                                  # ATS token scoring
    "cls-attention": lambda attn, v, p: cls_attention_scores(attn, p),   # RCTP §III-A, POMT, Top-K
}

#: token scores that a selector averages over the blocks since the previous selector (:func:`window_mean`)
ACCUMULATED = frozenset({"cumulative-significance"})


def window_mean(history: tuple[torch.Tensor, int] | None, scores: torch.Tensor) -> tuple[tuple[torch.Tensor, int], torch.Tensor]:
    """Add one block's scores to the running sum of the blocks since the previous selector (vitedge's).

    A selector at block l with an accumulated score (:data:`ACCUMULATED`) ranks patch tokens by the mean of
    the per-block scores of blocks prev+1..l, prev the previous block with a selector (-1: none), all on the
    same token set (no token leaves between two selectors, so nothing is gathered; after a selector the sum
    starts again). A single block's attention ranks tokens noisily, the early blocks' most; the mean over
    the blocks before a cut ranks them better: single cuts at blocks 1-2 of the digit models keep up to 7 points
    more test top-1, but the measured search's picks no more than with the per-block score (a cut at block 0,
    where the two are one, trades as well), so it is not the default (``benchmarks/results/token_score.md``).
    Add, Div: sort-free.

    Args:
        history: (sum (B, P), blocks) of the blocks so far in this window, or None at its start.
        scores: (B, P) this block's scores.

    Returns:
        ((sum (B, P), blocks) including this block, the window's mean (B, P): a selector's score here).
    """
    if history is None:
        return (scores, 1), scores  # a one-block window: its own score, no Div in the graph
    total, blocks = history[0] + scores, history[1] + 1
    return (total, blocks), total / blocks


def threshold_keep(scores: torch.Tensor, threshold: float | torch.Tensor, keep_best: bool = False) -> torch.Tensor:
    """(B, P) scores -> (B, P) bool, ``score >= threshold`` (GreaterOrEqual); with ``keep_best`` the threshold is
    lowered to each row's best score when every score is below it (ReduceMax, Min)."""
    if keep_best and scores.shape[-1] > 0:
        threshold = torch.minimum(torch.as_tensor(threshold, dtype=scores.dtype), scores.amax(-1, keepdim=True))
    return scores >= threshold


def threshold_select(patches: torch.Tensor, scores: torch.Tensor, threshold: float | torch.Tensor,
                     keep_best: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold selector on the patch tokens: (1, P', C), (1, P') -> the kept tokens (1, K, C) in token order and
    the (1, P') bool keep mask (:func:`threshold_keep`; one GreaterOrEqual, NonZero, Gather).

    Raises:
        ValueError: batch size is not 1.
    """
    _check_batch1(scores)
    keep = threshold_keep(scores, threshold, keep_best)
    return gather_tokens(patches, torch.nonzero(keep[0]).squeeze(1)), keep


def _check_batch1(scores: torch.Tensor) -> None:
    if scores.shape[0] != 1:
        raise ValueError(f"threshold pruning runs at batch 1 (kept-token counts differ per image); got batch {scores.shape[0]}")


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
    _check_batch1(scores)
    keep = threshold_keep(scores, threshold, keep_best)[0]
    # the prefix mask is built with a concat of ones, not a symbolic arange (export-friendly)
    keep = torch.cat([torch.ones(num_prefix, dtype=torch.bool, device=scores.device), keep])
    return torch.nonzero(keep).squeeze(1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keep the tokens at ``index``: (B, N, C), (K,) -> (B, K, C). Exported as a single Gather."""
    return x.index_select(1, index)


def _step(d: torch.Tensor) -> torch.Tensor:
    """1.0 where d > 0 else 0.0, exactly for every real d (ceil maps (-0.5, 0] to 0 and (0, 1] to 1).

    ceil(clamp(d, -0.5, 1)): MINIMUM/MAXIMUM + CEIL, ops XNNPACK runs; no comparison, logical or
    cast op. (A runtime that flushes denormals treats |d| < 1.2e-38 as a tie.)
    """
    return torch.ceil(torch.clamp(d, -0.5, 1.0))


@functools.lru_cache(maxsize=64)
def _upper_ones(n: int, diagonal: int) -> np.ndarray:
    return np.triu(np.ones((n, n), np.float32), diagonal)


def rank_by_counting(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each patch token without any sort: rank_j = #{i : s_i > s_j} + #{i < j : s_i = s_j}.

    Ties are broken by token index, so ranks are a permutation of 0..P-1. Float-only arithmetic
    (see :func:`_step`), O(P^2); a constant (P, P) upper-triangular matrix encodes "i < j".

    Args:
        scores: (B, P) scores (CLS attention), static P.

    Returns:
        (B, P) ranks as integer-valued floats (0 = highest score).
    """
    P = scores.shape[-1]
    d = scores.unsqueeze(-1) - scores.unsqueeze(-2)           # [b, i, j] = s_i - s_j
    gt, lt = _step(d), _step(-d)
    earlier = torch.tensor(_upper_ones(P, 1), dtype=scores.dtype)  # [i, j] = 1 when i < j
    beats = gt + (1.0 - gt - lt) * earlier                    # token i beats token j
    return beats.sum(dim=-2)


def capacity_gather_matrix(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """One-hot gather matrix that keeps the ``capacity`` best patch tokens, best first.

    G[b, k, j] = [rank_j = k] for k < K, i.e. step(0.5 - |rank_j - k|) on integer-valued float
    ranks (:func:`rank_by_counting`). Static shapes, float ops and MatMul only (no TopK, sort,
    scatter, comparison, cast or CumSum op). Tokens leave in score order, not token order: the
    blocks after the embedding are permutation-equivariant and the head reads the prefix tokens
    (or pools), so the logits are the same up to float summation order. Measured (reference model,
    K = P - 1 - l in every block, 1 thread, ``benchmarks/selector_variants.py``): this form costs
    fewer ops than a token-order one (keep mask + cumulative-sum MatMul + slot match) in ONNX
    Runtime and LiteRT, and an index Gather (ORT only; XNNPACK has no GATHER) was not faster.

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
    rank = rank_by_counting(scores).unsqueeze(-2)                                         # (B, 1, P)
    slots = torch.tensor(np.arange(capacity, dtype=np.float32).reshape(capacity, 1), dtype=scores.dtype)  # (K, 1)
    return _step(0.5 - (rank - slots).abs())                                              # (B, K, P)


def capacity_select(x: torch.Tensor, scores: torch.Tensor, capacity: int, num_prefix: int) -> torch.Tensor:
    """Keep the prefix tokens and the ``capacity`` best patch tokens: (B, N, C) -> (B, p + K, C)."""
    return torch.cat([x[:, :num_prefix], capacity_gather_matrix(scores, capacity) @ x[:, num_prefix:]], dim=1)


def package_merge(package: torch.Tensor | None, size: float | torch.Tensor, patches: torch.Tensor,
                  pruned: torch.Tensor, new_size: float | torch.Tensor) -> torch.Tensor:
    """Merge the tokens a selector prunes into the package token: its size-weighted mean (vitedge's).

    The package token (SPViT §3.2, eq. (8): the pruned tokens fused into one token) stands for every patch
    token pruned so far and carries that count as its size s (ToMe §3, "Tracking Token Size"): the new
    package is (s x package + sum of the pruned tokens) / s', s' = s + #pruned, so it is the plain mean of
    the pruned tokens as they left. SPViT weights by a learned keep probability; retraining-free, the pruned
    tokens weigh alike (they are the low scores). Its attention logit gets + log s' in every later block
    (:func:`package_key_bias`), so it draws the attention the pruned tokens drew together. MatMul, Mul,
    Add, Div: sort-free.

    Args:
        package: (B, 1, C) the package token so far, or None before the first selector.
        size: s, the tokens it stands for (0 before the first selector): a number, or a (B, 1, 1) tensor.
        patches: (B, P', C) the patch tokens entering the selector (the package not among them).
        pruned: (B, P') 1.0 for each token the selector prunes, else 0.0.
        new_size: s' = s + pruned.sum(-1), as a number (static shapes) or a (B, 1, 1) tensor.

    Returns:
        (B, 1, C) the package token; zeros when s' = 0 (nothing pruned yet; its bias is then -inf).
    """
    total = pruned.unsqueeze(-2) @ patches
    if package is not None:
        total = total + package * size
    if isinstance(new_size, torch.Tensor):
        return total / torch.clamp(new_size, min=1.0)
    return total / max(float(new_size), 1.0)


def package_key_bias(tokens: torch.Tensor, num_prefix: int, size: float | torch.Tensor) -> torch.Tensor:
    """Proportional attention for the package token (ToMe §3, eq. (1): softmax(q k^T / sqrt(d) + log s)).

    Args:
        tokens: (B, N, C) tokens with the package token at column p (after the prefix tokens).
        num_prefix: p.
        size: s, the patch tokens the package stands for: a number (static shapes: the bias is a constant)
            or a (B, 1, 1) tensor (threshold mode: per image).

    Returns:
        (B or 1, 1, 1, N) additive attention-logit bias: log s on the package's column (-inf when s = 0: the
        package is then no key), 0 elsewhere.
    """
    if not isinstance(size, torch.Tensor):
        row = np.zeros((1, 1, 1, tokens.shape[1]), np.float32)
        row[..., num_prefix] = np.log(size) if size > 0 else -np.inf
        return torch.tensor(row, dtype=tokens.dtype)
    zeros = torch.zeros_like(tokens[..., 0])  # (B, N): built from the tokens, so N may be dynamic
    bias = torch.cat([zeros[:, :num_prefix], torch.log(size.reshape(-1, 1).to(tokens.dtype)), zeros[:, num_prefix + 1:]], dim=1)
    return bias[:, None, None, :]
