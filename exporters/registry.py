"""The exporter registry: one entry per (format, converter), like the runtimes table and the device registry.

Everything that asks "how is format F written by converter C, audited and checked against PyTorch",
"which suffix", "which pruning modes", "are its graphs static-shaped" reads it here. Importing this
module imports neither torch nor litert-torch nor TensorFlow: each entry imports its implementation
(:mod:`~vitedge.exporters.graphs`, :mod:`~vitedge.exporters.tflite`, :mod:`~vitedge.exporters.onnx2tf`)
when it is called.
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitedge.errors import BadInput


@dataclass(frozen=True)
class Exporter:
    """One route from a prunable model to a file.

    format: the file format ("onnx", "tflite"); format_name: how messages spell it ("ONNX", "TFLite").
    converter: the route's name within the format; None where the format has one route (ONNX).
    suffix: the file suffix (".onnx", ".tflite").
    modes: the pruning modes it exports, the default first.
    static_shapes: it writes static-shaped graphs only (no dynamic token count: threshold mode is not exportable).
    refusal: the one-line reason a mode outside ``modes`` is refused.
    export(model, path, *, pruned=True, feeds=None): writes the file; returns a record of the conversion
        (onnx2tf: file, seconds, parity against the ONNX file on ``feeds``) or None.
    audit(path): {"op_types": {...}} plus, for TFLite, the XNNPACK delegation.
    parity(model, path, images): the file's outputs against PyTorch's (``model`` with its pruning applied).
    require(): raises :class:`~vitedge.exporters.tflite.TFLiteUnavailableError` when the route's packages are
        missing (checked before any work).
    feeds: how many model inputs ``export(feeds=...)`` checks each conversion on (onnx2tf: 8; 0: it takes none).
    default: the format's route when no converter is named.
    """

    format: str
    format_name: str
    converter: str | None
    suffix: str
    modes: tuple[str, ...]
    static_shapes: bool
    refusal: str
    export: Callable[..., dict | None]
    audit: Callable[[Path], dict]
    parity: Callable[..., dict]
    require: Callable[[], None]
    feeds: int = 0
    default: bool = True


_EXPORTERS: dict[tuple[str, str | None], Exporter] = {}


def register_exporter(entry: Exporter) -> None:
    """Add an exporter to the registry (warns when overwriting)."""
    key = (entry.format, entry.converter)
    if key in _EXPORTERS:
        warnings.warn(f"overwriting exporter {key!r} in the registry", stacklevel=2)
    _EXPORTERS[key] = entry


def formats() -> list[str]:
    """The export formats, in registration order."""
    return list(dict.fromkeys(fmt for fmt, _ in _EXPORTERS))


def converters(fmt: str) -> list[str]:
    """The named converters of ``fmt``, in registration order (none for ONNX)."""
    return [conv for f, conv in _EXPORTERS if f == fmt and conv is not None]


def get_exporter(fmt: str, converter: str | None = None) -> Exporter:
    """The entry for ``fmt`` written by ``converter`` (None: the format's default route).

    Raises:
        BadInput: unknown format, or a converter the format does not have (one line naming the choices).
    """
    entries = [e for (f, _), e in _EXPORTERS.items() if f == fmt]
    if not entries:
        raise BadInput(f"unknown format {fmt!r}: use {' or '.join(formats())}")
    for e in entries:
        if (e.converter == converter) if converter is not None else e.default:
            return e
    names = converters(fmt)
    raise BadInput(f"unknown {entries[0].format_name} converter {converter!r}: "
                   + (f"use {' or '.join(names)}" if names else f"{entries[0].format_name} has one route, name none"))


def _nothing() -> None:
    """The route needs nothing beyond vitedge's own dependencies."""


# -- ONNX (torch.onnx) -------------------------------------------------------------------------------------
def _onnx_export(model, path, *, pruned: bool = True, feeds=None) -> None:
    from vitedge.exporters.graphs import export_pruned, export_unpruned

    (export_pruned if pruned else export_unpruned)(model, path)


def _onnx_audit(path) -> dict:
    import onnx

    from vitedge.exporters.onnx import audit_ops

    return {"op_types": audit_ops(onnx.load(str(path)))}


def _onnx_parity(model, path, images) -> dict:
    from vitedge.exporters.validation import check_parity

    return check_parity(model, path, images, limit=64).to_dict()


# -- TFLite (litert-torch, and onnx2tf) ----------------------------------------------------------------------
def _litert_export(model, path, *, pruned: bool = True, feeds=None) -> None:
    import torch

    from vitedge.exporters.graphs import PrunedModelGraph, UnprunedModelGraph
    from vitedge.exporters.tflite import export_tflite

    graph = (PrunedModelGraph if pruned else UnprunedModelGraph)(model).eval()
    export_tflite(graph, (torch.zeros(1, *model.input_size),), path)


def _litert_require() -> None:
    import importlib.util

    from vitedge.exporters.tflite import EXTRA_HINT, TFLiteUnavailableError

    if importlib.util.find_spec("litert_torch") is None:
        raise TFLiteUnavailableError(f"TFLite export needs litert-torch: {EXTRA_HINT}")


def _onnx2tf_export(model, path, *, pruned: bool = True, feeds=None) -> dict:
    from vitedge.exporters.graphs import export_pruned, export_unpruned
    from vitedge.exporters.onnx2tf import ONNX2TF_OPSET, export_tflite_onnx2tf

    with tempfile.TemporaryDirectory(prefix="vitedge-onnx-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        (export_pruned if pruned else export_unpruned)(model, onnx_path, opset=ONNX2TF_OPSET)
        res = export_tflite_onnx2tf(onnx_path, path, feeds=feeds)
    return {"file": Path(path).name, "convert_seconds": res.convert_seconds, "parity_vs_onnx": res.parity}


def _onnx2tf_require() -> None:
    from vitedge.exporters.onnx2tf import find_onnx2tf

    find_onnx2tf()


def _tflite_audit(path) -> dict:
    from vitedge.exporters.tflite import audit_tflite, xnnpack_delegation

    return {"op_types": audit_tflite(path), "xnnpack": xnnpack_delegation(path).to_dict()}


def _tflite_parity(model, path, images) -> dict:
    from vitedge.exporters.tflite import check_parity_tflite

    out = check_parity_tflite(model, path, images, limit=32).to_dict()
    try:
        import tflite_runtime  # noqa: F401  (what Raspberry Pi users install)
    except ImportError:
        out["tflite_runtime"] = "not installed"
    else:
        out["tflite_runtime"] = check_parity_tflite(model, path, images, limit=8, runtime="tflite-runtime").to_dict()
    return out


THRESHOLD_TFLITE = ("threshold mode has a dynamic token count (NonZero), which litert-torch cannot convert and TFLite "
                    "delegates (XNNPACK, GPU, NNAPI) reject: use --mode capacity, or --tflite-converter onnx2tf "
                    "(pip install 'vitedge[onnx2tf]'; runs on LiteRT's reference kernels where delegates refuse it)")

register_exporter(Exporter(
    format="onnx", format_name="ONNX", converter=None, suffix=".onnx", modes=("threshold", "capacity"),
    static_shapes=False, refusal="", export=_onnx_export, audit=_onnx_audit, parity=_onnx_parity, require=_nothing))
register_exporter(Exporter(
    format="tflite", format_name="TFLite", converter="litert-torch", suffix=".tflite", modes=("capacity",),
    static_shapes=True, refusal=THRESHOLD_TFLITE, export=_litert_export, audit=_tflite_audit, parity=_tflite_parity,
    require=_litert_require))
register_exporter(Exporter(
    format="tflite", format_name="TFLite", converter="onnx2tf", suffix=".tflite", modes=("threshold",),
    static_shapes=False, refusal="--tflite-converter onnx2tf is for threshold mode (it has mis-converted capacity graphs): "
                                 "capacity mode uses the default litert-torch, drop --tflite-converter",
    export=_onnx2tf_export, audit=_tflite_audit, parity=_tflite_parity, require=_onnx2tf_require, feeds=8,
    default=False))
