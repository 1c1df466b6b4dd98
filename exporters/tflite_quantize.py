"""INT8 and FP16 TFLite files through ai-edge-quantizer (Google's maintained quantizer for LiteRT models).

The float file is the litert-torch export (capacity mode: static shapes); the quantizer rewrites it:

- int8 ``dynamic`` (dynamic-range): channel-wise int8 weights, activations quantized at run time
  (``recipe.dynamic_wi8_afp32``); XNNPACK runs FULLY_CONNECTED / BATCH_MATMUL with QS8 kernels;
- int8 ``static`` (full-integer): int8 weights and int8 activations (``recipe.static_wi8_ai8``), ranges
  calibrated by running the float pruned file on the calibration images (the schedule's pruning active);
- fp16: weights stored as float16 (``FLOAT_CASTING``), dequantized to float32 on CPU; for GPU/NNAPI delegates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitedge.exporters.onnx import ExportError
from vitedge.io import atomic_path

CALIBRATION_IMAGES = 64   # images the full-integer route calibrates on


def _recipe(precision: str, method: str):
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    if precision == "int8":
        return recipe.dynamic_wi8_afp32() if method == "dynamic" else recipe.static_wi8_ai8()
    if precision == "fp16":
        rm = recipe_manager.RecipeManager()
        rm.add_quantization_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=recipe_manager.AlgorithmName.FLOAT_CASTING,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))
        return rm.get_quantization_recipe()
    raise ExportError(f"no TFLite recipe for precision {precision!r}")


def quantize_tflite(float_path, out_path, feeds: list[dict] | None, *, precision: str = "int8",
                    method: str = "dynamic") -> dict:
    """Quantize a float .tflite file with ai-edge-quantizer and write it to ``out_path`` atomically.

    Args:
        float_path: the float32 litert-torch export (one ``serving_default`` signature).
        out_path: the quantized file.
        feeds: calibration inputs ``[{"image": (1, 3, H, W) float32}, ...]`` (full-integer only; keyed by
            position: the signature's single input), or for a file with several signatures
            ``{signature key: [{input name: array}, ...]}`` (:func:`signature_feeds`).
        precision: "int8" or "fp16"; method: "dynamic" (dynamic-range) or "static" (full-integer), int8 only.

    Returns:
        {"precision", "method", "calibration_images", "quantizer": "ai-edge-quantizer <version>"}.

    Raises:
        ExportError: the quantizer failed, or full-integer without calibration images.
    """
    from importlib.metadata import version

    from ai_edge_quantizer import quantizer

    used = 0
    try:
        qt = quantizer.Quantizer(str(float_path), _recipe(precision, method))
        calibration = None
        if qt.need_calibration:
            if not feeds:
                raise ExportError("full-integer int8 needs calibration images: give --data, or --quantization dynamic")
            if isinstance(feeds, dict):  # per signature (multi-signature part files), already keyed by input name
                data = {sig: list(rows[:CALIBRATION_IMAGES]) for sig, rows in feeds.items()}
                used = min(len(rows) for rows in data.values())
            else:
                used = min(len(feeds), CALIBRATION_IMAGES)
                key = _input_name(float_path)
                data = {"serving_default": [{key: next(iter(f.values()))} for f in feeds[:used]]}
            calibration = qt.calibrate(data, num_threads=1)
        result = qt.quantize(calibration)
        with atomic_path(out_path) as tmp:
            Path(tmp).write_bytes(bytes(result.quantized_model))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - the quantizer raises plain exceptions
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ai-edge-quantizer {precision} ({method}) of {Path(float_path).name} failed: {first}") from e
    return {"precision": precision, "method": method if precision == "int8" else None, "calibration_images": used,
            "quantizer": f"ai-edge-quantizer {version('ai-edge-quantizer')}"}


def _input_name(path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return list(Interpreter(model_path=str(path)).get_signature_list()["serving_default"]["inputs"])[0]


def signature_feeds(path, count: int, rng) -> dict:
    """``count`` standard-normal inputs for every signature of the .tflite file ``path``, keyed as
    :func:`quantize_tflite` takes them: {signature key: [{input name: float32 array of its shape}, ...]}."""
    from ai_edge_litert.interpreter import Interpreter

    from vitedge.devices.runner import litert_signature_inputs

    sigs = litert_signature_inputs(Interpreter(model_path=str(path)))
    return {key: [{s["name"]: rng.standard_normal(s["shape"]).astype(np.float32) for s in specs} for _ in range(count)]
            for key, specs in sigs.items()}


def tflite_runner(path):
    """A callable (1, 3, H, W) float32 -> [logits float32, kept_tokens?] over a .tflite file in ai-edge-litert
    (1 thread). A full-integer file's int8 input is quantized and its int8 outputs dequantized with the file's
    own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    run = interp.get_signature_runner()
    details = run.get_input_details()
    name = list(details)[0]
    spec, out_spec = details[name], run.get_output_details()

    def call(x: np.ndarray) -> list:
        if spec["dtype"] != np.float32:
            scale, zero = spec["quantization"]
            x = np.clip(np.round(x / scale) + zero, np.iinfo(spec["dtype"]).min, np.iinfo(spec["dtype"]).max).astype(spec["dtype"])
        out = run(**{name: x})
        res = []
        for k in sorted(out):  # litert-torch names outputs output_0 (logits), output_1 (kept tokens)
            v, (scale, zero) = out[k], out_spec[k]["quantization"]
            res.append((v.astype(np.float32) - zero) * scale if scale and v.dtype in (np.int8, np.uint8) else v)
        return res
    return call
