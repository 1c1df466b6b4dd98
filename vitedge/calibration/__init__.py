"""RCTP calibration (§III-B): stage 1 (torch, :mod:`.fisher`), stages 2-3 (NumPy, :mod:`.tables`),
one versioned file (:mod:`.store`)."""
from __future__ import annotations

import numpy as np

from .store import Calibration, CalibrationError, build_calibration


def calibrate(model, images, *, model_hash: str, image_set_hash: str, num_candidates: int = 201,
              importance: str = "fisher_block", batch_size: int = 32, use_labels: bool = True,
              progress: bool = True) -> Calibration:
    """Stages 1-3 of RCTP on ``images``: thresholds θ[l, m], FI-loss f[l, m], kept counts n[l, m, d].

    The scores are the model's token score (:attr:`~vitedge.models.adapter.PrunableViT.token_score`; RCTP: the
    CLS attention), recorded in ``meta["token_score"]``.

    Args:
        model: a :class:`~vitedge.models.adapter.PrunableViT`.
        images: an :class:`~vitedge.data.digits.ImageSet` (labels used when present and ``use_labels``).
        model_hash, image_set_hash: identities stored in the file (cache keys, mismatch checks).
        num_candidates: M (RCTP: 201). importance: see :func:`.store.build_calibration`.

    Raises:
        ValueError: empty image set or wrong image size; CalibrationError: bad options.
    """
    from .fisher import collect_stage1

    s1 = collect_stage1(model, images, batch_size=batch_size, use_labels=use_labels, progress=progress)
    meta = {"model": getattr(model, "model_name", type(model.vit).__name__), "model_hash": model_hash,
            "image_set": images.name, "image_set_hash": image_set_hash, "label_source": s1.label_source,
            "unpruned_top1_agreement_with_labels": float((s1.model_top1 == s1.labels).mean()),
            "token_score": model.token_score}
    cal = build_calibration(s1.scores, s1.fisher, s1.labels, dim=model.dim, num_prefix=model.num_prefix,
                            meta=meta, num_candidates=num_candidates, importance=importance)
    if model.min_patch_tokens:  # the selector keeps the best patch token for heads that pool patch tokens
        cal.kept = np.maximum(cal.kept, model.min_patch_tokens).astype(cal.kept.dtype)
        cal.meta["min_patch_tokens"] = model.min_patch_tokens
    return cal


__all__ = ["Calibration", "CalibrationError", "build_calibration", "calibrate"]
