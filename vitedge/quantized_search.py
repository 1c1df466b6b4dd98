"""Accuracy in the loop at int8/fp16: re-rank the measured search's fitting candidates by the quality of their
*quantized* export on the calibration images.

The measured search (:class:`~vitedge.search.measured.MeasuredSearch`) scores candidates with the fp32 PyTorch
model (batched, cached); a quantized export can rank differently (CLS scores shift under quantization and flip
threshold decisions). :class:`QuantizedRerank` keeps the search as it is and changes one decision: for a latency
budget, the :data:`SHORTLIST` best fp32 candidates whose predicted latency fits (the table is profiled at the
requested precision) are exported, quantized as the main job does, run on the calibration images in the runtime,
and the one with the best quantized quality wins (accuracy when labelled, else top-1 agreement with the unpruned
fp32 model; ties: the fp32 order).

``--max-accuracy-drop D`` holds the *quantized* export to D: :meth:`QuantizedRerank.fastest_within` walks the
candidates whose fp32 drop bound fits, fastest first, exports each at the requested precision and returns the first
whose quantized bound fits (:meth:`QuantizedRerank.drop_bound_of`: the fp32 bound plus the drop quantization adds
on the same images), at most :data:`ACCURACY_SCAN` exports; the
unpruned model is the floor (quantization's own drop is not the schedule's to remove).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .search.measured import Candidate, MeasuredSearch

SHORTLIST = 4        # fitting fp32 candidates whose quantized export is measured per budget
RERANK_IMAGES = 256  # calibration images (at most) each quantized candidate is run on: the quantization's drop
                     # is paired with the fp32 one on the same images, one flip is 100 / n points
ACCURACY_SCAN = 12   # --max-accuracy-drop: quantized exports tried, fastest first, before the unpruned floor


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
        self.quantized_top1: dict[tuple, np.ndarray] = {}
        self.reranks: list[dict] = []
        artifact.reranks = self.reranks  # the report's precision record lists them (PrecisionArtifact.audit)

    def _quantized_top1(self, cand: Candidate) -> np.ndarray:
        """(n,) top-1 of ``cand``'s quantized export on the first n = min(:data:`RERANK_IMAGES`, D) calibration
        images, run at batch 1 in the runtime; cached by (mode, indices)."""
        key = (cand.mode, cand.indices)
        if key in self.quantized_top1:
            return self.quantized_top1[key]
        from .exporters.quantize import _runner

        model, images = self.ctx.model, self.evaluator.images.subset(RERANK_IMAGES)  # the images fp32 quality is on
        schedule = self.schedule(cand, cand.predicted_ms)
        with tempfile.TemporaryDirectory(prefix="vitedge-rerank-") as tmp:
            path = Path(tmp) / f"candidate{self.artifact.suffix}"
            with model.pruning(schedule):
                self.artifact.export(model, path)
            run = _runner(path, "onnxruntime" if self.artifact.fmt == "onnx" else "litert")
            top1 = np.array([int(np.argmax(run(images.images[i:i + 1])[0])) for i in range(len(images))])
        self.quantized_top1[key] = top1
        return top1

    def _quantized_score(self, cand: Candidate) -> float:
        """Quality of ``cand``'s quantized export on the calibration images (fraction: accuracy when labelled, else
        top-1 agreement with the unpruned fp32 model), cached."""
        key = (cand.mode, cand.indices)
        if key not in self.quantized_scores:
            top1 = self._quantized_top1(cand)
            labels = self.evaluator.labels
            target = labels[:len(top1)] if labels is not None else self.evaluator.reference_top1[:len(top1)]
            self.quantized_scores[key] = float((top1 == target).mean())
        return self.quantized_scores[key]

    def drop_bound_of(self, cand: Candidate, bounds: dict | None = None) -> float:
        """The drop bound (points) of ``cand``'s *quantized* export: the fp32 bound (:meth:`MeasuredSearch.drop_bounds`,
        or ``bounds``, which holds the sampling margin) plus the drop quantization adds to the fp32 candidate on the
        same n images (paired: the per-image drops of the two files differ only where quantization changed a
        prediction; a gain counts as 0). The unpruned model: its fp32 bound (the floor)."""
        bounds = self.drop_bounds() if bounds is None else bounds
        fp32 = bounds.get(id(cand), cand.drop_bound)
        if all(i == 0 for i in cand.indices):
            return fp32
        top1 = self._quantized_top1(cand)
        shift = self.evaluator.per_image_drop(top1) - self.evaluator.per_image_drop(cand.quality.top1[:len(top1)])
        return fp32 + max(100.0 * float(shift.mean()), 0.0)

    def fastest_within(self, drop_points: float) -> Candidate:
        """The fastest (predicted) candidate whose quantized export keeps ``drop_points`` (:meth:`drop_bound_of`).

        The candidates whose fp32 bound fits are tried fastest first, at most :data:`ACCURACY_SCAN` exports. A
        candidate whose slack (``drop_points`` - its fp32 bound) is below every drop quantization added to the
        candidates already refused is passed over unexported (it would need quantization to cost it less than any
        seen so far; what ships is still checked). The unpruned model when none fits.

        Raises:
            as :meth:`MeasuredSearch.fastest_within`.
        """
        super().fastest_within(drop_points)  # validates, refines around the fp32 answer
        bounds = self.drop_bounds()
        unpruned = self.evaluate("unpruned", [0] * self.depth)
        fits = sorted((c for c in self._cands.values() if c is not unpruned and bounds[id(c)] <= drop_points + 1e-9),
                      key=lambda c: (c.predicted_ms, -c.top1))
        pick, tried, added, passed = unpruned, [], [], 0
        for c in fits:
            if len(tried) >= ACCURACY_SCAN:
                break
            slack = drop_points - bounds[id(c)]
            if added and slack < min(added) - 1e-9:
                passed += 1
                continue
            b = self.drop_bound_of(c, bounds)
            tried.append({"mode": c.mode, "candidates": [int(i) for i in c.indices], "predicted_ms": c.predicted_ms,
                          "fp32_bound_points": bounds[id(c)], "quantized_bound_points": b})
            if b <= drop_points + 1e-9:
                pick = c
                break
            added.append(b - bounds[id(c)])
        self.reranks.append({"max_accuracy_drop": float(drop_points), "tried": tried, "passed_over": passed,
                             "pick": [pick.mode, [int(i) for i in pick.indices]]})
        if fits and pick is not fits[0]:
            self.log(f"search: the {self.ctx.opts.precision} export of the fastest fp32 schedule within {drop_points:g} points "
                     f"drops more; {len(tried)} quantized exports tried ({passed} passed over), the fastest that keeps it "
                     f"is predicted {pick.predicted_ms:.4g} ms")
        return pick

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
