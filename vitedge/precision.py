"""Numeric precision of exported models and latency tables: fp32 (default), fp16, int8.

Which precision each export format writes, how a choice is checked before any work, and the parity
thresholds a quantized export must meet against the fp32 pruned model (both the same schedule):

=========  ==========================================  ============================================
format     int8                                        fp16
=========  ==========================================  ============================================
onnx       ONNX Runtime quantization: ``static`` (QDQ,  refused: ONNX Runtime's CPU provider has no
           per-channel symmetric int8 weights, uint8    fp16 kernels for most ops (fp16 is a GPU/NPU
           activations calibrated on the calibration    format here: use --format tflite)
           images with the schedule's pruning active)
           or ``dynamic`` (int8 weights, activations
           quantized at run time)
tflite     ai-edge-quantizer on the litert-torch file:  fp16 weights (ai-edge-quantizer), for GPU and
           ``dynamic`` (dynamic-range: int8 weights)    NNAPI delegates
           or ``static`` (full-integer: int8 weights
           and activations, calibrated as for ONNX)
=========  ==========================================  ============================================

Importing this module imports neither torch nor onnxruntime.
"""
from __future__ import annotations

from .errors import BadInput, ExportValidationError

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATIONS = ("static", "dynamic")
# the precisions each export format writes (format -> precisions)
FORMAT_PRECISIONS = {"onnx": ("fp32", "int8"), "tflite": ("fp32", "fp16", "int8")}
# runtimes that run every precision of the formats they read (a user command or a self-timing tool)
ANY_PRECISION_RUNTIMES = frozenset({"command", "benchmark_model"})

# Parity of a quantized export against the fp32 pruned model on the calibration images (batch 1).
# Enforced: top-1 agreement >= MIN_TOP1_AGREEMENT, else the export is refused (exit 5) with the numbers.
# Reported, not enforced: the largest |logit difference| and the share of images whose kept-token counts
# differ in some block (threshold mode: any rounding of a CLS score near θ moves one token, which the
# top-1 agreement already prices).
MIN_TOP1_AGREEMENT = 0.90
PARITY_IMAGES = 64   # images the quantized parity check runs


class QuantizationParityError(ExportValidationError):
    """A quantized export disagrees with the fp32 pruned model on more than the stated share (exit 5)."""


def check_precision(precision: str, quantization: str = "static", *, fmt: str | None = None,
                    runtime: str | None = None) -> None:
    """Refuse a precision that the format or the runtime cannot carry (``fmt``/``runtime`` None: not known yet).

    Args:
        precision: "fp32", "fp16" or "int8".
        quantization: "static" or "dynamic" (int8 only).
        fmt: export format ("onnx", "tflite").
        runtime: device runtime ("onnxruntime", "litert", "benchmark_model", "command").

    Raises:
        BadInput: unknown precision or quantization; a format or runtime that does not run the precision
            (one line naming the fix).
    """
    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if quantization not in QUANTIZATIONS:
        raise BadInput(f"unknown quantization {quantization!r}: use {' or '.join(QUANTIZATIONS)}")
    if fmt is not None and precision not in FORMAT_PRECISIONS.get(fmt, ("fp32",)):
        able = [f for f, ps in FORMAT_PRECISIONS.items() if precision in ps]
        why = (" (ONNX Runtime's CPU provider lacks fp16 kernels for most ops; fp16 targets GPU/NNAPI delegates)"
               if (fmt, precision) == ("onnx", "fp16") else "")
        raise BadInput(f"--precision {precision} is not available for {fmt} exports{why}: use --format "
                       f"{' or '.join(able)}, or --precision {' or '.join(FORMAT_PRECISIONS.get(fmt, ('fp32',)))}")
    if runtime is not None and precision != "fp32" and runtime not in ANY_PRECISION_RUNTIMES:
        from .devices.runtimes import RUNTIMES

        rt = RUNTIMES.get(runtime)
        if rt is not None and not any(precision in FORMAT_PRECISIONS.get(f, ()) for f in rt.formats):
            raise BadInput(f"runtime {runtime} cannot run --precision {precision} models: use --runtime onnxruntime "
                           "(int8) or litert (int8, fp16), or --precision fp32")


