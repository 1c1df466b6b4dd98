"""Token Merging as a baseline, written for vitedge from the paper's description.

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman: "Token Merging: Your ViT But Faster", ICLR 2023, §3.
What this follows:

- **where**: in every block, after the attention branch's residual add and before the MLP branch, ``r``
  tokens are removed by merging them into others (§3 "Strategy"); ``r`` is the same in every block (the
  paper's constant schedule);
- **similarity**: the attention keys, averaged over heads, compared by cosine similarity (§3 "Token
  Similarity");
- **bipartite soft matching** (§3): the tokens are split into two alternating sets A and B; each A token
  draws one edge to its most similar B token; the ``r`` edges of highest similarity are kept and their A
  tokens are merged into their B partners (several A tokens may land on one B token); the rest of A and
  all of B are concatenated back;
- **size-weighted merge** (§3 "Tracking Token Size"): every token carries a size ``s`` (1 after the patch
  embedding, the number of patches it stands for after merging); a merge is the s-weighted average of the
  features and the sum of the sizes, so sum_i s_i x_i is unchanged by merging;
- **proportional attention** (§3, eq. (1)): ``softmax(Q K^T / sqrt(d) + log s)``, ``log s`` added to the
  logits of every key column, here through ``scaled_dot_product_attention``'s additive mask.

Where it differs or chooses: every prefix token (class, and distillation or register tokens where the
model has them) is left out of the matching, so it is never merged and keeps size 1 (the paper protects
the class token); A is the odd positions and B the even positions of the patch tokens, so at most
``t // 2`` of ``t`` patch tokens merge in a block; the surviving tokens come out as prefix, unmerged A
(most similar first), then B, an order no later layer depends on (positions were added at the
embedding, the head reads the class token or pools). The matching sorts by similarity (argsort), hence
PyTorch eager only: it cannot be exported with vitedge's sort-free gather.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class MergePlan(NamedTuple):
    """Which A tokens merge into which B tokens, indices local to A (odd patch positions) and B (even ones).

    src: (B, r) A tokens that merge; dst: (B, r) the B token each one merges into;
    keep: (B, |A| - r) A tokens that stay.
    """

    src: torch.Tensor
    dst: torch.Tensor
    keep: torch.Tensor


def split_ab(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, C) -> prefix (B, p, C), A (B, (N-p) // 2, C) odd patch positions, B (B, ceil((N-p) / 2), C) even ones."""
    patches = x[:, num_prefix:]
    return x[:, :num_prefix], patches[:, 1::2], patches[:, 0::2]


def match(keys: torch.Tensor, r: int, num_prefix: int) -> MergePlan:
    """Bipartite soft matching on (B, N, C) keys (already averaged over heads): each A token's most similar
    B token by cosine similarity, then the ``r`` A tokens with the most similar partners merge.
    ``r`` is capped at |A|."""
    _, a, b = split_ab(keys, num_prefix)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    best, partner = (a @ b.transpose(1, 2)).max(dim=-1)          # (B, |A|): one edge per A token
    order = best.argsort(dim=-1, descending=True)
    r = min(r, a.shape[1])
    src = order[:, :r]
    return MergePlan(src=src, dst=partner.gather(1, src), keep=order[:, r:])


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, k) of ``t`` (B, n, C) -> (B, k, C)."""
    return t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))


def merge(x: torch.Tensor, size: torch.Tensor, plan: MergePlan, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge of (B, N, C) tokens with (B, N, 1) sizes along ``plan``:
    -> (B, N - r, C) tokens and (B, N - r, 1) sizes. Prefix tokens pass through unchanged."""
    x_pre, x_a, x_b = split_ab(x, num_prefix)
    s_pre, s_a, s_b = split_ab(size, num_prefix)
    dst = plan.dst.unsqueeze(-1)                                   # (B, r, 1)
    w_b = (x_b * s_b).scatter_add(1, dst.expand(-1, -1, x.shape[-1]), _take(x_a * s_a, plan.src))  # size-weighted sums
    s_b = s_b.scatter_add(1, dst, _take(s_a, plan.src))
    x_out = torch.cat([x_pre, _take(x_a, plan.keep), w_b / s_b], dim=1)
    return x_out, torch.cat([s_pre, _take(s_a, plan.keep), s_b], dim=1)


def attend(attn, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ``Attention`` module's computation on (B, N, C) tokens, with proportional attention when
    ``size`` (B, N, 1) is given (``log size`` added to each key's logit). Returns the branch output
    (B, N, C) and the keys averaged over heads (B, N, head_dim) for the matching."""
    B, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log().transpose(1, 2).unsqueeze(1).to(q.dtype)  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = getattr(attn, "norm", torch.nn.Identity())(out)
    gate = getattr(attn, "gate", None)
    if gate is not None:  # timm's optional output gate, computed from the block input
        out = out * gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def merging_block(blk, x: torch.Tensor, size: torch.Tensor | None, r: int, num_prefix: int,
                  prop_attn: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One timm ``Block`` with ``r`` tokens merged between attention and MLP: (B, N, C), sizes (B, N, 1) or
    None (all 1) -> (B, N - r, C), sizes. With r = 0 it is the block's own computation."""
    a, keys = attend(blk.attn, blk.norm1(x), size if prop_attn else None)
    x = x + blk.drop_path1(blk.ls1(a))
    if r > 0:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        x, size = merge(x, size, match(keys, r, num_prefix), num_prefix)
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))), size


def tome_forward(model, x: torch.Tensor, r: int, prop_attn: bool = True) -> tuple[torch.Tensor, list[int]]:
    """ToMe on a :class:`~vitedge.models.adapter.PrunableViT`'s timm blocks, ``r`` merged per block:
    (B, 3, H, W) -> (logits (B, classes), patch tokens leaving each block)."""
    tokens, size, kept = model.embed(x), None, []
    for blk in model.vit.blocks:
        tokens, size = merging_block(blk, tokens, size, r, model.num_prefix, prop_attn)
        kept.append(int(tokens.shape[1] - model.num_prefix))
    return model.head(tokens), kept


def evaluate_tome(model, images, r: int, prop_attn: bool = True, batch_size: int = 100) -> tuple[np.ndarray, list[int]]:
    """Top-1 of every image of an ``ImageSet`` (D,) and the patch tokens leaving each block (the same for all)."""
    preds, kept = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits, kept = tome_forward(model, torch.from_numpy(images.images[start:start + batch_size]), r, prop_attn)
            preds.append(logits.argmax(-1).numpy())
    return np.concatenate(preds), kept


def tome_max_r(num_patches: int, depth: int) -> int:
    """Largest constant r that every block can merge: block l sees t_l = P - l r patch tokens and merges at
    most t_l // 2, the last block binding: r <= (P - (L - 1) r) // 2, i.e. r <= P // (L + 1)."""
    return num_patches // (depth + 1)
