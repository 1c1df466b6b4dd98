"""TFLite export through litert-torch (no TensorFlow), with validation.

- :func:`export_tflite`: ``litert_torch.convert`` of a static-shape graph (capacity mode, or no
  pruning), written atomically; several signatures in one file for the profiled parts.
- :func:`audit_tflite`: op codes from the flatbuffer; rejects TOPK_V2, sort-like ops, scatter,
  custom and Flex (select-TF) ops.
- :func:`xnnpack_delegation`: how many of the graph's nodes the XNNPACK delegate took, found by
  walking back from the delegate nodes' inputs to the nodes that must still run on their own.
- :func:`check_parity_tflite`: logits and kept tokens against PyTorch in ai-edge-litert (and in
  tflite-runtime when it is installed).

Threshold mode (NonZero, dynamic token count) cannot be converted by litert-torch ("The size
argument of jnp.nonzero must be statically specified"): it is refused with that reason.
Needs the extra: ``pip install 'vitedge[tflite]'``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vitedge.exporters.onnx import ExportError, OpAuditError
from vitedge.io import atomic_path

FORBIDDEN_TFLITE = frozenset({"TOPK_V2", "ARG_MAX", "ARG_MIN", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5",
                              "UNIQUE", "SCATTER_ND", "STABLEHLO_SCATTER", "STABLEHLO_SORT", "CUSTOM", "DELEGATE"})
EXTRA_HINT = "install the TFLite extra: pip install 'vitedge[tflite]'"


class TFLiteUnavailableError(ExportError):
    """litert-torch / ai-edge-litert are not installed."""


@contextlib.contextmanager
def _quiet_logging():
    """litert-torch logs its progress and dtype notes; keep vitedge's output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise TFLiteUnavailableError(f"TFLite support needs {module.replace('_', '-')}: {EXTRA_HINT}") from None


def export_tflite(module: torch.nn.Module, example_inputs: tuple | None, path, *,
                  signatures: dict[str, tuple] | None = None, audit: bool = True) -> dict[str, int]:
    """Convert ``module`` to ``path`` (atomic). Returns the op counts (see :func:`audit_tflite`).

    Args:
        module: eval-mode module whose graph has static shapes.
        example_inputs: inputs of the single (default) signature; or None with ``signatures``.
        signatures: {name: example inputs}, one signature each (weights shared in the file).

    Raises:
        TFLiteUnavailableError: litert-torch missing; ExportError: conversion failed;
        OpAuditError: forbidden ops.
    """
    litert_torch = _require("litert_torch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
                warnings.simplefilter("ignore")
                if signatures:
                    conv = None
                    for name, args in signatures.items():
                        conv = (litert_torch if conv is None else conv).signature(name, module, args)
                    edge = conv.convert()
                else:
                    edge = litert_torch.convert(module, example_inputs)
                edge.export(str(tmp))
            ops = audit_tflite(tmp) if audit else op_counts(tmp)
        return ops
    except (ExportError, OpAuditError):
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "nonzero" in str(e).lower():
            raise ExportError("threshold mode (NonZero: a dynamic token count) cannot be converted by litert-torch: "
                              "use --mode capacity for TFLite") from None
        raise ExportError(f"litert-torch conversion of {type(module).__name__} failed: {first}") from e


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        raise TFLiteUnavailableError(f"reading .tflite files needs ai-edge-litert: {EXTRA_HINT}") from None
    return fb


def op_counts(path) -> dict[str, int]:
    """{op name: count} over every subgraph of a .tflite file (custom ops as ``CUSTOM:<code>``)."""
    fb = _schema()
    buf = Path(path).read_bytes()
    try:
        model = fb.Model.GetRootAsModel(buf, 0)
        if not fb.Model.ModelBufferHasIdentifier(buf, 0):
            raise ValueError("no TFL3 file identifier")
        fb.ModelT.InitFromObj(model)  # walks every table and vector: a truncated file fails here
        names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(model.OperatorCodesLength()):
            c = model.OperatorCodes(i)
            name = names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "UNKNOWN")
            if name == "CUSTOM":
                name = f"CUSTOM:{(c.CustomCode() or b'').decode(errors='replace')}"
            codes.append(name)
        counts: Counter = Counter()
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for j in range(sg.OperatorsLength()):
                counts[codes[sg.Operators(j).OpcodeIndex()]] += 1
    except Exception as e:  # a truncated or foreign file
        raise ExportError(f"{path} is not a readable .tflite file ({type(e).__name__})") from None
    return dict(sorted(counts.items()))


