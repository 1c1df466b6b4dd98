"""What gets exported: the whole pruned model, the unpruned model, and the parts the profiler times.

Every graph calls the same :class:`~vitedge.models.adapter.PrunableBlock` methods the pruned
model runs (``attention_part``, ``select``, ``mlp_part``), so a latency table measures exactly the
code that is deployed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitedge.exporters.onnx import export_onnx
from vitedge.models.adapter import PrunableViT
from vitedge.tables.latency import FIXED as FIXED_PARTS  # the parts a latency table holds: defined there
from vitedge.tables.latency import IN_GRAPH, PARTS


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


class CapacitySelectorPart(nn.Module):
    """(1, n, C), (1, n - p) -> (1, n, C): the capacity selector at K = n - p (every token kept, the
    largest one-hot MatMul for n inputs: the table errs on the slow side). Static n."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.block = model.vit.blocks[0]

    def forward(self, x, scores):
        return self.block.select_capacity(x, scores, scores.shape[1])


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


class BlocksPart(nn.Module):
    """(1, n, C) -> (1, classes): every block (attention part, then MLP part, each with its own weights) on n
    tokens, then the head; no selector. The latency table's in-graph reference: the parts timed the way they run
    inside the whole model (distinct weights in turn, one call), against the parts timed alone."""

    def __init__(self, model: PrunableViT):
        super().__init__()
        self.model = model

    def forward(self, x):
        for block in self.model.vit.blocks:
            x = block.mlp_part(block.attention_part(x)[0])
        return self.model.head(x)


class RunOverhead(nn.Module):
    """(1, n, C) -> (1, 1): the cost of one runtime call with a token tensor in, nothing computed.

    Subtracted from each part's time, added once per whole-model call (see the latency table)."""

    def forward(self, x):
        return x[:, :1, :1]


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


def part_inputs(model: PrunableViT, part: str, n: int) -> dict[str, tuple[int, ...]]:
    """Input names and shapes of ``part`` on n tokens (the fixed parts ignore n)."""
    C, p = model.dim, model.num_prefix
    if part == "embed":
        return {"image": (1, *model.input_size)}
    if part in ("selector", "capacity_selector"):
        return {"tokens": (1, n, C), "scores": (1, n - p)}
    return {"tokens": (1, n, C)}


def part_module(model: PrunableViT, part: str, *, selector_threshold: float = -1e30) -> nn.Module:
    """The module timed as ``part``. The threshold selector keeps every token by default (worst case)."""
    return {"attention": lambda: AttentionPart(model), "selector": lambda: SelectorPart(model, selector_threshold),
            "capacity_selector": lambda: CapacitySelectorPart(model), "mlp": lambda: MlpPart(model),
            "embed": lambda: EmbedPart(model), "head": lambda: HeadPart(model), "run_overhead": RunOverhead,
            IN_GRAPH: lambda: BlocksPart(model)}[part]().eval()


def min_tokens(model: PrunableViT, part: str) -> int:
    """Smallest n a part is profiled at: p + 1 (one patch token; zero-size score tensors are invalid
    in LiteRT, and fewer tokens never occur). The table holds that value below it."""
    return model.num_prefix + 1


def in_graph_tokens(model: PrunableViT, tokens: list[int]) -> list[int]:
    """The two token counts the in-graph reference (:class:`BlocksPart`) is timed at: N and the profiled n nearest
    N / 3 (at least p + 1), so that the table's correction is fitted over the range pruned schedules use."""
    N = model.num_tokens
    ns = [n for n in tokens if min_tokens(model, "attention") <= n < N] or [N]
    low = min(ns, key=lambda n: (abs(n - N / 3), n))
    return sorted({low, N})


_OUTPUTS = {"attention": ["out", "scores"], "selector": ["out"], "capacity_selector": ["out"], "mlp": ["out"],
            "embed": ["out"], "head": ["logits"], "run_overhead": ["out"], IN_GRAPH: ["logits"]}


def export_parts(model: PrunableViT, folder, *, parts=PARTS, tokens: list[int] | None = None) -> dict:
    """Export the profiled parts to ONNX.

    One file with a dynamic token axis serves every n for the attention, threshold selector, MLP,
    head, run-overhead and in-graph reference (:class:`BlocksPart`) parts; the capacity selector (constants sized by n) gets one file per n.

    Returns:
        {(part, n): path} with n = None for the files that serve every n.
    """
    folder = Path(folder)
    N = model.num_tokens
    tokens = tokens or list(range(1, N + 1))
    out = {}
    for part in (*parts, *FIXED_PARTS, IN_GRAPH):
        ins = part_inputs(model, part, N)
        args = tuple(torch.zeros(shape) for shape in ins.values())
        if part == "capacity_selector":
            for n in tokens:
                if n >= min_tokens(model, part):
                    args = tuple(torch.zeros(shape) for shape in part_inputs(model, part, n).values())
                    path = folder / f"{part}_n{n}.onnx"
                    export_onnx(part_module(model, part), args, path, input_names=list(ins), output_names=_OUTPUTS[part])
                    out[(part, n)] = path
            continue
        axes = None
        if part != "embed":
            axes = {"tokens": {1: "n"}, **({"scores": {1: "P"}} if "scores" in ins else {}),
                    **{o: {1: "n"} for o in _OUTPUTS[part] if o in ("out",)}}
        path = folder / f"{part}.onnx"
        export_onnx(part_module(model, part), args, path, input_names=list(ins), output_names=_OUTPUTS[part], dynamic_axes=axes)
        out[(part, None)] = path
    return out
