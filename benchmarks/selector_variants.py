"""Capacity selector variants, measured per runtime: the evidence behind the shipped gather.

    python benchmarks/selector_variants.py --threads 1          # reference model, ORT + LiteRT
    python benchmarks/selector_variants.py --quick --runtimes onnxruntime --out /tmp/x   # smoke

Issue 3 asks to pick the static-size gather "by measured speed per runtime". Every variant keeps
the same K best patch tokens (rank by counting, vitedge.models.pruning.rank_by_counting); they
differ in how the kept tokens are gathered:

- ``score-order one-hot`` (shipped): G[k, j] = [rank_j = k], then G @ tokens (tokens leave best first);
- ``token-order one-hot`` (vitedge before this benchmark): keep mask, inclusive cumulative sum as a
  MatMul with a triangular constant, slot match, then G @ tokens (tokens leave in token order);
- ``index Gather`` (ONNX Runtime only; XNNPACK has no GATHER, so LiteRT would leave it on the CPU
  reference kernel): indices = G @ arange(P), Cast, Gather.

Schedule: K_l = P - 1 - l in every block (a selector runs in every block, almost nothing pruned),
against the unpruned export of the same runtime, A/B interleaved (benchmarks/_common.interleaved_ab).
Writes results/selector_variants.{json,md,png}.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment, interleaved_ab, md_table, save_plot, write_results
from vitedge.context import Context, Options
from vitedge.devices.runner import MeasureConfig, open_session
from vitedge.models import adapter, pruning
from vitedge.exporters.registry import get_exporter


def token_order_gather(scores: torch.Tensor, capacity: int) -> torch.Tensor:
    """(B, P) -> (B, K, P): the earlier token-order one-hot (keep mask + cumsum MatMul + slot match)."""
    P = scores.shape[-1]
    keep = pruning._step(capacity - 0.5 - pruning.rank_by_counting(scores))
    cum = torch.tensor(pruning._upper_ones(P, 0), dtype=scores.dtype)
    slot = keep.unsqueeze(-2) @ cum - 1.0
    slots = torch.arange(capacity, dtype=scores.dtype).reshape(capacity, 1)
    same = 1.0 - pruning._step(slot - slots) - pruning._step(slots - slot)
    return same * keep.unsqueeze(-2)


def index_gather_select(x, scores, capacity, num_prefix, package=False):
    """(B=1, N, C) -> (1, p + K, C) with an index Gather instead of the one-hot MatMul."""
    g = pruning.capacity_gather_matrix(scores, capacity)[0]                      # (K, P)
    idx = (g @ torch.arange(scores.shape[-1], dtype=scores.dtype)).to(torch.int64) + num_prefix
    return torch.cat([x[:, :num_prefix], x.index_select(1, idx)], dim=1)


@contextlib.contextmanager
def variant(name: str):
    """Temporarily route the model's capacity selector through ``name``."""
    saved = pruning.capacity_gather_matrix, adapter.capacity_select
    try:
        if name == "token-order one-hot":
            pruning.capacity_gather_matrix = token_order_gather
        elif name == "index Gather":
            adapter.capacity_select = index_gather_select
        yield
    finally:
        pruning.capacity_gather_matrix, adapter.capacity_select = saved


VARIANTS = {"onnxruntime": ["score-order one-hot", "token-order one-hot", "index Gather"],
            "litert": ["score-order one-hot", "token-order one-hot"]}


def run(args, work: Path) -> dict:
    ctx = Context(Options(model=args.model, progress=False, calib_limit=8, threads=args.threads), log=print)
    model = ctx.model
    P, L = model.num_patches, model.depth
    caps = [P - 1 - l for l in range(L)]
    cfg = MeasureConfig(warmup=5, min_runs=5 if args.quick else 20, min_time_s=0.02 if args.quick else 0.2)
    feeds = ctx.feeds(16)
    x = torch.from_numpy(np.ascontiguousarray(ctx.images.images[:4]))
    out = {"model": args.model or "vitedge-digits-vit", "capacities": caps, "threads": ctx.device.threads, "runtimes": {}}
    for runtime in args.runtimes:
        names = VARIANTS[runtime]
        art = get_exporter("onnx" if runtime == "onnxruntime" else "tflite")
        a_path = work / f"unpruned-{runtime}{art.suffix}"
        art.export(model, a_path, pruned=False)
        a = open_session(runtime, str(a_path), ctx.device.threads)
        rows = {}
        model.set_capacities(caps)
        with torch.no_grad():
            ref = torch.cat([model(x[i:i + 1]) for i in range(len(x))])   # batch 1, as exported
        for name in names:
            path = work / f"{runtime}-{name.replace(' ', '_')}{art.suffix}"
            with variant(name), torch.no_grad():
                diff = float((torch.cat([model(x[i:i + 1]) for i in range(len(x))]) - ref).abs().max())
                art.export(model, path)
            res = interleaved_ab(a, open_session(runtime, str(path), ctx.device.threads), feeds, cfg, rounds=args.rounds)
            res.update(overhead_pct=100 * (res["ratio_median"] - 1), logits_max_diff_vs_shipped=diff)
            rows[name] = res
            print(f"[{runtime}] {name}: unpruned {res['a_median_ms']:.3f} ms, variant {res['b_median_ms']:.3f} ms, "
                  f"ratio {res['ratio_median']:.3f}", flush=True)
        model.set_thresholds([None] * L)
        out["runtimes"][runtime] = rows
    return out


def report(r: dict) -> str:
    md = [f"# Capacity selector variants ({r['model']}, K_l = P - 1 - l = {r['capacities']}, {r['threads']} thread(s))\n\n",
          "Ratio = variant / unpruned export of the same runtime (median of per-round ratios, A/B interleaved). "
          "Lower is better; the shipped variant is the score-order one-hot.\n\n"]
    rows = [[rt, name, v["a_median_ms"], v["b_median_ms"], f"{v['ratio_median']:.3f}",
             f"{v['ratio_p10']:.3f}-{v['ratio_p90']:.3f}", f"{v['logits_max_diff_vs_shipped']:.1e}"]
            for rt, vs in r["runtimes"].items() for name, v in vs.items()]
    md.append(md_table(["runtime", "variant", "unpruned ms", "variant ms", "ratio", "ratio p10-p90", "logits diff vs shipped"], rows))
    return "".join(md)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, vals, errs = [], [], []
    for rt, vs in r["runtimes"].items():
        for name, v in vs.items():
            labels.append(f"{rt}\n{name}")
            vals.append(v["ratio_median"])
            errs.append([[v["ratio_median"] - v["ratio_p10"]], [v["ratio_p90"] - v["ratio_median"]]])
    ax.bar(range(len(vals)), vals, yerr=np.hstack(errs) if errs else None, color="tab:blue", alpha=0.7, capsize=3)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(vals)), labels, fontsize=7)
    ax.set(ylabel="latency / unpruned", title="capacity selector variants (p10-p90 of round ratios)")
    save_plot(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="timm model (default: the shipped reference ViT)")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runtimes", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="runtimes to compare in (default: all; a LiteRT conversion takes ~25 s per variant)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args, Path(tmp))
    write_results("selector_variants", {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                                        "results": r}, report(r), args.out)
    plot(r, args.out / "selector_variants.png")
    print(report(r))


if __name__ == "__main__":
    main()