def audit_tflite(path) -> dict[str, int]:
    """Op counts; raises OpAuditError for TOPK_V2, arg-max/min, NMS, unique, scatter, custom or Flex ops."""
    counts = op_counts(path)
    bad = sorted(k for k in counts if k in FORBIDDEN_TFLITE or k.startswith("CUSTOM") or k.startswith("FLEX"))
    if bad:
        raise OpAuditError(f"{Path(path).name} contains ops edge runtimes reject: {', '.join(bad)}")
    return counts


@dataclass
class Delegation:
    """XNNPACK coverage of a .tflite graph (per signature subgraph, summed)."""

    nodes: int            # nodes of the graph
    delegated: int        # nodes taken by XNNPACK
    partitions: int       # delegate nodes (1 per contiguous delegated region)
    not_delegated: dict   # {op name: count} of the nodes left to the reference kernels

    @property
    def all_delegated(self) -> bool:
        return self.delegated == self.nodes

    def to_dict(self) -> dict:
        return {**asdict(self), "all_delegated": self.all_delegated}


def xnnpack_delegation(path, threads: int = 1) -> Delegation:
    """Which nodes of the primary subgraph XNNPACK delegates (the default delegate of ai-edge-litert).

    The interpreter lists the original nodes followed by one DELEGATE node per partition. Walking
    back from the tensors the DELEGATE nodes and the graph outputs need, any tensor not produced by
    a DELEGATE node must come from an original node that still runs outside the delegate.
    """
    _require("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()  # the default delegate is applied here
    w = interp._interpreter
    n_nodes = w.NumNodes()
    names = [w.NodeName(i) for i in range(n_nodes)]
    delegates = [i for i in range(n_nodes) if names[i] == "DELEGATE"]
    originals = [i for i in range(n_nodes) if names[i] != "DELEGATE"]
    producer = {t: i for i in originals for t in w.NodeOutputs(i)}
    from_delegate = {t for d in delegates for t in w.NodeOutputs(d)}
    needed = [t for d in delegates for t in w.NodeInputs(d)] + list(w.OutputIndices())
    running: set[int] = set()
    while needed:
        t = int(needed.pop())
        if t < 0 or t in from_delegate or t not in producer:
            continue
        node = producer[t]
        if node not in running:
            running.add(node)
            needed.extend(int(v) for v in w.NodeInputs(node))
    left = Counter(names[i] for i in running)
    return Delegation(nodes=len(originals), delegated=len(originals) - len(running), partitions=len(delegates),
                      not_delegated=dict(sorted(left.items())))


@dataclass
class TFLiteParity:
    runtime: str
    images: int
    max_abs_diff: float
    top1_agreement: float
    kept_match: float
    boundary_flips: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def check_parity_tflite(model, path, images, *, atol: float = 1e-4, limit: int = 32, runtime: str = "litert") -> TFLiteParity:
    """Compare the .tflite with the PyTorch model at batch 1 (logits, kept tokens, top-1).

    Outputs are taken by name when the file keeps the ONNX names (onnx2tf: ``logits``,
    ``kept_tokens``), else in name order (litert-torch: ``output_0``, ``output_1``). As in
    :func:`~vitedge.exporters.validation.check_parity`, an image whose kept count differs only
    because a CLS score lies within float rounding of a threshold (threshold mode) is a
    *boundary flip*: counted, its logits not compared; at most max(1, 10 %) of the images.

    Args:
        runtime: "litert" (ai-edge-litert) or "tflite-runtime" (skipped by the caller if absent).

    Raises:
        ParityError: logits off by more than ``atol``, different kept tokens or top-1.
    """
    from vitedge.exporters.validation import ParityError, _boundary_flip

    if runtime == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(path), num_threads=1)
    runner = interp.get_signature_runner()
    in_name = list(interp.get_signature_list()["serving_default"]["inputs"])[0]
    n = min(limit, len(images))
    worst, top1, kept_ok, flips = 0.0, 0, 0, 0
    with torch.no_grad():
        for i in range(n):
            x = images.images[i:i + 1]
            ref = model.forward_with_info(torch.from_numpy(x), want_scores=True)
            out = runner(**{in_name: x})
            ref_kept = np.array([int(k) for k in ref.kept])
            if set(out) == {"logits"}:  # onnx2tf drops kept_tokens when it is a constant (nothing pruned)
                logits, kept = out["logits"], np.full_like(ref_kept, model.num_patches)
            else:
                logits, kept = (out["logits"], out["kept_tokens"]) if {"logits", "kept_tokens"} <= set(out) else (out[k] for k in sorted(out))
            kept = np.asarray(kept).astype(np.int64)
            top1 += int(logits.argmax() == ref.logits.numpy().argmax())
            if np.array_equal(kept, ref_kept):
                kept_ok += 1
                worst = max(worst, float(np.abs(logits - ref.logits.numpy()).max()))
            elif kept.shape == ref_kept.shape and _boundary_flip(model, ref, kept, ref_kept):
                flips += 1
    res = TFLiteParity(runtime=runtime, images=n, max_abs_diff=worst, top1_agreement=top1 / n, kept_match=kept_ok / n,
                       boundary_flips=flips)
    if worst > atol or top1 < n - flips or kept_ok + flips < n or flips > max(1, n // 10):
        raise ParityError(f"{Path(path).name} disagrees with PyTorch in {runtime}: max |logit diff| {worst:.2e} (atol {atol:.0e}), "
                          f"kept tokens equal on {kept_ok}/{n}" + (f" ({flips} threshold-boundary flips)" if flips else "")
                          + f", top-1 equal on {top1}/{n}")
    return res


TFLITE_PARTS = ("attention", "capacity_selector", "mlp")  # NonZero (threshold selector) does not convert


def export_parts_tflite(model, folder, tokens: list[int]) -> dict:
    """Export the profiled parts to TFLite: one file per part with one signature per token count n
    (litert-torch needs static shapes; weights are shared between signatures).

    Returns:
        {(part, n): path} (several n map to the same multi-signature file; the runner picks the
        signature whose input shapes match; the in-graph reference at the n of
        :func:`vitedge.exporters.graphs.in_graph_tokens`) and {(fixed part, None): path}.
    """
    from vitedge.exporters.graphs import FIXED_PARTS, IN_GRAPH, in_graph_tokens, min_tokens, part_inputs, part_module

    folder = Path(folder)
    out = {}
    for part in TFLITE_PARTS:
        ns = [n for n in tokens if n >= min_tokens(model, part)]
        sigs = {f"n{n}": tuple(torch.zeros(s) for s in part_inputs(model, part, n).values()) for n in ns}
        path = folder / f"{part}.tflite"
        export_tflite(part_module(model, part), None, path, signatures=sigs)
        out.update({(part, n): path for n in ns})
    for part in FIXED_PARTS:
        args = tuple(torch.zeros(s) for s in part_inputs(model, part, model.num_tokens).values())
        path = folder / f"{part}.tflite"
        export_tflite(part_module(model, part), args, path)
        out[(part, None)] = path
    ns = in_graph_tokens(model, tokens)  # the in-graph reference: every block in one graph, at two n
    path = folder / f"{IN_GRAPH}.tflite"
    export_tflite(part_module(model, IN_GRAPH), None, path,
                  signatures={f"n{n}": (torch.zeros(1, n, model.dim),) for n in ns})
    out.update({(IN_GRAPH, n): path for n in ns})
    return out
