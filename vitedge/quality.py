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
The output of every block of the unpruned model and its CLS scores are computed once: a schedule's first
selector, at block l, only gathers its kept tokens from block l's unpruned output (the tokens before it are
the unpruned ones, the MLP is per token), and blocks l+1..L-1 run. After each selector the images are
re-chunked sorted by kept count, so a chunk pads little. The last block of a class-token model computes
its prefix tokens only (the head reads nothing else; its selector only counts). States after a schedule's
prefix are kept in a bounded LRU cache, so schedules that share a prefix share its work. After a
schedule's last selector an image's result depends only on its kept counts so far (equal counts are
equal token sets), so its KL and top-1 are kept by (image, counts) and reused by any schedule, in either
mode, that gives the image the same counts.
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
from .models.pruning import ACCUMULATED, package_key_bias, package_merge, rank_by_counting, window_mean
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

    With the package token (``model.package_token``, read once here) it sits at column p of every state after
    the first selector (as deployed), its size P - (live patch tokens) gives its attention bias, and every
    selector merges its pruned tokens into it (:func:`~vitedge.models.pruning.package_merge`); a first cut merges from
    block l's unpruned attention output, kept per block (D x N x C floats each, as the block outputs).
    """

    def __init__(self, model: PrunableViT, images: ImageSet, *, batch_size: int = 64, cache_mb: float = 512):
        self.model, self.images, self.batch_size = model, images, int(batch_size)
        self.package = bool(model.package_token)
        self.labels = images.labels
        self._cache_bytes = int(cache_mb * 2**20)
        self._states: OrderedDict = OrderedDict()  # prefix -> (chunks, bytes), least recently used first
        self._state_bytes = 0
        self._results: dict = {}
        self._tails: dict = {}  # (image, kept counts up to a schedule's last selector) -> (KL nats, top-1)
        self.evaluations = 0
        x = torch.from_numpy(images.images)
        self._outputs, self._scores = [], []  # per block l of the unpruned model: its (D, N, C) output, (D, P) scores
        with torch.inference_mode():
            chunks = [self.model.embed(x[s:s + self.batch_size]) for s in range(0, len(images), self.batch_size)]
            # a first cut with the package token merges its pruned tokens before the MLP: block l's attention output
            self._attended = []  # per block, (D, N, C) after the attention part (kept with the package token only)
            for blk in self.model.vit.blocks:
                parts = [blk.attention_part(c) for c in chunks]
                self._scores.append(torch.cat([sc for _, sc in parts]))
                self._attended.append(torch.cat([t for t, _ in parts]) if self.package else None)
                chunks = [Block.forward(blk, c) for c in chunks]
                self._outputs.append(torch.cat(chunks))
            logits = torch.cat([self.model.head(c) for c in chunks])
        self.window = model.token_score in ACCUMULATED  # selectors average the score since the previous selector
        if self.window:  # a first cut at block l averages blocks 0..l of the unpruned model
            self._scores = [sum(self._scores[:l + 1]) / (l + 1) for l in range(len(self._scores))]
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
            kl_img, top1 = torch.zeros(len(self)), self.reference_top1.copy()
            kept = np.full((L, len(self)), self.model.num_patches, np.int64)
        else:
            last = max(l for l, v in enumerate(values) if v is not None)  # no selector after it
            start, state = self._start((mode, values))
            with torch.inference_mode():
                for l in range(start, last + 1):
                    state = self._first_cut(l, mode, values[l]) if state is None else \
                        self._block(l, mode, values[l], *state, track=self.window)
                    if l + 1 < L:
                        self._remember((mode, values[:l + 1]), state)
                rows = self._tail(mode, max(start, last + 1), last, *state)
            order = state[1]
            kl_img, top1, kept = torch.empty(len(self)), np.empty(len(self), np.int64), np.empty((L, len(self)), np.int64)
            kl_img[torch.from_numpy(order)], top1[order], kept[:, order] = rows
        q = Quality(agreement=float((top1 == self.reference_top1).mean()), kl=max(float(kl_img.mean()), 0.0),
                    accuracy=None if self.labels is None else float((top1 == self.labels).mean()),
                    kept=kept, top1=top1)
        self.evaluations += 1
        self._results[key] = q
        return q

    def _start(self, key) -> tuple[int, tuple | None]:
        """The latest cached state on this schedule's path: (block to run next, (chunks, order)), or
        (the first selector's block, None) when no state after it is cached."""
        mode, values = key
        first = next((l for l, v in enumerate(values) if v is not None), len(values))
        for l in range(len(values) - 1, first, -1):
            hit = self._states.get((mode, values[:l]))
            if hit is not None:
                self._states.move_to_end((mode, values[:l]))
                return l, hit[0]
        return first, None

    def _remember(self, key, state) -> None:
        size = sum(t.numel() * t.element_size() for t, *_ in state[0])
        if size > self._cache_bytes or key in self._states:
            return
        self._states[key] = (state, size)
        self._state_bytes += size
        while self._state_bytes > self._cache_bytes:
            _, (_, old) = self._states.popitem(last=False)
            self._state_bytes -= old

    def _keep(self, l: int, mode: str, value, scores: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """Block l's selector: (B, P) CLS scores, (B, P) bool live tokens (None: all) -> (B, P) bool kept."""
        if mode == "threshold":
            keep = scores >= value
            if self.model.vit.blocks[l].min_keep and scores.shape[1]:  # heads that pool patch tokens keep the best one
                best = scores if live is None else scores.masked_fill(~live, float("-inf"))
                keep |= scores == best.amax(-1, keepdim=True)
            return keep if live is None else keep & live
        # the K best live tokens (dead ones score -1, below any attention probability)
        return rank_by_counting(scores if live is None else scores.masked_fill(~live, -1.0)) < value

    def _first_cut(self, l: int, mode: str, value) -> tuple[list, np.ndarray]:
        """The state after block l, the schedule's first selector, from the unpruned model: (chunks, order).

        Every token's output of block l is the unpruned one (the tokens are the unpruned ones, the MLP is per
        token), so the kept tokens are gathered from the unpruned block output."""
        D, P, B = len(self), self.model.num_patches, self.batch_size
        keep = self._keep(l, mode, value, self._scores[l], None)
        if not self.package:
            return self._regroup([self._outputs[l]], [keep], np.arange(D), np.full((l, D), P, np.int64))
        # the package averages the pruned tokens before the MLP: from block l's unpruned attention output
        blk, x = self.model.vit.blocks[l], self._attended[l]
        tokens = [x[s:s + B] for s in range(0, D, B)]
        return self._regroup(tokens, [keep[s:s + B] for s in range(0, D, B)], np.arange(D), np.full((l, D), P, np.int64),
                             blk, lives=[None] * len(tokens))

    def _block(self, l: int, mode: str, value, chunks: list, order: np.ndarray, track: bool = False) -> tuple[list, np.ndarray]:
        """Block l on a state after block l - 1: (chunks, order) -> the same after block l.

        chunks: [(tokens (B, n, C), valid (B, n) bool or None = all, kept (l, B) patch tokens leaving blocks < l,
        history: the window's (score sum (B, n - p), blocks) since the previous selector or None)];
        order: (D,) the image of each row of the chunks, in turn. ``track``: add this block's scores to the
        history (an accumulated token score, :func:`~vitedge.models.pruning.window_mean`, with a selector at or
        after block l). The last block of a model whose head reads its prefix tokens only outputs those (B, p, C)."""
        blk, p = self.model.vit.blocks[l], self.model.num_prefix
        q = p + self.package  # tokens before the patch tokens (every state has the package token, when it is on)
        prefix_head = l == self.model.depth - 1 and self.model.min_patch_tokens == 0
        out, keeps, lives = [], [], []
        for tokens, valid, kept, history in chunks:
            bias = None if valid is None else torch.zeros(valid.shape, dtype=tokens.dtype).masked_fill(~valid, float("-inf"))[:, None, None, :]
            live = None if valid is None else valid[:, q:]
            if self.package:  # proportional attention: log of the patch tokens the package stands for
                present = torch.full((tokens.shape[0],), tokens.shape[1] - q) if live is None else live.sum(1)
                size = package_key_bias(tokens, p, (self.model.num_patches - present).reshape(-1, 1, 1).to(tokens.dtype))
                bias = size if bias is None else bias + size
            if prefix_head:  # only the prefix tokens reach the head; the selector only counts
                t, scores = blk.attention_part(tokens, key_bias=bias, queries=p, num_prefix=q)
                if track:
                    history, scores = window_mean(history, scores)
                keep = live if value is None else self._keep(l, mode, value, scores, live)
                n = np.full(t.shape[0], scores.shape[1], np.int64) if keep is None else keep.sum(1).numpy()
                out.append((blk.mlp_part(t), None, np.concatenate([kept, n[None] + self.package]), None))
            elif value is None:  # no selector: timm's own block (fused attention), padding masked as keys
                if track:  # the scores are summed for a later selector: the explicit attention, as deployed
                    t, scores = blk.attention_part(tokens, key_bias=bias, num_prefix=q)
                    t, (history, _) = blk.mlp_part(t), window_mean(history, scores)
                else:
                    t = Block.forward(blk, tokens, attn_mask=bias)
                n = np.full(t.shape[0], t.shape[1] - q, np.int64) if valid is None else live.sum(1).numpy()
                out.append((t, valid, np.concatenate([kept, n[None] + self.package]), history if track else None))
            else:
                t, scores = blk.attention_part(tokens, key_bias=bias, num_prefix=q)
                if track:
                    history, scores = window_mean(history, scores)
                out.append(t)
                keeps.append(self._keep(l, mode, value, scores, live))
                lives.append(live)
        if not keeps:
            return out, order
        return self._regroup(out, keeps, order, np.concatenate([c[2] for c in chunks], axis=1), blk, lives=lives)

    def _tail(self, mode: str, l0: int, last: int, chunks: list, order: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Blocks l0..L-1, none with a selector (the last one is at block ``last`` < l0), and the head, on a state
        after block l0 - 1: (KL (D,) nats, top-1 (D,), kept (L, D)), per row of the state (images ``order``).

        An image's tokens after block ``last`` are fixed by the image and its kept counts up to there (a
        selector keeps the tokens scoring highest, in either mode, so equal counts are equal token sets), so
        its KL and top-1 are kept by (image, counts) and the blocks run only for images not seen so far
        (a single cut at block l, e.g., shares every image whose count another cut at l, in either mode, gave)."""
        L, p = self.model.depth, self.model.num_prefix
        kept = np.concatenate([c[2] for c in chunks], axis=1)
        kept = np.concatenate([kept, np.repeat(kept[last:last + 1], L - l0, axis=0)])
        if l0 == L:
            return *self._outcome(chunks, order), kept
        keys = [(int(i), *kept[:last + 1, r].tolist()) for r, i in enumerate(order)]
        miss = [r for r, k in enumerate(keys) if k not in self._tails]
        if miss:
            state = (chunks, order)
            if len(miss) < len(keys):
                live = [torch.ones(t.shape[0], t.shape[1] - p, dtype=torch.bool) if v is None else v[:, p:] for t, v, *_ in chunks]
                state = self._regroup([t for t, *_ in chunks], live, order, kept[:l0 - 1], rows=np.array(miss))
            for l in range(l0, L):
                state = self._block(l, mode, None, *state)
            self._tails.update((keys[r], (kl, t)) for r, kl, t in zip(miss, *(a.tolist() for a in self._outcome(*state))))
        return torch.tensor([self._tails[k][0] for k in keys]), np.array([self._tails[k][1] for k in keys], np.int64), kept

    def _outcome(self, chunks: list, order: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The head on the chunks of a state after the last block: KL(unpruned || pruned) (R,) nats and top-1 (R,)
        per row (images ``order``)."""
        logp = F.log_softmax(torch.cat([self._head(t, v) for t, v, *_ in chunks]), dim=-1)
        ref = self._ref_logp[torch.from_numpy(order)]
        return (ref.exp() * (ref - logp)).sum(-1), logp.argmax(-1).numpy()

    def _regroup(self, tokens: list, keeps: list, order: np.ndarray, kept: np.ndarray, blk=None,
                 rows: np.ndarray | None = None, lives: list | None = None) -> tuple[list, np.ndarray]:
        """After a selector: the kept tokens of every image, re-chunked with the images sorted by kept count.

        Args:
            tokens: per chunk (B, n, C) tokens after the attention part; keeps: per chunk (B, P') bool kept
                patch tokens; order: (D,) image of each row; kept: (l, D) patch tokens leaving blocks < l.
            blk: the block whose MLP part runs on the kept tokens (None: ``tokens`` are block outputs).
            rows: (R,) the rows (of the concatenated chunks) to keep, in this order (None: every row, sorted
                by kept count).
            lives: per chunk the (B, P') bool live patch tokens (None: all) when a selector made ``keeps``: its
                pruned tokens merge into the package token (when it is on); None: ``keeps`` only drop padding.

        Returns:
            (chunks, order) as :meth:`_block`: chunks of ``batch_size`` rows, each cut to its largest kept count,
            so that a chunk pads little.
        """
        p, B = self.model.num_prefix, self.batch_size
        if lives is not None and self.package:
            tokens, keeps = (list(z) for z in zip(*(self._merge(t, k, v) for t, k, v in zip(tokens, keeps, lives))))
        counts = np.concatenate([k.sum(1).numpy() for k in keeps])
        if rows is None:
            rows = np.argsort(counts, kind="stable")  # rows of the concatenated chunks, in the new order
        kept = np.concatenate([kept[:, rows], counts[None, rows]])
        aligned = len(tokens) > 1 and np.array_equal(rows, np.arange(len(counts)))  # the chunks stay as they are
        if not aligned:
            n = max(t.shape[1] for t in tokens)
            x = torch.cat([F.pad(t, (0, 0, 0, n - t.shape[1])) for t in tokens]) if len(tokens) > 1 else tokens[0]
            keep = torch.cat([F.pad(k, (0, n - p - k.shape[1])) for k in keeps]) if len(keeps) > 1 else keeps[0]
        chunks = []
        for i, s in enumerate(range(0, len(rows), B)):
            if aligned:
                x_c, keep_c = tokens[i], keeps[i]
            else:
                idx = torch.from_numpy(rows[s:s + B])
                x_c, keep_c = x.index_select(0, idx), keep.index_select(0, idx)
            t, valid = _compact(x_c, torch.cat([torch.ones(keep_c.shape[0], p, dtype=torch.bool), keep_c], 1))
            chunks.append((t if blk is None else blk.mlp_part(t), None if bool(valid.all()) else valid, kept[:, s:s + B], None))
        return chunks, order[rows]

    def _merge(self, tokens: torch.Tensor, keep: torch.Tensor, live: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A selector's pruned tokens (live and not kept) merged into the package token, as deployed.

        Args:
            tokens: (B, q + P', C) after the attention part, q = p (no package token yet) or p + 1.
            keep: (B, P') bool kept patch tokens; live: (B, P') bool real (not padding) patch tokens, None: all.

        Returns:
            (B, p + 1 + P', C) tokens with the package at column p, and (B, 1 + P') bool keep (the package kept).
        """
        p, P = self.model.num_prefix, self.model.num_patches
        q = tokens.shape[1] - keep.shape[1]
        live = torch.ones_like(keep) if live is None else live
        size = (P - live.sum(1)).to(tokens.dtype).reshape(-1, 1, 1)
        new_size = (P - keep.sum(1)).to(tokens.dtype).reshape(-1, 1, 1)
        package = package_merge(tokens[:, p:q] if q > p else None, size, tokens[:, q:], (live & ~keep).to(tokens.dtype), new_size)
        return (torch.cat([tokens[:, :p], package, tokens[:, q:]], dim=1),
                torch.cat([torch.ones(keep.shape[0], 1, dtype=torch.bool), keep], dim=1))

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
        cumulative sums, inverted with a scatter; one gather of rows (index_select).
    """
    B, N = keep.shape
    k = keep.long()
    count = k.sum(1, keepdim=True)
    dest = torch.where(keep, k.cumsum(1) - 1, count + (1 - k).cumsum(1) - 1)
    src = torch.empty_like(dest).scatter_(1, dest, torch.arange(N).expand(B, N).contiguous())
    n = int(count.max())
    rows = (src[:, :n] + N * torch.arange(B)[:, None]).reshape(-1)  # into the (B * N, C) rows of x
    return x.reshape(B * N, -1).index_select(0, rows).view(B, n, -1), torch.arange(n)[None] < count
