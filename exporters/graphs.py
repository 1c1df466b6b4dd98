"""What gets exported: the whole pruned model, the unpruned model, and the parts the profiler times.

Every graph calls the same :class:`~vitedge.models.adapter.PrunableBlock` methods the pruned
model runs (``attention_part``, ``select``, ``mlp_part``), so a latency table measures exactly the
code that is deployed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.adapter import PrunableViT
from .onnx import export_onnx

PARTS = ("attention", "selector", "mlp")
FIXED_PARTS = ("embed", "head", "run_overhead")


class PrunedModelGraph(nn.Module):
    """(1, 3, H, W) -> logits (1, classes), kept_tokens (L,) int64 patch tokens leaving each block."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model.forward_with_info(x)
        return out.logits, torch.stack(out.kept)


class UnprunedModelGraph(nn.Module):
    """timm's own forward: (1, 3, H, W) -> logits. The baseline every pruned export is compared to."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.vit = model.vit

    def forward(self, x):
        return self.vit(x)


class AttentionPart(nn.Module):
    """(1, n, C) -> (1, n, C) tokens after MSA + residual, (1, n - p) CLS scores."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.block = model.vit.blocks[0]

    def forward(self, x):
        return self.block.attention_part(x)


class SelectorPart(nn.Module):
    """(1, n, C), (1, n - p) -> (1, p + K, C): GreaterOrEqual + NonZero + Gather."""

    def __init__(self, model: PrunableViT, threshold: float):
        super().__init__()
        self.block, self.threshold = model.vit.blocks[0], threshold

    def forward(self, x, scores):
        return self.block.select(x, scores, self.threshold)


class MlpPart(nn.Module):
    """(1, n, C) -> (1, n, C) tokens after MLP + residual."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.block = model.vit.blocks[0]

    def forward(self, x):
        return self.block.mlp_part(x)


class EmbedPart(nn.Module):
    """(1, 3, H, W) -> (1, N, C)."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.embed(x)


class HeadPart(nn.Module):
    """(1, n, C) -> (1, classes)."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.head(x)


class RunOverhead(nn.Module):
    """(1, n, C) -> (1, 1): the cost of one runtime call with a token tensor in, nothing computed.

    Subtracted from each part's time, added once per whole-model call (see the latency table)."""

    def forward(self, x):
        return x[:, :1, :1]


@dataclass(frozen=True)
class PartGraph:
    """A profiled part: its ONNX file, input names and how inputs are shaped for n tokens."""

    name: str
    path: Path
    inputs: tuple[str, ...]


def export_pruned(model: PrunableViT, path, *, opset: int | None = None):
    """Export the model with its current thresholds. Returns the ``onnx.ModelProto``.

    Outputs ``logits`` (1, classes) and ``kept_tokens`` (L,) int64. Batch 1, static image size.
    """
    c, h, w = model.input_size
    kw = {} if opset is None else {"opset": opset}
    return export_onnx(PrunedModelGraph(model).eval(), (torch.zeros(1, c, h, w),), path,
                       input_names=["image"], output_names=["logits", "kept_tokens"], **kw)


def export_unpruned(model: PrunableViT, path, *, opset: int | None = None):
    """Export timm's unpruned forward (``logits`` only)."""
    c, h, w = model.input_size
    kw = {} if opset is None else {"opset": opset}
    return export_onnx(UnprunedModelGraph(model).eval(), (torch.zeros(1, c, h, w),), path,
                       input_names=["image"], output_names=["logits"], **kw)


def export_parts(model: PrunableViT, folder, *, selector_threshold: float = 0.0) -> dict[str, PartGraph]:
    """Export the profiled parts with a dynamic token axis (one file serves every n).

    The selector part is exported with ``selector_threshold`` (default 0.0: every token kept, the
    most expensive gather, so the table errs on the slow side).

    Returns:
        {part name: PartGraph} for :data:`PARTS` and :data:`FIXED_PARTS`.
    """
    folder = Path(folder)
    N, C = model.num_tokens, model.dim
    tok = torch.zeros(1, N, C)
    dyn = {"tokens": {1: "n"}}
    specs = {
        "attention": (AttentionPart(model), (tok,), ["tokens"], ["out", "scores"], {**dyn, "out": {1: "n"}, "scores": {1: "P"}}),
        "selector": (SelectorPart(model, selector_threshold), (tok, torch.zeros(1, N - model.num_prefix)),
                     ["tokens", "scores"], ["out"], {**dyn, "scores": {1: "P"}, "out": {1: "k"}}),
        "mlp": (MlpPart(model), (tok,), ["tokens"], ["out"], {**dyn, "out": {1: "n"}}),
        "embed": (EmbedPart(model), (torch.zeros(1, *model.input_size),), ["image"], ["out"], None),
        "head": (HeadPart(model), (tok,), ["tokens"], ["logits"], dyn),
        "run_overhead": (RunOverhead(), (tok,), ["tokens"], ["out"], dyn),
    }
    parts = {}
    for name, (module, args, ins, outs, axes) in specs.items():
        path = folder / f"{name}.onnx"
        export_onnx(module.eval(), args, path, input_names=ins, output_names=outs, dynamic_axes=axes)
        parts[name] = PartGraph(name=name, path=path, inputs=tuple(ins))
    return parts
