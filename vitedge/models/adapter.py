"""Make any timm ``VisionTransformer`` prunable without editing timm.

The model's ``Block`` and ``Attention`` instances get subclasses of their own classes (as ToMe does),
whose forwards call timm's submodules (``norm1``, ``attn.qkv``, ``q_norm``, ``ls1``, ``drop_path1``,
``mlp`` …) and compute attention explicitly, so the CLS row of the attention can be read. With no
pruning site the block runs timm's own forward. :class:`PrunableViT` runs the timm model's own
embedding, ``norm`` and ``forward_head``; only the loop over blocks is ours.

Pruning sits between MSA and MLP of a block (RCTP §III-B): after the attention residual, the patch
tokens whose CLS-attention score is below the block's threshold θ_l are dropped.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from ..schedule import capacity_selectors
from .pruning import (ACCUMULATED, TOKEN_SCORES, capacity_gather_matrix, capacity_select, package_key_bias, package_merge,
                      threshold_select, window_mean)


class UnsupportedModelError(ValueError):
    """The model is not a timm VisionTransformer with a class token and standard blocks."""


class PrunableAttention(Attention):
    """timm ``Attention`` that also returns a score per patch token (``token_score``, a key of
    :data:`~vitedge.models.pruning.TOKEN_SCORES`; set by :attr:`PrunableViT.token_score`)."""

    token_score: str = "cls-attention"

    def forward_with_scores(self, x: torch.Tensor, num_prefix: int, key_bias: torch.Tensor | None = None,
                            queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit attention (same math as timm's non-fused path).

        Args:
            x: (B, N, C) normalised tokens.
            num_prefix: p, prefix tokens (CLS is token 0).
            key_bias: optional (B, 1, 1, N) added to the attention logits: -inf for a key that is
                padding, not a token (batched evaluation of pruned models, :mod:`vitedge.quality`);
                a padded query's output is garbage and must stay unused.
            queries: q, compute the output of the first q tokens only (q >= 1, every token a key;
                None: all N). The last block of a class-token model needs its prefix tokens only.

        Returns:
            out: (B, q, C) the MSA output (after ``proj``/``proj_drop``), q = N when ``queries`` is None.
            scores: (B, N - p) score per patch token (:attr:`token_score`: the CLS attention, mean over heads, or
                the ATS significance score).
        """
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if queries is not None:
            q, N = q[:, :, :queries], queries
            gate = gate[:, :queries] if gate is not None else None
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if key_bias is not None:
            attn = attn + key_bias
        attn = attn.softmax(dim=-1)
        scores = TOKEN_SCORES[self.token_score](attn, v, num_prefix)
        out = self.attn_drop(attn) @ v
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out)), scores


