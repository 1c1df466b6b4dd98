"""Baselines and curve arithmetic shared by the benchmark scripts (budget_fidelity.py, pareto.py).

- constant Top-K (RCTP's baseline): block l keeps K_l = P - r (l + 1) patch tokens by CLS attention,
  exported with vitedge's sort-free capacity gather;
- random tokens at the same constant counts (a sanity floor): the same capacity graph, the scores
  replaced by seeded random numbers (same selection cost);
- POMT-style single pruning site: keep K patch tokens at block l only, utility
  0.5 (1 - L / Lmax) + 0.5 (A / Amax) as in the POMT code;
- (ToMe, written from its paper, is in ``_tome.py``);
- interpolation on accuracy/latency curves (Pareto front, latency at a target accuracy).

Nothing here edits the library: the forwards below call the public pieces of
:class:`~vitedge.models.adapter.PrunableViT` (``embed``, ``attention_part``, ``select_capacity``,
``mlp_part``, ``head``) and timm's own submodules.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import Block


# ---------------------------------------------------------------------------------------- threads
@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch with ``n`` intra-op threads inside the block (evaluation at 1 thread is identical
    in result and avoids oversubscription on a busy machine); restores the previous setting."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------- constant Top-K
def constant_capacities(P: int, L: int, r: float, min_keep: int = 1) -> list[int]:
    """RCTP's constant Top-K: block l keeps P - r (l + 1) patch tokens (rounded, at least ``min_keep``)."""
    return [int(max(round(P - r * (l + 1)), min_keep)) for l in range(L)]


def constant_top_k(ctx, work: Path, max_r: int) -> list[dict]:
    """RCTP's constant Top-K: block l keeps P - r (l + 1) patch tokens; capacity (sort-free) export.

    Exports and measures r = 0..max_r on ``ctx.device``; accuracy on the digits test split (PyTorch).
    """
    from vitedge.data.digits import digits_split
    from vitedge.exporters.graphs import export_pruned

    model, P, L = ctx.model, ctx.model.num_patches, ctx.model.depth
    test = digits_split("test")
    rows = []
    for r in range(0, max_r + 1):
        caps = constant_capacities(P, L, r)
        model.set_capacities([None if k == P else k for k in caps])
        path = work / f"topk_r{r}.onnx"
        export_pruned(model, path)
        m = ctx.device.measure_model(path, ctx.feeds(), name=f"topk_r{r}")
        with torch.no_grad(), torch_threads(1):  # same predictions; no oversubscription on a busy machine
            pred = np.concatenate([model(torch.from_numpy(test.images[s:s + 100])).argmax(-1).numpy()
                                   for s in range(0, len(test), 100)])
        rows.append({"r": r, "capacities": caps, "measured_ms": m["median_ms"], "p90_ms": m["p90_ms"],
                     "accuracy": float((pred == test.labels).mean())})
    model.set_thresholds([None] * L)
    return rows


def accuracy_at(points, latency: float, x: str = "measured_ms", y: str = "accuracy") -> float | None:
    """Accuracy at ``latency`` by linear interpolation between measured points (None outside their range)."""
    pts = sorted((p[x], p[y]) for p in points if p.get(x) is not None and p.get(y) is not None)
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if latency < xs[0] or latency > xs[-1]:
        return None
    return float(np.interp(latency, xs, ys))


def top_k_at(rows: list[dict], latency: float) -> float | None:
    """Top-K accuracy at ``latency`` by linear interpolation (None outside the measured range)."""
    return accuracy_at(rows, latency)


# ------------------------------------------------------------------------------ random tokens
def random_capacity_logits(model, x: torch.Tensor, capacities, generator: torch.Generator) -> torch.Tensor:
    """The capacity-mode forward of ``model`` with the CLS scores replaced by uniform random numbers.

    Same blocks, same sort-free capacity selector (``select_capacity``), so the exported graph and its
    cost are those of constant Top-K; only which tokens survive differs (a random subset, nested over blocks).
    """
    p = model.num_prefix
    tokens = model.embed(x)
    for blk, k in zip(model.vit.blocks, capacities):
        if k is None:
            tokens = Block.forward(blk, tokens)
            continue
        tokens, scores = blk.attention_part(tokens)
        rnd = torch.rand(scores.shape, generator=generator)
        tokens = blk.mlp_part(blk.select_capacity(tokens, rnd, min(int(k), tokens.shape[1] - p)))
    return model.head(tokens)


