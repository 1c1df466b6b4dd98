"""RCTP stage 1: CLS-attention scores and per-token Fisher information on the unpruned model.

For every block l a mask m of ones, shape (B, N, 1), multiplies the MSA output (RCTP §III-B: the
pruning site sits between MSA and MLP). The Fisher information of patch token j of image d is
(∂L_d / ∂m_{d,j})^2 (RCTP eq. (4) before the average over images, which stage 3 takes). Images in
a batch are independent (LayerNorm is per token), so the gradient of the summed loss w.r.t. image
d's mask is ∂L_d/∂m_d: one backward pass per batch gives every per-image gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.digits import ImageSet
from ..models.adapter import PrunableViT


@dataclass
class Stage1:
    """Stage-1 statistics of L blocks over D images and P patch tokens.

    Attributes:
        scores: float32 (L, D, P) CLS-attention score (mean over heads) of each patch token.
        fisher: float32 (L, D, P) raw Fisher information (∂L_d/∂m_j)^2.
        labels: int64 (D,) the labels the loss used.
        label_source: "data" (ground truth) or "model" (the unpruned model's own top-1).
        model_top1: int64 (D,) the unpruned model's prediction.
    """

    scores: np.ndarray
    fisher: np.ndarray
    labels: np.ndarray
    label_source: str
    model_top1: np.ndarray


def collect_stage1(model: PrunableViT, images: ImageSet, *, batch_size: int = 32, use_labels: bool = True,
                   progress: bool = True) -> Stage1:
    """Run stage 1 over an image set (RCTP eq. (4), §III-B stage 1).

    Args:
        model: the prunable model; its thresholds are ignored (stage 1 runs unpruned).
        images: (D, 3, H, W) images, with labels or not.
        batch_size: images per forward/backward pass.
        use_labels: use ``images.labels`` when present; else (or when False) the model's top-1.
        progress: show a tqdm bar.

    Raises:
        ValueError: empty image set, or image size different from the model's input size.
    """
    if len(images) == 0:
        raise ValueError("the calibration image set is empty: give at least one image")
    if tuple(images.images.shape[1:]) != tuple(model.input_size):
        raise ValueError(f"images are {tuple(images.images.shape[1:])} but the model takes {model.input_size}: "
                         "resize them (timm data config) or pick the matching model")
    L, P, N, p = model.depth, model.num_patches, model.num_tokens, model.num_prefix
    D = len(images)
    scores = np.zeros((L, D, P), np.float32)
    fisher = np.zeros((L, D, P), np.float32)
    labels = np.zeros(D, np.int64)
    top1 = np.zeros(D, np.int64)
    label_source = "data" if (use_labels and images.labels is not None) else "model"
    with model.pruning():  # the unpruned model; the caller's thresholds or capacities come back afterwards
        bar = tqdm(total=D, desc="calibrate (stage 1)", unit="img", disable=not progress, leave=False)
        for start in range(0, D, batch_size):
            x = torch.from_numpy(images.images[start:start + batch_size])
            B = x.shape[0]
            masks = [torch.ones(B, N, 1, requires_grad=True) for _ in range(L)]
            out = model.forward_with_info(x, want_scores=True, fisher_masks=masks)
            pred = out.logits.argmax(-1).detach()
            y = torch.from_numpy(images.labels[start:start + B]) if label_source == "data" else pred
            loss = F.cross_entropy(out.logits, y, reduction="sum")
            grads = torch.autograd.grad(loss, masks)
            for l in range(L):
                fisher[l, start:start + B] = (grads[l][:, p:, 0] ** 2).numpy()
                scores[l, start:start + B] = out.scores[l].detach().numpy()
            labels[start:start + B] = y.numpy()
            top1[start:start + B] = pred.numpy()
            bar.update(B)
        bar.close()
    return Stage1(scores=scores, fisher=fisher, labels=labels, label_source=label_source, model_top1=top1)