class PrunableBlock(Block):
    """timm ``Block`` split into the parts that are pruned and profiled separately.

    ``num_prefix`` is set once when the model is adapted.
    """

    num_prefix: int = 1
    min_keep: int = 0  # patch tokens a selector always keeps (1 when the head pools patch tokens)

    def attention_part(self, x: torch.Tensor, fisher_mask: torch.Tensor | None = None,
                       key_bias: torch.Tensor | None = None, queries: int | None = None,
                       num_prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MSA with residual: (B, N, C) -> (B, N, C), plus (B, N - p') scores of the patch tokens.

        ``fisher_mask`` (B, N, 1) of ones, when given, multiplies the MSA output (RCTP eq. (4)).
        ``key_bias`` (B, 1, 1, N), ``queries`` q (output (B, q, C): the first q tokens only): see
        :meth:`PrunableAttention.forward_with_scores`. ``num_prefix`` p' (default :attr:`num_prefix`): the
        tokens before the patch tokens, the package token included once there is one (it is never scored).
        """
        p = self.num_prefix if num_prefix is None else num_prefix
        a, scores = self.attn.forward_with_scores(self.norm1(x), p, key_bias, queries)
        if fisher_mask is not None:
            a = a * fisher_mask
        return (x if queries is None else x[:, :queries]) + self.drop_path1(self.ls1(a)), scores

    def mlp_part(self, x: torch.Tensor) -> torch.Tensor:
        """MLP with residual: (B, n, C) -> (B, n, C)."""
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def select(self, x: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        """Threshold selector: (1, N, C), (1, N - p) -> (1, p + K, C); the same ops as the deployed forward's
        (:func:`~.pruning.threshold_select` on the patch tokens), so the latency table times what is deployed."""
        kept, _ = threshold_select(x[:, self.num_prefix:], scores, threshold, keep_best=bool(self.min_keep))
        return torch.cat([x[:, :self.num_prefix], kept], dim=1)

    def select_capacity(self, x: torch.Tensor, scores: torch.Tensor, capacity: int) -> torch.Tensor:
        """Capacity selector (static shapes, any batch): (B, N, C), (B, N - p) -> (B, p + K, C)."""
        return capacity_select(x, scores, capacity, self.num_prefix)


@dataclass
class ForwardOutput:
    """Result of :meth:`PrunableViT.forward_with_info`.

    Attributes:
        logits: (B, classes).
        scores: per block, (B, P_l) scores of the block's input patch tokens, the ones its selector would use
            (:attr:`PrunableViT.token_score`; only when requested or needed for pruning, else None).
        kept: per block, number of patch tokens leaving the block (after its selector), as a
            0-d int64 tensor (exported as a ReduceSum over ones; works in torch.onnx and torch.export).
    """

    logits: torch.Tensor
    scores: list = field(default_factory=list)
    kept: list = field(default_factory=list)


def _check_supported(model: nn.Module) -> None:
    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"{name} is not a timm VisionTransformer: vitedge prunes ViT/DeiT models (e.g. vit_small_patch16_224, deit_tiny_patch16_224)")
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"{name} has no class token: CLS-attention pruning needs one; use a ViT/DeiT with class_token=True")
    for i, blk in enumerate(model.blocks):
        if type(blk) not in (Block, PrunableBlock) or type(blk.attn) not in (Attention, PrunableAttention):
            raise UnsupportedModelError(
                f"block {i} is a {type(blk).__name__} with {type(blk.attn).__name__}: only timm's standard Block/Attention are supported")
    if getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(f"{name} uses dynamic_img_size: export needs a fixed input size; create it without that option")


class PrunableViT(nn.Module):
    """A timm ViT whose blocks can prune patch tokens by threshold.

    Args:
        vit: a timm ``VisionTransformer`` (``vit_*``, ``deit_*`` incl. distilled, LayerScale, qk-norm).
            Its blocks' classes are swapped for :class:`PrunableBlock`/:class:`PrunableAttention`
            in place; parameters are shared, nothing is copied.

    Raises:
        UnsupportedModelError: Swin, ConvNeXt, a ViT without class token, or non-standard blocks.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        _check_supported(vit)
        self.vit = vit.eval()
        self.num_prefix = int(vit.num_prefix_tokens)
        for blk in vit.blocks:
            blk.__class__ = PrunableBlock
            blk.attn.__class__ = PrunableAttention
            blk.num_prefix = self.num_prefix
        # a head that pools patch tokens (avg, attention pool) needs at least one of them
        token_head = vit.global_pool == "token" and getattr(vit, "attn_pool", None) is None
        self.min_patch_tokens = 0 if token_head else 1
        for blk in vit.blocks:
            blk.min_keep = self.min_patch_tokens
        self.thresholds: list[float | None] = [None] * len(vit.blocks)
        self.capacities: list[int | None] = [None] * len(vit.blocks)
        self.package_token = False  # merge the pruned tokens into one sized token (pruning.package_merge); vitedge turns it on
        self.token_score = "cls-attention"

    @property
    def token_score(self) -> str:
        """How the selectors score patch tokens: "cls-attention" (RCTP §III-A), "significance" (ATS token scoring)
        or "cumulative-significance" (significance averaged over the blocks since the previous selector,
        :func:`~vitedge.models.pruning.window_mean`).

        Raises ValueError (on set) for another name."""
        return self.vit.blocks[0].attn.token_score

    @token_score.setter
    def token_score(self, name: str) -> None:
        if name not in TOKEN_SCORES:
            raise ValueError(f"unknown token score {name!r}: use one of {', '.join(TOKEN_SCORES)}")
        for blk in self.vit.blocks:
            blk.attn.token_score = name

    # -- shape facts used by tables, calibration and export ------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def num_heads(self) -> int:
        return int(self.vit.blocks[0].attn.num_heads)

    @property
    def num_patches(self) -> int:
        return int(self.vit.patch_embed.num_patches)

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix

    @property
    def mlp_ratio(self) -> float:
        return self.vit.blocks[0].mlp.fc1.out_features / self.dim

    @property
    def input_size(self) -> tuple[int, int, int]:
        img = self.vit.patch_embed.img_size
        return (int(self.vit.patch_embed.proj.in_channels), int(img[0]), int(img[1]))

    def set_thresholds(self, thresholds) -> None:
        """Set θ_l per block; ``None`` (or -inf) means no selector in that block.

        A finite threshold at or below 0 keeps every token but still runs the selector (used to
        measure the selector's overhead). Raises ValueError on a wrong length or NaN.
        """
        values = list(thresholds)
        if len(values) != self.depth:
            raise ValueError(f"expected {self.depth} thresholds (one per block), got {len(values)}")
        out = []
        for t in values:
            if isinstance(t, torch.Tensor) and t.numel() == 1:
                t = t.item()
            if t is None:
                out.append(None)
            elif isinstance(t, numbers.Real) and not isinstance(t, bool) and not math.isnan(t):
                out.append(None if math.isinf(t) and t < 0 else float(t))
            else:
                raise ValueError(f"threshold {t!r} is not a number")
        self.thresholds = out
        self.capacities = [None] * self.depth

    def set_capacities(self, capacities) -> None:
        """Set K_l per block (patch tokens kept by the capacity selector); ``None`` = no selector.

        A block whose K_l is at least the patch tokens it receives (K_l = P, or K_l equal to the
        previous block's) prunes nothing: its selector is compiled out (identity, no cost;
        :func:`~vitedge.schedule.capacity_selectors`).

        Clears the thresholds. Raises ValueError on a wrong length or K outside 0..P.
        """
        values = list(capacities)
        if len(values) != self.depth:
            raise ValueError(f"expected {self.depth} capacities (one per block), got {len(values)}")
        out = []
        for k in values:
            if k is None:
                out.append(None)
            elif isinstance(k, numbers.Integral) and not isinstance(k, bool) and self.min_patch_tokens <= k <= self.num_patches:
                out.append(int(k))
            else:
                raise ValueError(f"capacity {k!r} outside {self.min_patch_tokens}..{self.num_patches} patch tokens")
        self.thresholds = [None] * self.depth
        self.capacities = out

    @contextmanager
    def pruning(self, schedule=None, *, thresholds=None, capacities=None, package_token: bool | None = None,
                token_score: str | None = None):
        """Prune as configured inside a ``with`` block; restore the previous configuration on exit.

        ``with model.pruning(schedule): ...`` applies a :class:`~vitedge.schedule.Schedule`;
        ``pruning(thresholds=...)`` or ``pruning(capacities=...)`` sets θ_l or K_l per block; with none of
        them nothing is pruned. ``package_token`` and ``token_score`` (None: unchanged, or the schedule's) set the
        SPViT package token and the token score. On exit, also on error, the previous thresholds, capacities,
        package token and token score are restored exactly.

        Raises:
            ValueError: as :meth:`set_thresholds` / :meth:`set_capacities`, or an unknown token score (the
                configuration is unchanged).
        """
        saved = (list(self.thresholds), list(self.capacities), self.package_token, self.token_score)
        try:
            if schedule is not None:
                schedule.apply(self)
            elif capacities is not None:
                self.set_capacities(capacities)
            else:
                self.set_thresholds(thresholds if thresholds is not None else [None] * self.depth)
            if package_token is not None:
                self.package_token = bool(package_token)
            if token_score is not None:
                self.token_score = token_score
            yield self
        finally:
            self.thresholds, self.capacities, self.package_token, self.token_score = saved

    # -- forward ---------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + prefix tokens + position embedding: (B, 3, H, W) -> (B, N, C)."""
        v = self.vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + timm's ``forward_head``: (B, n, C) -> (B, classes)."""
        return self.vit.forward_head(self.vit.norm(x))

    def forward_with_info(self, x: torch.Tensor, *, want_scores: bool = False,
                          fisher_masks: list | None = None) -> ForwardOutput:
        """Forward pass with pruning per :attr:`thresholds` (or :attr:`capacities`), returning scores and kept counts.

        With :attr:`package_token`, the first selector that runs appends the package token after the prefix tokens
        (column p), every selector merges the tokens it prunes into it (:func:`~.pruning.package_merge`), and every
        later block adds log of its size to its attention logits (:func:`~.pruning.package_key_bias`); it is never
        scored or pruned, and it counts as a kept token.

        Args:
            x: (B, 3, H, W) images; B must be 1 when any block has a threshold.
            want_scores: also compute CLS scores in blocks without a selector.
            fisher_masks: per block a (B, N, 1) mask multiplied into the MSA output (RCTP eq. (4));
                only without pruning.
        """
        tokens = self.embed(x)
        out = ForwardOutput(logits=tokens)
        p, P = self.num_prefix, self.num_patches
        static = True  # token counts are static until a threshold selector runs
        # K >= tokens present: the selector is the identity, compiled out (no cost)
        runs = capacity_selectors(self.capacities, P)
        selects = [t is not None or (k is not None and r) for t, k, r in zip(self.thresholds, self.capacities, runs)]
        # an accumulated score sums every block's score from the previous selector to the next one (window_mean)
        window = self.token_score in ACCUMULATED
        history = None
        packed, size = False, 0  # a package token at column p (once a selector ran) and the patch tokens it stands for
        bias = None  # its attention bias (package_key_bias), made once per selector: no token count changes in between
        for i, blk in enumerate(self.vit.blocks):
            theta, cap = self.thresholds[i], (self.capacities[i] if runs[i] else None)
            mask = fisher_masks[i] if fisher_masks is not None else None
            q = p + packed  # tokens before the patch tokens
            if theta is None and cap is None and mask is None and not want_scores and not (window and any(selects[i:])):
                tokens, scores = (Block.forward(blk, tokens) if bias is None else Block.forward(blk, tokens, attn_mask=bias)), None
            else:
                tokens, scores = blk.attention_part(tokens, mask, key_bias=bias, num_prefix=q)
                if window:
                    history, scores = window_mean(history, scores)
                    if selects[i]:
                        history = None  # the next window starts on the kept tokens
                if theta is not None or cap is not None:
                    patches = tokens[:, q:]
                    if theta is not None:
                        kept, keep = threshold_select(patches, scores, theta, keep_best=bool(blk.min_keep))
                        static = False
                    else:  # never more than present
                        gather = capacity_gather_matrix(scores, min(cap, patches.shape[1]))
                        kept, keep = gather @ patches, gather.sum(dim=-2)
                    if self.package_token:
                        # sizes: static ints while the shapes are, else (1, 1, 1) counts from the keep mask
                        keep = keep.to(patches.dtype)
                        new_size = P - (kept.shape[1] if static else keep.sum(dim=-1, keepdim=True).unsqueeze(-1))
                        package = package_merge(tokens[:, p:q] if packed else None, size, patches, 1.0 - keep, new_size)
                        packed, size = True, new_size
                        tokens = torch.cat([tokens[:, :p], package, kept], dim=1)
                        bias = package_key_bias(tokens, p, size)
                    else:
                        tokens = torch.cat([tokens[:, :p], kept], dim=1)
                tokens = blk.mlp_part(tokens)
            out.scores.append(scores)
            if static:  # a constant in the exported graph (no op)
                out.kept.append(torch.tensor(tokens.shape[1] - p, dtype=torch.int64))
            else:
                out.kept.append(torch.ones_like(tokens[0, :, 0], dtype=torch.int64).sum() - p)
        out.logits = self.head(tokens)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, classes) logits, pruning per :attr:`thresholds`."""
        return self.forward_with_info(x).logits
