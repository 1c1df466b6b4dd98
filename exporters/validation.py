"""Validate an exported pruned model against the PyTorch pruned model (the optimum-onnx way):
output names, then shapes, then values (max abs difference reported), then kept tokens and top-1."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.digits import ImageSet
from ..models.adapter import PrunableViT
from .onnx import ExportError

DEFAULT_ATOL = 1e-4  # float32 logits; measured differences are ~1e-6


class ParityError(ExportError):
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

    def to_dict(self) -> dict:
        return asdict(self)


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_parity(model: PrunableViT, onnx_path, images: ImageSet, *, atol: float = DEFAULT_ATOL,
                 limit: int | None = 64, raise_on_failure: bool = True) -> ParityReport:
    """Run both models on up to ``limit`` images at batch 1 and compare.

    Raises:
        ParityError: wrong output names or shapes; or (with ``raise_on_failure``) logits off by more
            than ``atol``, a different kept-token count, or a different top-1.
    """
    sess = _session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    if names != ["logits", "kept_tokens"]:
        raise ParityError(f"{onnx_path}: outputs are {names}, expected ['logits', 'kept_tokens']")
    n = len(images) if limit is None else min(limit, len(images))
    worst, same_top1, same_kept = 0.0, 0, 0
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
            worst = max(worst, float(np.abs(logits - ref_logits).max()))
            same_top1 += int(logits.argmax() == ref_logits.argmax())
            same_kept += int(np.array_equal(kept, ref_kept))
    report = ParityReport(images=n, max_abs_diff=worst, top1_agreement=same_top1 / n, kept_match=same_kept / n, atol=atol)
    if raise_on_failure and (worst > atol or same_kept < n or same_top1 < n):
        raise ParityError(f"{onnx_path} disagrees with PyTorch: max |logit diff| {worst:.2e} (atol {atol:.0e}), "
                          f"kept tokens equal on {same_kept}/{n}, top-1 equal on {same_top1}/{n}")
    return report