def evaluate_random_capacity(model, images, capacities, seed: int, batch_size: int = 100) -> np.ndarray:
    """(D,) top-1 of the random-token forward, seeded (deterministic for a seed and batch size)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            out.append(random_capacity_logits(model, torch.from_numpy(images.images[s:s + batch_size]),
                                              capacities, gen).argmax(-1).numpy())
    return np.concatenate(out)


def check_random_path(model, images, capacities, n: int = 8) -> float:
    """Max |logit difference| between :func:`random_capacity_logits` fed the *real* CLS scores and
    ``model`` in capacity mode: checks that the random baseline runs the same computation."""
    p = model.num_prefix
    x = torch.from_numpy(images.images[:n])
    with torch.no_grad():
        tokens = model.embed(x)
        for blk, k in zip(model.vit.blocks, capacities):
            tokens, scores = blk.attention_part(tokens)
            tokens = blk.mlp_part(blk.select_capacity(tokens, scores, min(int(k), tokens.shape[1] - p)))
        mine = model.head(tokens)
        model.set_capacities(capacities)
        try:
            ref = model(x)
        finally:
            model.set_thresholds([None] * model.depth)
    return float((mine - ref).abs().max())


# ------------------------------------------------------------------------- POMT single site
def single_site_capacities(L: int, site: int, K: int) -> list:
    """Capacity schedule with one pruning site: block ``site`` keeps K patch tokens, no other selector."""
    return [K if l == site else None for l in range(L)]


def single_site_accuracy_grid(model, images, sites, ks, batch_size: int = 100) -> np.ndarray:
    """Top-1 accuracy (vs ``images.labels``) of every single-site schedule (site l, K), shape (len(sites), len(ks)).

    The blocks before the site and the site's attention part run once per site; only the selection
    and what follows run per K (same arithmetic as ``PrunableViT`` in capacity mode).
    """
    p = model.num_prefix
    order = sorted(range(len(sites)), key=lambda i: sites[i])   # run the sites front to back
    acc = np.zeros((len(sites), len(ks)))
    with torch.no_grad():
        for s0 in range(0, len(images), batch_size):
            x = torch.from_numpy(images.images[s0:s0 + batch_size])
            y = images.labels[s0:s0 + batch_size]
            tokens, done = model.embed(x), 0
            for i in order:
                site = sites[i]
                for l in range(done, site):
                    tokens = Block.forward(model.vit.blocks[l], tokens)
                done = site
                blk = model.vit.blocks[site]
                att, scores = blk.attention_part(tokens)
                for j, K in enumerate(ks):
                    t = blk.mlp_part(blk.select_capacity(att, scores, min(int(K), att.shape[1] - p)))
                    for l in range(site + 1, model.depth):
                        t = Block.forward(model.vit.blocks[l], t)
                    acc[i, j] += float((model.head(t).argmax(-1).numpy() == y).sum())
    return acc / len(images)


def pomt_utility(latency, accuracy, l_max: float, a_max: float):
    """POMT's utility: 0.5 (1 - L / Lmax) + 0.5 (A / Amax)."""
    return 0.5 * (1 - np.asarray(latency) / l_max) + 0.5 * (np.asarray(accuracy) / a_max)


# ------------------------------------------------------------------------------ curve arithmetic
def pareto_front(points, x: str = "measured_ms", y: str = "accuracy") -> list[tuple[float, float]]:
    """Upper-left front: (latency, accuracy) pairs sorted by latency with strictly rising accuracy."""
    pts = sorted((p[x], p[y]) for p in points if p.get(x) is not None and p.get(y) is not None)
    front: list[tuple[float, float]] = []
    for lx, ay in pts:
        if not front or ay > front[-1][1]:
            front.append((lx, ay))
    return front


def latency_at_accuracy(points, target: float, x: str = "measured_ms", y: str = "accuracy") -> dict:
    """Smallest latency whose accuracy reaches ``target``, interpolating linearly along the Pareto front.

    Returns {"latency": float | None, "how": "interpolated" | "measured point" | "not reached" |
    "reached at the fastest point (cannot extrapolate lower)"}.
    """
    front = pareto_front(points, x, y)
    if not front or front[-1][1] < target:
        return {"latency": None, "how": "not reached"}
    if front[0][1] >= target:
        return {"latency": front[0][0], "how": "reached at the fastest point (cannot extrapolate lower)"}
    for (x0, a0), (x1, a1) in zip(front, front[1:]):
        if a1 >= target:
            if a1 == target:
                return {"latency": x1, "how": "measured point"}
            return {"latency": float(x0 + (target - a0) * (x1 - x0) / (a1 - a0)), "how": "interpolated"}
    return {"latency": None, "how": "not reached"}  # unreachable


def linearity(n: np.ndarray, ms: np.ndarray) -> dict:
    """How linear latency is in the token count n: least-squares line, R^2, the largest |residual| as a
    fraction of the largest latency, and the largest rise between neighbouring measured counts as a
    fraction of the latency before it (a cliff; only n >= 1/8 of the largest n, where the relative
    noise of tiny latencies does not dominate)."""
    n, ms = np.asarray(n, float), np.asarray(ms, float)
    A = np.stack([n, np.ones_like(n)], axis=1)
    coef, *_ = np.linalg.lstsq(A, ms, rcond=None)
    fit = A @ coef
    ss_res, ss_tot = float(((ms - fit) ** 2).sum()), float(((ms - ms.mean()) ** 2).sum())
    big = n[:-1] >= n.max() / 8
    steps = np.where(big, np.diff(ms) / np.maximum(ms[:-1], 1e-12), -np.inf)
    has = bool(big.any())
    return {"slope_ms_per_token": float(coef[0]), "intercept_ms": float(coef[1]),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
            "max_rel_residual": float(np.max(np.abs(ms - fit)) / max(float(ms.max()), 1e-12)),
            "max_rel_step": float(steps.max()) if has else 0.0,
            "max_step_at_tokens": int(n[1:][int(np.argmax(steps))]) if has else None}
