"""Quantized exports in the main job and the profiler: an fp32 export, then ONNX Runtime's or ai-edge-quantizer's
int8 (or fp16) rewrite of it, checked against the fp32 pruned model.

- :class:`PrecisionArtifact` wraps a :class:`vitedge.pipeline.Artifact` (same interface: ``export``, ``audit``,
  ``parity``, ``suffix``): ``export`` writes the fp32 file, parity-checks nothing yet, and quantizes it with
  the calibration images as the data reader (the pruned graph, so calibration sees the pruned token sets);
  ``audit`` adds which ops run in int8; ``parity`` checks the fp32 file against PyTorch exactly as an fp32
  export is, then the quantized file against the fp32 pruned model, refusing it below
  :data:`vitedge.precision.MIN_TOP1_AGREEMENT` (exit 5).
- :func:`quantize_part_files`: the profiler's part files at the requested precision, so a latency table
  predicts the quantized graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .precision import PARITY_IMAGES, describe, enforce_parity

PART_FEEDS = 4   # standard-normal inputs a static part quantization calibrates on (latency does not depend on ranges)


def with_precision(ctx, artifact):
    """``artifact`` itself at fp32, else a :class:`PrecisionArtifact` at ``ctx.opts.precision`` calibrated on
    ``ctx.images`` (the calibration images)."""
    o = ctx.opts
    if getattr(o, "precision", "fp32") == "fp32":
        return artifact
    return PrecisionArtifact(artifact, o.precision, o.quantization, lambda: ctx.feeds(len(ctx.images)), ctx.images)


def quantize_file(fp32_path, out_path, feeds, *, fmt: str, precision: str, method: str) -> dict:
    """Write ``out_path``: the fp32 file ``fp32_path`` at ``precision`` (ONNX int8 via ONNX Runtime; TFLite
    int8/fp16 via ai-edge-quantizer). ``feeds``: calibration inputs (static int8). Returns the quantizer's record.

    Raises:
        ExportError: the quantizer failed (one line).
    """
    if fmt == "onnx":
        from .exporters.quantize import quantize_onnx

        return quantize_onnx(fp32_path, out_path, feeds, method=method)
    from .exporters.tflite_quantize import quantize_tflite

    return quantize_tflite(fp32_path, out_path, feeds, precision=precision, method=method)


class PrecisionArtifact:
    """An export route at fp16/int8: the fp32 route's file, quantized. See the module docstring.

    Args:
        inner: the fp32 :class:`~vitedge.pipeline.Artifact`.
        precision: "int8" or "fp16"; quantization: "static" or "dynamic" (int8).
        feeds: a callable returning the calibration inputs ``[{"image": (1, 3, H, W)}, ...]``.
        images: the calibration :class:`~vitedge.data.digits.ImageSet` (parity).
    """

    def __init__(self, inner, precision: str, quantization: str, feeds, images):
        self.inner, self.precision, self.quantization = inner, precision, quantization
        self.fmt, self.suffix, self.converter = inner.fmt, inner.suffix, inner.converter
        self.conversions = inner.conversions
        self._feeds, self._feed_cache, self.images = feeds, None, images
        self.records: dict[str, tuple[Path, dict]] = {}
        self.reranks: list[dict] = []  # filled by vitedge.quantized_search when the search re-ranks at this precision

    def _calibration_feeds(self):
        if self._feed_cache is None:
            self._feed_cache = self._feeds()
        return self._feed_cache

    def export(self, model, path, *, pruned: bool = True) -> None:
        """Export fp32 next to ``path`` (``NAME.fp32.SUFFIX``, kept for the parity check), then quantize into ``path``."""
        path = Path(path)
        fp32 = path.with_name(f"{path.stem}.fp32{path.suffix}")
        self.inner.export(model, fp32, pruned=pruned)
        feeds = self._calibration_feeds() if self.quantization == "static" else None
        record = quantize_file(fp32, path, feeds, fmt=self.fmt, precision=self.precision, method=self.quantization)
        self.records[str(path)] = (fp32, record)

    def audit(self, path) -> dict:
        """The fp32 route's audit of the quantized file (op types, sort-free; XNNPACK delegation for TFLite), plus
        ``precision``: the quantizer's record and, for ONNX, the ops ONNX Runtime runs in int8."""
        out = self.inner.audit(path)
        _, record = self.records.get(str(path), (None, {}))
        info = {**describe(self.precision, self.quantization), **{k: v for k, v in record.items() if k != "op_types"}}
        if self.fmt == "onnx":
            from .exporters.quantize import int8_ops

            info["runtime_ops"] = int8_ops(path)
        return {**out, "precision": {**info, "search_reranks": self.reranks}}

    def parity(self, model, path, images) -> dict:
        """fp32 file vs PyTorch (the fp32 route's check, exact), then the quantized file vs the fp32 pruned model.

        Raises:
            ParityError: the fp32 file disagrees with PyTorch; QuantizationParityError: the quantized file's top-1
                agreement is below the stated threshold.
        """
        from .exporters.quantize import quantized_parity

        fp32, _ = self.records[str(path)]
        fp32_parity = self.inner.parity(model, fp32, images)
        q = quantized_parity(model, path, images, limit=PARITY_IMAGES, precision=self.precision,
                             runtime="onnxruntime" if self.fmt == "onnx" else "litert")
        enforce_parity(q, path=Path(path).name)
        return {"max_abs_diff": q["max_abs_logit_diff"], "top1_agreement": q["top1_agreement"], **q,
                "fp32_export": fp32_parity}


def quantize_part_files(files: dict, model, *, fmt: str, precision: str, method: str) -> None:
    """Quantize the profiler's part files in place (``files``: {(part, n): path} from the part exporter).

    Static int8 calibrates each part on :data:`PART_FEEDS` standard-normal inputs of its n = N shape: a part's
    latency depends on its ops and shapes, not on its activation ranges.
    """
    from .exporters.graphs import part_inputs

    rng = np.random.default_rng(0)
    done: set[Path] = set()
    for (part, n), path in files.items():
        path = Path(path)
        if path in done:
            continue
        done.add(path)
        feeds = None
        fp32 = path.with_name(f"{path.stem}.fp32{path.suffix}")
        path.replace(fp32)
        if method == "static" and precision == "int8" and fmt == "tflite":  # one signature per n: calibrate each
            from .exporters.tflite_quantize import signature_feeds

            feeds = signature_feeds(fp32, PART_FEEDS, rng)
        elif method == "static" and precision == "int8":
            shapes = part_inputs(model, part, model.num_tokens if n is None else n)  # per-n files are static-shaped
            feeds = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(PART_FEEDS)]
        quantize_file(fp32, path, feeds, fmt=fmt, precision=precision, method=method)
        fp32.unlink()
