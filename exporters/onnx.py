"""Export a (pruned) ViT or one of its parts to ONNX: torch.onnx -> onnxsim -> onnx.checker -> op audit.

The pruned graph is sort-free: threshold selection is GreaterOrEqual + NonZero + Gather. The op
audit rejects TopK, sort-like ops, NonMaxSuppression, Unique and any op outside the standard ONNX
domain, so the file runs on edge runtimes and their delegates' reference kernels.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import torch

from vitedge.devices.base import file_sha256  # noqa: F401  (re-exported: vitedge.pipeline)
from vitedge.errors import ExportValidationError
from vitedge.io import atomic_path

DEFAULT_OPSET = 18
# ONNX has no Sort/ArgSort op; the names guard against custom domains and future opsets.
FORBIDDEN_OPS = frozenset({"TopK", "Sort", "ArgSort", "NonMaxSuppression", "Unique", "ScatterElements", "ScatterND"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


class ExportError(RuntimeError):
    """Export or validation failed (one-line message)."""


class OpAuditError(ExportError, ExportValidationError):
    """The graph holds ops edge runtimes reject (TopK, sort-like, NMS, Unique, scatter, custom domains): an
    export validation failure (exit 5)."""


def audit_ops(model) -> dict[str, int]:
    """Count op types (including subgraphs) and reject forbidden ones.

    Args:
        model: an ``onnx.ModelProto``.

    Returns:
        {op_type: count}, sorted by name.

    Raises:
        OpAuditError: a forbidden op or a non-standard domain is present.
    """
    counts: Counter = Counter()
    bad: set[str] = set()

    def visit(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            if node.op_type in FORBIDDEN_OPS or node.domain not in STANDARD_DOMAINS:
                bad.add(f"{node.domain + '::' if node.domain else ''}{node.op_type}")
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    if bad:
        raise OpAuditError(f"exported graph contains ops edge runtimes reject: {', '.join(sorted(bad))}")
    return dict(sorted(counts.items()))



def export_onnx(module: torch.nn.Module, example_inputs: tuple, path: str | Path, *, input_names: list[str],
                output_names: list[str], dynamic_axes: dict | None = None, opset: int = DEFAULT_OPSET,
                simplify: bool = True, audit: bool = True):
    """Export ``module`` to ``path`` (written atomically: temp file, then rename).

    Uses the TorchScript-based ``torch.onnx.export(dynamo=False)``, ~10x faster than the dynamo
    exporter for these graphs (both give the same ops here; see the export field notes).

    Args:
        module: a module in eval mode.
        example_inputs: tuple of example tensors, e.g. ((1, 3, H, W),).
        path: destination ``.onnx``.
        input_names, output_names, dynamic_axes: as in ``torch.onnx.export``.
        opset: ONNX opset (default 18).
        simplify: run onnxsim (kept only when its own check passes).
        audit: run :func:`audit_ops`.

    Returns:
        The final ``onnx.ModelProto``.

    Raises:
        ExportError: torch export or the ONNX checker failed; OpAuditError: forbidden ops.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    torch.onnx.export(module, example_inputs, str(tmp), input_names=input_names, output_names=output_names,
                                      dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)
            model = onnx.load(str(tmp))
            if simplify:
                import onnxsim

                try:
                    simplified, ok = onnxsim.simplify(model)
                except Exception as e:  # onnxsim failures are not fatal: the unsimplified graph is valid
                    warnings.warn(f"onnxsim failed ({type(e).__name__}); keeping the unsimplified graph", stacklevel=2)
                    ok = False
                if ok:
                    model = simplified
            try:
                onnx.checker.check_model(model, full_check=True)
            except Exception as e:
                raise ExportError(f"ONNX checker rejected the export of {type(module).__name__}: {str(e).splitlines()[0]}") from None
            if audit:
                audit_ops(model)
            onnx.save(model, str(tmp))
        return model
    except ExportError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx export of {type(module).__name__} failed: {first}") from e
