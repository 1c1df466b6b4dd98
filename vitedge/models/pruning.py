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


def threshold_keep_indices(scores: torch.Tensor, threshold: float | torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Indices (into all N tokens) of the tokens kept by ``score >= threshold``; prefix tokens always kept.

    Exported as GreaterOrEqual + Concat + NonZero: no TopK, no sort. Batch 1 only, because the
    number of kept tokens depends on the image.

    Args:
        scores: (1, P) CLS-attention scores of the patch tokens.
        threshold: scalar threshold θ_l of the block (RCTP's LTP-style threshold pruning).
        num_prefix: p.

    Returns:
        (p + K,) int64 indices in increasing order (token order is preserved).

    Raises:
        ValueError: batch size is not 1.
    """
    if scores.shape[0] != 1:
        raise ValueError(f"threshold pruning runs at batch 1 (kept-token counts differ per image); got batch {scores.shape[0]}")
    keep = scores[0] >= threshold
    # the prefix mask is built with a concat of ones, not a symbolic arange (export-friendly)
    keep = torch.cat([torch.ones(num_prefix, dtype=torch.bool, device=scores.device), keep])
    return torch.nonzero(keep).squeeze(1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Keep the tokens at ``index``: (B, N, C), (K,) -> (B, K, C). Exported as a single Gather."""
    return x.index_select(1, index)
