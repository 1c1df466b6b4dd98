"""INT8 ONNX exports through ONNX Runtime's quantization tool (``onnxruntime.quantization``), and their checks.

- :func:`quantize_onnx`: ``static`` (QDQ format, per-channel symmetric int8 weights, uint8 activations with
  ranges calibrated by MinMax on the calibration images) or ``dynamic`` (int8 weights, activations quantized
  at run time). The file quantized is the *pruned* export itself, so running it on the calibration images
  (the calibration data reader) calibrates every activation on the token sets the schedule keeps.
- :func:`int8_ops`: which ops ONNX Runtime runs in int8 once it has fused the QDQ pairs (its optimized graph).
- :func:`quantized_parity`: top-1 agreement, max |logit diff| and kept-token counts against the fp32 pruned
  PyTorch model (:func:`vitedge.precision.enforce_parity` holds the threshold).

Which ops stay float was chosen by measurement (``benchmarks/precision.py``, results in
``benchmarks/results/precision.md``): LayerNorm, Softmax, GELU (Erf), residual Adds and the selector's
score path (CLS-attention gather, mean, compare, NonZero) stay float; MatMul, Gemm and Conv run int8.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from vitedge.exporters.onnx import ExportError, audit_ops
from vitedge.io import atomic_path

# ops quantized by the static route (measured, precision_ops.md: every op ORT can was 5 % faster on ViT-S, less accurate)
STATIC_OP_TYPES = ("MatMul", "Gemm", "Conv")
CALIBRATION_IMAGES = 128   # images the static route calibrates activation ranges on
# op types of ONNX Runtime's optimized graph that compute in integer arithmetic
_INT8_OP_PREFIXES = ("QLinear", "QGemm", "QAttention", "DynamicQuantize", "MatMulInteger", "ConvInteger",
                     "MatMulIntegerToFloat", "QOrdered")


def _reader(feeds: list[dict]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The calibration images, one batch-1 feed at a time, run through the graph being quantized."""

        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(feeds)

    return Reader()


def score_path_matmuls(model) -> list[str]:
    """Names of the attention MatMuls (q·kᵀ) whose Softmax feeds a pruning selector's score path.

    The score path of a block with a selector: q·kᵀ -> Softmax -> (CLS row) Gather/Slice -> ReduceMean -> compare.
    ``model``: an ``onnx.ModelProto``. Returns the MatMul node names (an empty list without selectors).
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: list[str] = []
    for sm in (n for n in nodes if n.op_type == "Softmax"):
        # does this Softmax reach a ReduceMean (the head average of the CLS scores) within a few hops?
        frontier, seen, hit = [sm], set(), False
        for _ in range(4):
            nxt = []
            for n in frontier:
                for c in consumers.get(n.output[0], []) if n.output else []:
                    if c.op_type == "ReduceMean":
                        hit = True
                    if c.name not in seen and c.op_type in ("Gather", "Slice", "ReduceMean", "Squeeze"):
                        seen.add(c.name)
                        nxt.append(c)
            frontier = nxt
        src = producer.get(sm.input[0])
        if hit and src is not None and src.op_type == "MatMul":
            found.append(src.name)
    return found


def quantize_onnx(fp32_path, out_path, feeds: list[dict] | None, *, method: str = "static",
                  op_types: tuple[str, ...] | None = STATIC_OP_TYPES, score_path_float: bool = True) -> dict:
    """Quantize an fp32 ONNX export to int8 and write it to ``out_path`` atomically.

    Args:
        fp32_path: the fp32 export (pruned or not; its pruning is what calibration runs).
        out_path: the int8 file.
        feeds: calibration inputs, e.g. ``[{"image": (1, 3, H, W) float32}, ...]`` (static only; the first
            :data:`CALIBRATION_IMAGES` are used).
        method: "static" (QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax ranges) or
            "dynamic" (int8 per-channel weights of MatMul/Gemm, activations quantized at run time).
        op_types: the op types the static route quantizes (default :data:`STATIC_OP_TYPES`; empty: every op type
            ONNX Runtime can quantize).
        score_path_float: keep the q·kᵀ MatMuls of blocks with a selector in float (the CLS scores that
            thresholds are compared with).

    Returns:
        {"method", "calibration_images", "float_nodes" (names kept float by choice), "op_types" (of the file)}.

    Raises:
        ExportError: no calibration feeds for the static route; ONNX Runtime's quantizer failed; the
            quantized file fails the ONNX checker; OpAuditError: forbidden ops in it.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    out_path = Path(out_path)
    model = onnx.load(str(fp32_path))
    keep_float = score_path_matmuls(model) if score_path_float else []
    used = 0
    try:
        with atomic_path(out_path) as tmp:
            if method == "static":
                if not feeds:
                    raise ExportError("static int8 quantization needs calibration images: give --data, or --quantization dynamic")
                used = min(len(feeds), CALIBRATION_IMAGES)
                # the calibrator runs an augmented copy of the pruned graph (in its own temp folder) on the feeds
                quantize_static(str(fp32_path), str(tmp), _reader(feeds[:used]), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=keep_float,
                                calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True},
                                calibration_providers=["CPUExecutionProvider"])
            elif method == "dynamic":
                quantize_dynamic(str(fp32_path), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep_float)
            else:
                raise ExportError(f"unknown quantization {method!r}: use static or dynamic")
            q = onnx.load(str(tmp))
            try:
                onnx.checker.check_model(q, full_check=True)
            except Exception as e:  # noqa: BLE001 - the checker's own exception types vary by version
                raise ExportError(f"ONNX checker rejected the int8 file: {str(e).splitlines()[0]}") from None
            ops = audit_ops(q)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime.quantization raises plain exceptions
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX Runtime {method} int8 quantization of {Path(fp32_path).name} failed: {first}") from e
    return {"method": method, "calibration_images": used, "float_nodes": keep_float, "op_types": ops}


