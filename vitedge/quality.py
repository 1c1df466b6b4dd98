"""Calibration quality of a pruned model, measured on the pruned model itself, batched.

This is what the schedule search maximises (DESIGN.md, "Objective"): for a schedule, the top-1
agreement with the unpruned model, the mean KL divergence of the logits and, for labelled images,
the accuracy, over the calibration images, with pruning compounding across blocks as deployed.

The deployed threshold model runs at batch 1 with a per-image token count. Here the images run in
batches: after a selector, each image's kept tokens move to the front (token order kept) and the
batch is cut to its largest count; the padding behind an image's tokens is masked out of every later
attention as keys (a -inf logit), so the CLS attention and every kept token see exactly the tokens
the deployed model keeps. Everything else in a block is per token (LayerNorm, MLP), so the logits
equal the batch-1 ones up to float summation order (tested against :func:`vitedge.evaluate.evaluate_pruned`).
The tokens entering every block of the unpruned model are computed once, so a schedule whose first
selector sits at block l only runs blocks l..L-1; states after a schedule's prefix are kept in a
bounded LRU cache, so schedules that share a prefix share its work, and so is block l's attention part on
the unpruned tokens (every schedule whose first selector sits at block l runs it before selecting).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .data.digits import ImageSet
from .models.adapter import PrunableViT
from .models.pruning import rank_by_counting
from .schedule import capacity_selectors


DROP_Z = 1.2816  # one-sided 90 % normal quantile for the drop bound


@dataclass(frozen=True)
class Quality:
    """Measured quality of one schedule on the calibration images (D images, L blocks).

    Attributes:
        agreement: fraction of images whose top-1 equals the unpruned model's.
        kl: mean KL(unpruned || pruned) of the softmax outputs, nats.
        accuracy: top-1 accuracy vs the labels (None for unlabelled images).
        kept: (L, D) int64 patch tokens leaving each block.
        top1: (D,) int64 predictions.
    """

    agreement: float
    kl: float
    accuracy: float | None
    kept: np.ndarray
    top1: np.ndarray


class QualityEvaluator:
    """Batched, cached quality of pruned configurations of ``model`` on ``images``.

    Args:
        model: the prunable ViT (its own pruning configuration is neither read nor changed).
        images: calibration images, (D, 3, H, W) float32; labels (D,) used when present.
        batch_size: images per forward (memory: batch x heads x N^2 attention floats).
        cache_mb: bound of the prefix-state cache (MiB), beyond the unpruned block inputs.

    Raises:
        NotImplementedError: the model carries the package token (SPViT eq. (8)); use the Fisher objective.
    """

    def __init__(self, model: PrunableViT, images: ImageSet, *, batch_size: int = 64, cache_mb: float = 512):
        if model.package_token:
            raise NotImplementedError("the measured objective does not model the package token: use --objective fisher")
        self.model, self.images, self.batch_size = model, images, int(batch_size)
        self.labels = images.labels
        self._cache_bytes = int(cache_mb * 2**20)
        self._states: OrderedDict = OrderedDict()  # prefix -> (chunks, bytes), least recently used first
        self._state_bytes = 0
        self._results: dict = {}
        self.evaluations = 0
        x = torch.from_numpy(images.images)
        with torch.no_grad():
            chunks = [self.model.embed(x[s:s + self.batch_size]) for s in range(0, len(images), self.batch_size)]
            self._inputs = []  # tokens entering block l of the unpruned model, per chunk
            for blk in self.model.vit.blocks:
                self._inputs.append(chunks)
                chunks = [Block.forward(blk, c) for c in chunks]
            logits = torch.cat([self.model.head(c) for c in chunks])
        self._ref_logp = F.log_softmax(logits, dim=-1)
        self.reference_top1 = logits.argmax(-1).numpy()
        self.unpruned_accuracy = None if self.labels is None else float((self.reference_top1 == self.labels).mean())

    def __len__(self) -> int:
        return len(self.images)

    def per_image_drop(self, top1: np.ndarray) -> np.ndarray:
        """(n,) per-image drop of predictions ``top1`` (n,) on the first n calibration images: labelled ->
        [unpruned right] - [right]; else [prediction changed from the unpruned model's]."""
        top1 = np.asarray(top1)
        ref = self.reference_top1[:len(top1)]
        if self.labels is not None:
            labels = self.labels[:len(top1)]
            return (ref == labels).astype(np.float64) - (top1 == labels)
        return (top1 != ref).astype(np.float64)

    def drop_points(self, q: Quality) -> float:
        """Accuracy drop in points vs the unpruned model: labelled -> accuracy, else 100 (1 - agreement)."""
        return 100.0 * float(self.per_image_drop(q.top1).mean())

    def drop_bound(self, q: Quality, z: float = DROP_Z) -> float:
        """One-sided upper confidence bound of :meth:`drop_points` (points): mean + z x standard error of
        the paired per-image drops (z = 1.2816: 90 %). What ``--max-accuracy-drop`` holds: the fastest
        schedule whose point estimate fits is the one whose calibration noise flattered it most."""
        d = self.per_image_drop(q.top1)
        se = float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        return 100.0 * (float(d.mean()) + z * se)

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, mode: str, values) -> Quality:
        """Quality of pruning with ``values`` per block: θ_l (threshold mode) or K_l (capacity mode), None = no selector.

        Args:
            mode: "threshold" or "capacity".
            values: (L,) per-block threshold (float) or capacity (int), or None.

        Returns:
            :class:`Quality`; cached by (mode, values).

        Raises:
            ValueError: unknown mode or wrong length.
        """
        if mode not in ("threshold", "capacity"):
            raise ValueError(f"unknown mode {mode!r}: use threshold or capacity")
        L = self.model.depth
        values = tuple(None if v is None else (float(v) if mode == "threshold" else int(v)) for v in values)
        if len(values) != L:
            raise ValueError(f"expected {L} values (one per block), got {len(values)}")
        key = (mode, values)
        if key in self._results:
            return self._results[key]
        if mode == "capacity":  # K >= tokens present: compiled out (identity), as deployed
            runs = capacity_selectors(values, self.model.num_patches)
            values = tuple(v if r else None for v, r in zip(values, runs))
        if all(v is None for v in values):  # nothing pruned: the unpruned model
            logp = self._ref_logp
            kept = np.full((L, len(self)), self.model.num_patches, np.int64)
        else:
            start, chunks = self._start((mode, values))
            with torch.no_grad():
                for l in range(start, L):
                    attn = self._unpruned_attention(l) if chunks[0][1] is None and values[l] is not None else [None] * len(chunks)
                    chunks = [self._block(l, mode, values[l], c, a) for c, a in zip(chunks, attn)]
                    if l + 1 < L:
                        self._remember((mode, values[:l + 1]), chunks)
                logp = F.log_softmax(torch.cat([self._head(t, v) for t, v, _ in chunks]), dim=-1)
            kept = np.concatenate([k for _, _, k in chunks], axis=1)
        kl = float((self._ref_logp.exp() * (self._ref_logp - logp)).sum(-1).mean())
        top1 = logp.argmax(-1).numpy()
        q = Quality(agreement=float((top1 == self.reference_top1).mean()), kl=max(kl, 0.0),
                    accuracy=None if self.labels is None else float((top1 == self.labels).mean()),
                    kept=kept, top1=top1)
        self.evaluations += 1
        self._results[key] = q
        return q

    def _start(self, key) -> tuple[int, list]:
        """The latest cached state on this schedule's path: (block to run next, chunks)."""
        mode, values = key
        first = next((l for l, v in enumerate(values) if v is not None), len(values))
        for l in range(len(values) - 1, first, -1):
            hit = self._states.get((mode, values[:l]))
            if hit is not None:
                self._states.move_to_end((mode, values[:l]))
                return l, hit[0]
        P = self.model.num_patches
        return first, [(t, None, np.full((first, t.shape[0]), P, np.int64)) for t in self._inputs[first]]

    def _remember(self, key, chunks) -> None:
        size = sum(t.numel() * t.element_size() for t, *_ in chunks)
        if size > self._cache_bytes or key in self._states:
            return
        self._states[key] = (chunks, size)
        self._state_bytes += size
        while self._state_bytes > self._cache_bytes:
            _, (_, old) = self._states.popitem(last=False)
            self._state_bytes -= old

    def _unpruned_attention(self, l: int) -> list:
        """Block l's attention part on the unpruned tokens, per chunk: [(out (B, N, C), scores (B, N - p))].

        Every schedule whose first selector sits at block l runs it (single cuts at l over the whole grid,
        in both modes), so it is computed once and kept in the bounded state cache."""
        key = ("attention", l)
        hit = self._states.get(key)
        if hit is not None:
            self._states.move_to_end(key)
            return hit[0]
        blk = self.model.vit.blocks[l]
        parts = [blk.attention_part(t) for t in self._inputs[l]]
        self._remember(key, parts)
        return parts

    def _block(self, l: int, mode: str, value, chunk, attention=None):
        """One block on one chunk: (tokens (B, n, C), valid (B, n) bool or None, kept (l, B)) -> the same after block l.

        ``attention``: block l's (out, scores) on these tokens when already computed (:meth:`_unpruned_attention`)."""
        tokens, valid, kept = chunk
        blk, p = self.model.vit.blocks[l], self.model.num_prefix
        bias = None if valid is None else torch.zeros(valid.shape, dtype=tokens.dtype).masked_fill(~valid, float("-inf"))[:, None, None, :]
        if value is None:  # no selector: timm's own block (fused attention), padding masked as keys
            out = Block.forward(blk, tokens, attn_mask=bias)
        else:
            out, scores = attention if attention is not None else blk.attention_part(tokens, key_bias=bias)
            live = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid[:, p:]
            if mode == "threshold":
                theta = torch.full((scores.shape[0], 1), float(value), dtype=scores.dtype)
                if blk.min_keep and scores.shape[1]:  # heads that pool patch tokens keep the best one
                    theta = torch.minimum(theta, scores.masked_fill(~live, float("-inf")).amax(-1, keepdim=True))
                keep = live & (scores >= theta)
            else:  # the K best live tokens (dead ones score -1, below any attention probability)
                keep = rank_by_counting(scores.masked_fill(~live, -1.0)) < value
            out, valid = _compact(out, torch.cat([torch.ones(keep.shape[0], p, dtype=torch.bool), keep], 1))
            out = blk.mlp_part(out)
        n = np.full(out.shape[0], out.shape[1] - p, np.int64) if valid is None else valid[:, p:].sum(1).numpy()
        return out, valid, np.concatenate([kept, n[None]], axis=0)

    def _head(self, tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """(B, n, C) -> (B, classes); heads that pool patch tokens see each image's own tokens only."""
        if valid is None or self.model.min_patch_tokens == 0:  # a class-token head reads prefix tokens only
            return self.model.head(tokens)
        return torch.cat([self.model.head(tokens[i:i + 1, : int(valid[i].sum())]) for i in range(tokens.shape[0])])


def _compact(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's kept tokens to the front (order kept) and cut to the largest count.

    Args:
        x: (B, N, C) tokens; keep: (B, N) bool.

    Returns:
        (B, n, C) tokens and (B, n) bool validity, n = max kept count. Sort-free: destinations by
        cumulative sums, inverted with a scatter.
    """
    B, N = keep.shape
    k = keep.long()
    count = k.sum(1, keepdim=True)
    dest = torch.where(keep, k.cumsum(1) - 1, count + (1 - k).cumsum(1) - 1)
    src = torch.empty_like(dest).scatter_(1, dest, torch.arange(N).expand(B, N).contiguous())
    n = int(count.max())
    idx = src[:, :n]
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(B, n, x.shape[-1])), torch.arange(n)[None] < count