def precision_tag(precision: str, quantization: str = "static") -> str:
    """A short tag for cache keys and file names: "" (fp32), "fp16", "int8s" (static), "int8d" (dynamic)."""
    if precision == "fp32":
        return ""
    return precision + (quantization[0] if precision == "int8" else "")


def describe(precision: str, quantization: str = "static") -> dict:
    """The precision record written into tables and reports: {"precision": ..., "quantization": ... or None}."""
    return {"precision": precision, "quantization": quantization if precision == "int8" else None}


def check_table_precision(meta: dict, precision: str, quantization: str = "static", *, source: str = "latency table") -> None:
    """Refuse a latency table measured at another precision (a table without the record is fp32).

    Args:
        meta: the table's ``meta`` dict (its ``precision`` and ``quantization`` keys).

    Raises:
        vitedge.tables.latency.LatencyTableError: the table's precision or quantization differs (names the
            command that profiles the right one).
    """
    from .tables.latency import LatencyTableError

    have = describe(meta.get("precision") or "fp32", meta.get("quantization") or "static")
    want = describe(precision, quantization)
    if have != want:
        flag = f"--precision {precision}" + (f" --quantization {quantization}" if precision == "int8" else "")
        got = have["precision"] + (f" ({have['quantization']})" if have["quantization"] else "")
        raise LatencyTableError(f"{source} was profiled at precision {got}, not {want['precision']}"
                                + (f" ({want['quantization']})" if want["quantization"] else "")
                                + f": profile with `vitedge profile {flag}`")


def enforce_parity(report: dict, *, path, min_agreement: float = MIN_TOP1_AGREEMENT) -> None:
    """Refuse a quantized export whose top-1 agreement with the fp32 pruned model is below ``min_agreement``.

    Args:
        report: a quantized parity record (``images``, ``top1_agreement``, ``max_abs_logit_diff``,
            ``kept_counts_differ``), as :func:`vitedge.exporters.quantize.quantized_parity` returns.

    Raises:
        QuantizationParityError: agreement below the threshold (the message has every number).
    """
    if report["top1_agreement"] < min_agreement:
        raise QuantizationParityError(
            f"{path}: the {report['precision']} export agrees with the fp32 pruned model on "
            f"{100 * report['top1_agreement']:.1f} % of {report['images']} calibration images (top-1; at least "
            f"{100 * min_agreement:.0f} % required), max |logit diff| {report['max_abs_logit_diff']:.3g}, kept-token "
            f"counts differ on {100 * report['kept_counts_differ']:.1f} %: use --precision fp32, or --quantization "
            "dynamic (int8)")


def precision_line(report: dict) -> str:
    """The export summary's precision line: what ran in int8 and the parity against the fp32 pruned model."""
    info, par = report["precision"], report["parity"]
    ops = info.get("runtime_ops", {}).get("int8")
    what = info["precision"] + (f" ({info['quantization']})" if info.get("quantization") else "")
    return (f"precision {what}: top-1 agreement with fp32 pruned {100 * par['top1_agreement']:.1f} % on {par['images']} "
            f"images, max |logit diff| {par['max_abs_logit_diff']:.3g}, kept counts differ on "
            f"{100 * par['kept_counts_differ']:.1f} %" + (f"; int8 ops {ops}" if ops else ""))


def check_file_precision(path, precision: str, *, error=BadInput) -> None:
    """Refuse a model file whose own precision (:func:`vitedge.exporters.quantize.file_precision`) is not
    ``precision`` (``vitedge bench --precision``).

    Raises:
        ``error`` (default BadInput): the file is missing, unreadable, or of another precision (one line).
    """
    from pathlib import Path

    from .exporters.quantize import file_precision

    if not Path(path).is_file():
        raise error(f"{path} does not exist")
    try:
        have = file_precision(path)
    except Exception as e:  # noqa: BLE001 - a corrupt file: onnx/litert raise their own types
        raise error(f"{path}: cannot read its precision ({type(e).__name__}): export it again") from None
    if have != precision:
        raise error(f"{path} is a {have} model, not {precision}: export it with --precision {precision}, "
                    f"or bench with --precision {have}")
