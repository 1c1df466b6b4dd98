"""Accuracy and real kept-token counts of a pruned model in PyTorch (batch 1, as deployed)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.digits import ImageSet
from .models.adapter import PrunableViT


@dataclass
class EvalResult:
    """Per-image outcome of a pruned forward.

    Attributes:
        top1: (D,) int64 predictions; kept: (L, D) patch tokens leaving each block.
        accuracy: top-1 accuracy vs labels (None without labels).
        agreement: fraction of images where the prediction equals ``reference_top1`` (None if not given).
    """

    top1: np.ndarray
    kept: np.ndarray
    accuracy: float | None
    agreement: float | None

    @property
    def mean_kept(self) -> list[float]:
        return [float(v) for v in self.kept.mean(axis=1)]


def predict_unpruned(model: PrunableViT, images: ImageSet, batch_size: int = 64) -> np.ndarray:
    """(D,) top-1 of the unpruned model (timm's forward), batched."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            out.append(model.vit(torch.from_numpy(images.images[s:s + batch_size])).argmax(-1).numpy())
    return np.concatenate(out)


def evaluate_schedule(model: PrunableViT, images: ImageSet, schedule, **kw) -> EvalResult:
    """:func:`evaluate_pruned` with a :class:`~vitedge.schedule.Schedule` (either mode)."""
    if schedule.mode == "capacity":
        return evaluate_pruned(model, images, capacities=schedule.capacities, **kw)
    return evaluate_pruned(model, images, schedule.thresholds, **kw)


def evaluate_pruned(model: PrunableViT, images: ImageSet, thresholds=None, *, capacities=None,
                    reference_top1: np.ndarray | None = None, limit: int | None = None) -> EvalResult:
    """Run ``model`` with ``thresholds`` (θ_l or None per block, batch 1 as deployed) or
    ``capacities`` (K_l or None per block, static shapes, batched) on the images.

    Compounding across blocks is real here (tokens dropped early are gone later), unlike the
    calibration's per-block counts. The model's configuration is restored afterwards.
    """
    batch = 64 if capacities is not None else 1
    n = len(images) if limit is None else min(limit, len(images))
    top1 = np.zeros(n, np.int64)
    kept = np.zeros((model.depth, n), np.int64)
    with model.pruning(thresholds=thresholds, capacities=capacities), torch.no_grad():
        for i in range(0, n, batch):
            out = model.forward_with_info(torch.from_numpy(images.images[i:min(i + batch, n)]))
            top1[i:i + batch] = out.logits.argmax(-1).numpy()
            kept[:, i:i + batch] = np.array([int(k) for k in out.kept])[:, None]
    acc = None if images.labels is None else float((top1 == images.labels[:n]).mean())
    agree = None if reference_top1 is None else float((top1 == reference_top1[:n]).mean())
    return EvalResult(top1=top1, kept=kept, accuracy=acc, agreement=agree)