def int8_ops(path) -> dict:
    """Which ops ONNX Runtime runs in integer arithmetic, from its optimized graph (QDQ pairs fused).

    Returns:
        {"int8": {op_type: count}, "float": {op_type: count}} of the graph ONNX Runtime executes on its CPU
        provider (Quantize/DequantizeLinear are counted under "int8" as conversions).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="vitedge-ortopt-") as work:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(work) / "optimized.onnx")
        so.intra_op_num_threads = 1
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    int8, flt = Counter(), Counter()
    for n in graph.node:
        integer = n.op_type.startswith(_INT8_OP_PREFIXES) or n.op_type in ("QuantizeLinear", "DequantizeLinear")
        (int8 if integer else flt)[n.op_type] += 1
    return {"int8": dict(sorted(int8.items())), "float": dict(sorted(flt.items()))}


def quantized_parity(model, path, images, *, limit: int = 64, runtime: str = "onnxruntime", precision: str = "int8") -> dict:
    """Compare a quantized (or fp16) export with the fp32 pruned PyTorch model at batch 1.

    Args:
        model: the :class:`~vitedge.models.adapter.PrunableViT` with the schedule's pruning applied.
        path: the quantized file (outputs ``logits`` (1, classes) and ``kept_tokens`` (L,) for a pruned export,
            ``logits`` alone for an unpruned one).
        images: an :class:`~vitedge.data.digits.ImageSet` (the calibration images).
        runtime: "onnxruntime" (.onnx) or "litert" (.tflite).

    Returns:
        {"precision", "images", "top1_agreement" (fraction), "max_abs_logit_diff", "kept_counts_differ" (fraction
        of images whose kept-token count differs in some block: a lower bound on differing kept sets)}.
    """
    import torch

    run = _runner(path, runtime)
    n = min(limit, len(images))
    agree, worst, differ = 0, 0.0, 0
    with torch.no_grad():
        for i in range(n):
            x = images.images[i:i + 1]
            ref = model.forward_with_info(torch.from_numpy(x))
            outs = run(x)
            logits = np.asarray(outs[0]).reshape(ref.logits.shape)
            agree += int(logits.argmax() == ref.logits.numpy().argmax())
            worst = max(worst, float(np.abs(logits - ref.logits.numpy()).max()))
            if len(outs) > 1:
                differ += int(not np.array_equal(np.asarray(outs[1]).ravel(), np.array([int(k) for k in ref.kept])))
    return {"precision": precision, "images": n, "top1_agreement": agree / n, "max_abs_logit_diff": worst,
            "kept_counts_differ": differ / n}


def _runner(path, runtime: str):
    """A callable (1, 3, H, W) -> [logits, kept_tokens?] over ``path`` in ``runtime`` (1 thread)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return lambda x: sess.run(names, {sess.get_inputs()[0].name: x})
    from vitedge.exporters.tflite_quantize import tflite_runner

    return tflite_runner(path)


def file_precision(path) -> str:
    """The precision an exported file computes in: "int8" (quantized weights or quantize ops), "fp16" (float16
    weights), else "fp32". Reads .onnx with ``onnx`` and .tflite with ai-edge-litert's tensor list.

    Raises:
        ValueError: a suffix other than .onnx / .tflite.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        types = {i.data_type for i in m.graph.initializer}
        ops = {n.op_type for n in m.graph.node}
        if ops & {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"} \
                or types & {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}:
            return "int8"
        return "fp16" if onnx.TensorProto.FLOAT16 in types else "fp32"
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter

        kinds = {np.dtype(t["dtype"]).name for t in Interpreter(model_path=str(path)).get_tensor_details()}
        return "int8" if kinds & {"int8", "uint8"} else ("fp16" if "float16" in kinds else "fp32")
    raise ValueError(f"{path}: not an .onnx or .tflite file")
