"""Validate an exported pruned model against the PyTorch pruned model (the optimum-onnx way):
output names, then shapes, then values (max abs difference reported), then kept tokens and top-1."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vitedge.data.digits import ImageSet
from vitedge.errors import ExportValidationError
from vitedge.exporters.onnx import ExportError
from vitedge.models.adapter import PrunableViT

DEFAULT_ATOL = 1e-4  # float32 logits; measured differences are ~1e-6


class ParityError(ExportValidationError, ExportError):
    """The exported model disagrees with PyTorch (names, shapes, values, kept tokens or top-1)."""


@dataclass
class ParityReport:
    """Parity of an export with the PyTorch model over ``images`` images.

    max_abs_diff: largest |logit difference|; top1_agreement: fraction of images with the same
    top-1; kept_match: fraction of images with the same kept-token count in every block."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    kept_match: float
    atol: float
    boundary_flips: int = 0  # images whose kept count differs only by a score within float rounding of θ

    def to_dict(self) -> dict:
        return asdict(self)


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


BOUNDARY_RTOL = 1e-5  # float32 scores computed by two runtimes differ by ~1e-7 relative


def _boundary_flip(model: PrunableViT, out, kept: np.ndarray, ref_kept: np.ndarray) -> bool:
    """True when the first block whose kept count differs has a CLS score within float rounding of its
    threshold (threshold mode): the two runtimes put that token on different sides of θ."""
    first = int(np.argmax(kept != ref_kept))
    theta, scores = model.thresholds[first], out.scores[first]
    if theta is None or scores is None:
        return False
    gap = np.abs(scores.numpy() - theta)
    return bool((gap <= BOUNDARY_RTOL * max(abs(theta), 1e-12)).any())


def check_parity(model: PrunableViT, onnx_path, images: ImageSet, *, atol: float = DEFAULT_ATOL,
                 limit: int | None = 64, raise_on_failure: bool = True) -> ParityReport:
    """Run both models on up to ``limit`` images at batch 1 and compare.

    An image whose kept-token count differs is accepted as a *threshold-boundary flip* (counted,
    logits not compared) only when a CLS score of the first differing block lies within
    ``BOUNDARY_RTOL`` of its threshold, and at most 10 % of the images may flip.

    Raises:
        ParityError: wrong output names or shapes; or (with ``raise_on_failure``) logits off by more
            than ``atol`` where the kept tokens agree, a kept-count difference that is not a boundary
            flip, or too many flips.
    """
    sess = _session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if names != ["logits", "kept_tokens"]:
        raise ParityError(f"{onnx_path}: outputs are {names}, expected ['logits', 'kept_tokens']")
    n = len(images) if limit is None else min(limit, len(images))
    worst, same_top1, same_kept, flips, bad = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for i in range(n):
            x = images.images[i:i + 1]
            out = model.forward_with_info(torch.from_numpy(x))
            ref_logits = out.logits.numpy()
            ref_kept = np.array([int(k) for k in out.kept])
            logits, kept = sess.run(None, {"image": x})
            if logits.shape != ref_logits.shape or kept.shape != ref_kept.shape:
                raise ParityError(f"{onnx_path}: output shapes {logits.shape}, {kept.shape} differ from PyTorch's "
                                  f"{ref_logits.shape}, {ref_kept.shape}")
            if np.array_equal(kept, ref_kept):
                same_kept += 1
                worst = max(worst, float(np.abs(logits - ref_logits).max()))
                agree = int(logits.argmax() == ref_logits.argmax())
                same_top1 += agree
                bad += 1 - agree
            elif _boundary_flip(model, out, kept, ref_kept):
                flips += 1  # a different token set: logits are not comparable, the runtimes rounded θ's neighbour apart
                same_top1 += int(logits.argmax() == ref_logits.argmax())
            else:
                bad += 1
    report = ParityReport(images=n, max_abs_diff=worst, top1_agreement=same_top1 / n, kept_match=same_kept / n, atol=atol,
                          boundary_flips=flips)
    if raise_on_failure and (worst > atol or bad or flips > max(1, n // 10)):
        raise ParityError(f"{onnx_path} disagrees with PyTorch: max |logit diff| {worst:.2e} (atol {atol:.0e}), "
                          f"kept tokens equal on {same_kept}/{n} ({flips} threshold-boundary flips), top-1 equal on {same_top1}/{n}")
    return report
