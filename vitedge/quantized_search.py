"""Accuracy in the loop at int8/fp16: re-rank the measured search's fitting candidates by the quality of their
*quantized* export on the calibration images.

The measured search (:class:`~vitedge.search.measured.MeasuredSearch`) scores candidates with the fp32 PyTorch
model (batched, cached); a quantized export can rank differently (CLS scores shift under quantization and flip
threshold decisions). :class:`QuantizedRerank` keeps the search as it is and changes one decision: for a latency
budget, the :data:`SHORTLIST` best fp32 candidates whose predicted latency fits (the table is profiled at the
requested precision) are exported, quantized as the main job does, run on the calibration images in the runtime,
and the one with the best quantized quality wins (accuracy when labelled, else top-1 agreement with the unpruned
fp32 model; ties: the fp32 order). ``fastest_within`` (``--max-accuracy-drop``) is left on fp32 quality.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .search.measured import Candidate, MeasuredSearch

SHORTLIST = 4        # fitting fp32 candidates whose quantized export is measured per budget
RERANK_IMAGES = 128  # calibration images each quantized candidate is run on


def rerank_quantized(ctx, search, artifact, *, log=print):
    """``search`` itself at fp32 (or when it is not the measured search), else a :class:`QuantizedRerank` over it
    that exports candidates with ``artifact`` (a :class:`~vitedge.quantized.PrecisionArtifact`)."""
    if getattr(ctx.opts, "precision", "fp32") == "fp32" or not isinstance(search, MeasuredSearch):
        return search
    return QuantizedRerank(search, ctx, artifact, log=log)


class QuantizedRerank(MeasuredSearch):
    """A :class:`MeasuredSearch` whose :meth:`best` re-ranks its fitting shortlist by quantized quality (see the
    module docstring). It shares the wrapped search's evaluated candidates."""

    def __init__(self, inner: MeasuredSearch, ctx, artifact, *, log=print):
        self.__dict__.update(inner.__dict__)  # the same candidate cache, planner, evaluator, knobs
        self.ctx, self.artifact, self.log = ctx, artifact, log
        self.quantized_scores: dict[tuple, float] = {}  # by (mode, indices): auto mode searches both modes
        self.reranks: list[dict] = []
        artifact.reranks = self.reranks  # the report's precision record lists them (PrecisionArtifact.audit)

    def _quantized_score(self, cand: Candidate) -> float:
        """Quality of ``cand``'s quantized export on the calibration images (fraction), cached."""
        key = (cand.mode, cand.indices)
        if key in self.quantized_scores:
            return self.quantized_scores[key]
        from .exporters.quantize import _runner

        model, images = self.ctx.model, self.ctx.images.subset(RERANK_IMAGES)
        schedule = self.schedule(cand, cand.predicted_ms)
        with tempfile.TemporaryDirectory(prefix="vitedge-rerank-") as tmp:
            path = Path(tmp) / f"candidate{self.artifact.suffix}"
            with model.pruning(schedule):
                self.artifact.export(model, path)
            run = _runner(path, "onnxruntime" if self.artifact.fmt == "onnx" else "litert")
            top1 = np.array([int(np.argmax(run(images.images[i:i + 1])[0])) for i in range(len(images))])
        target = images.labels if images.labels is not None else self.evaluator.reference_top1[:len(images)]
        score = float((top1 == target).mean())
        self.quantized_scores[key] = score
        return score

    def best(self, budget: float) -> Candidate:
        """The fitting candidate with the best quantized quality among the fp32 search's :data:`SHORTLIST` best.

        Raises:
            as :meth:`MeasuredSearch.best`.
        """
        top = super().best(budget)
        fit = sorted(self._fitting(budget), key=self.key, reverse=True)[:SHORTLIST]
        if top not in fit:
            fit = [top, *fit[:SHORTLIST - 1]]
        scored = [(self._quantized_score(c), -i, c) for i, c in enumerate(fit)]
        score, _, pick = max(scored, key=lambda t: t[:2])
        self.reranks.append({"budget_ms": float(budget), "fp32_pick": [top.mode, [int(i) for i in top.indices]],
                             "pick": [pick.mode, [int(i) for i in pick.indices]],
                             "quantized_quality": [{"mode": c.mode, "candidates": [int(i) for i in c.indices], "quality": s} for s, _, c in scored]})
        if pick is not top:
            self.log(f"search: the {self.ctx.opts.precision} export re-ranked the shortlist: quantized quality "
                     f"{100 * score:.1f} % vs {100 * self.quantized_scores[(top.mode, top.indices)]:.1f} % for the fp32 pick")
        return pick
