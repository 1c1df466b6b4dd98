"""Per-image thresholds vs a fixed token count at the same mean kept tokens: can threshold mode keep more accuracy?

    taskset -c 0 python benchmarks/threshold_criteria.py --threads 1
    python benchmarks/threshold_criteria.py --quick         # smoke run

Threshold mode (RCTP's LTP-style selector: keep a patch token when its CLS-attention score is at least
theta_l) keeps an image-dependent number of tokens; capacity mode (POMT's single cut, RCTP's Top-K) keeps
exactly K. At the same *mean* kept count the two cost about the same FLOPs, so if thresholds keep less
accuracy per token, threshold mode cannot reach a capacity-mode baseline's accuracy at equal latency on that
model (and in ONNX Runtime its NonZero path has a dynamic token count on top). This study measures it on
single cuts (one selector at block l, the pruned tokens stay pruned, POMT's family), l = 0, 1, 2, at mean
kept counts from 14 to 55 of the 64 patch tokens, for four criteria:

- ``top-K``: the K best CLS-attention scores (capacity mode; vitedge's sort-free ranking);
- ``threshold``: score >= theta (threshold mode as shipped, RCTP);
- ``normalised threshold``: score / (sum of the patch scores) >= theta (the CLS token's attention to
  itself varies per image; this removes it);
- ``attention mass``: keep the tokens whose higher-scoring tokens hold less than a fraction p of the patch
  attention (a "top-p" set, sort-free as pairwise comparisons).

Each theta / p is set on the calibration images (bisection) so that the mean kept count there equals the
target; the table reports top-1 on the 600 held-out test digits (and the calibration images) with the mean kept
count the test images actually got. The variants other than ``threshold`` exist only in this study.
Nothing is timed. Writes results/threshold_criteria.{json,md,png}.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from _common import md_table, plot_per_model, run_selection_study, selection_parser
from vitedge.context import Context, Options
from vitedge.data.digits import digits_split
from vitedge.models.pruning import rank_by_counting

SITES = (0, 1, 2)
TARGETS = (14, 20, 27, 35, 45, 55)
CRITERIA = ("top-K", "threshold", "normalised threshold", "attention mass")


def _keep_mask(criterion: str, scores: torch.Tensor, value: float) -> torch.Tensor:
    """(B, P) scores -> (B, P) bool keep mask for one criterion at ``value`` (K, theta or p)."""
    if criterion == "top-K":
        return rank_by_counting(scores) < value
    if criterion == "threshold":
        return scores >= value
    share = scores / scores.sum(-1, keepdim=True)
    if criterion == "normalised threshold":
        return share >= value
    above = (share.unsqueeze(-2) * (share.unsqueeze(-2) > share.unsqueeze(-1))).sum(-1)  # [b, j]: mass above token j
    return above < value


def _calibrate(criterion: str, scores: torch.Tensor, target: float) -> float:
    """The theta (or p) whose mean kept count on ``scores`` is ``target`` (bisection; top-K: K itself)."""
    if criterion == "top-K":
        return float(target)
    lo, hi = 0.0, 1.0
    grows = criterion == "attention mass"  # a larger p keeps more; a larger theta keeps fewer
    for _ in range(40):
        mid = (lo + hi) / 2
        kept = _keep_mask(criterion, scores, mid).float().sum(-1).mean().item()
        if (kept < target) == grows:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class SingleCut:
    """Batched single-cut forward of a PrunableViT: blocks before ``site`` cached once per image set."""

    def __init__(self, model, images: np.ndarray, batch: int = 200):
        self.model, self.x, self.batch = model, torch.from_numpy(images), batch

    @torch.no_grad()
    def cut_inputs(self, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) tokens after block ``site``'s attention part and its (B, P) CLS scores."""
        outs, scores = [], []
        for i in range(0, len(self.x), self.batch):
            t = self.model.embed(self.x[i:i + self.batch])
            for blk in self.model.vit.blocks[:site]:
                t = blk.mlp_part(blk.attention_part(t)[0])
            a, s = self.model.vit.blocks[site].attention_part(t)
            outs.append(a)
            scores.append(s)
        return torch.cat(outs), torch.cat(scores)

    @torch.no_grad()
    def top1(self, site: int, tokens: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
        """Predicted class per image when only the prefix tokens and ``keep`` (B, P) leave block ``site``."""
        m, p = self.model, self.model.num_prefix
        preds = []
        for i in range(0, len(tokens), self.batch):
            t, k = tokens[i:i + self.batch], keep[i:i + self.batch]
            n = int(k.sum(-1).max())
            order = torch.argsort((~k).to(torch.int8), dim=-1, stable=True)[:, :n]  # kept tokens first (a study, not an export)
            x = torch.cat([t[:, :p], torch.gather(t[:, p:], 1, order.unsqueeze(-1).expand(-1, -1, t.shape[-1]))], dim=1)
            valid = torch.cat([torch.ones(len(t), p, dtype=torch.bool), torch.gather(k, 1, order)], dim=1)
            bias = torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))[:, None, None, :]
            x = m.vit.blocks[site].mlp_part(x)
            for blk in m.vit.blocks[site + 1:]:
                x = blk.mlp_part(blk.attention_part(x, key_bias=bias)[0])
            preds.append(m.head(x).argmax(-1))
        return torch.cat(preds).numpy()


def run_model(name: str, ckpt, args, cache: Path) -> dict:
    ctx = Context(Options(checkpoint=ckpt, threads=args.threads, progress=False, cache_dir=str(cache),
                          token_score="cls-attention"), log=lambda m: None)  # RCTP's thresholds are on CLS attention
    model = ctx.model.eval()
    calib, test = digits_split("calib"), digits_split("test")
    if args.calib_limit:
        calib = calib.subset(args.calib_limit)
    if args.test_limit:
        test = test.subset(args.test_limit)
    runs = {"calib": SingleCut(model, calib.images), "test": SingleCut(model, test.images)}
    labels = {"calib": calib.labels, "test": test.labels}
    with torch.no_grad():
        unpruned = {k: float((model(r.x).argmax(-1).numpy() == labels[k]).mean()) for k, r in runs.items()}
    t0 = time.time()
    rows = []
    for site in args.sites:
        inputs = {k: r.cut_inputs(site) for k, r in runs.items()}
        for target in args.targets:
            row = {"site": site, "target_kept": target}
            for crit in CRITERIA:
                value = _calibrate(crit, inputs["calib"][1], target)
                cell = {"value": value}
                for split, run in runs.items():
                    tokens, scores = inputs[split]
                    keep = _keep_mask(crit, scores, value)
                    cell[f"{split}_top1"] = float((run.top1(site, tokens, keep) == labels[split]).mean())
                    cell[f"{split}_mean_kept"] = float(keep.float().sum(-1).mean())
                row[crit] = cell
            rows.append(row)
    print(f"{name}: {len(rows)} cuts x {len(CRITERIA)} criteria in {time.time() - t0:.0f} s", flush=True)
    diffs = {c: [100 * (r[c]["test_top1"] - r["top-K"]["test_top1"]) for r in rows] for c in CRITERIA[1:]}
    return {"model": name, "checkpoint": ckpt or "shipped", "calibration_images": len(calib), "test_images": len(test),
            "unpruned_top1": unpruned, "rows": rows,
            "test_minus_topk_points": {c: {"mean": float(np.mean(d)), "min": float(np.min(d)), "max": float(np.max(d)),
                                           "better_than_topk": int(sum(v > 0 for v in d)), "cuts": len(d)}
                                       for c, d in diffs.items()}}


def markdown(data: dict) -> str:
    env = data["environment"]
    out = ["# Threshold criteria vs top-K at equal mean kept tokens (single cuts)\n",
           f"Command: `{env['command']}`; torch {env['torch']}. Single cut at block l (one selector, the pruned tokens stay "
           "pruned), each criterion's theta / p set on the calibration digits to the target mean kept count. Cell: test "
           "top-1 % (mean kept patch tokens on the test digits); calibration top-1 in the JSON. Nothing is timed.\n"]
    for m in data["models"]:
        out.append(f"## {m['model']}: unpruned test top-1 {100 * m['unpruned_top1']['test']:.1f} %, calibration "
                   f"{100 * m['unpruned_top1']['calib']:.1f} % ({m['calibration_images']} / {m['test_images']} images)\n")
        rows = [[r["site"], r["target_kept"], *[f"{100 * r[c]['test_top1']:.1f} ({r[c]['test_mean_kept']:.1f})" for c in CRITERIA]]
                for r in m["rows"]]
        out.append(md_table(["block l", "target kept", *CRITERIA], rows))
        for c, s in m["test_minus_topk_points"].items():
            out.append(f"- {c} - top-K (test, points): mean {s['mean']:+.2f}, min {s['min']:+.1f}, max {s['max']:+.1f}; "
                       f"better at {s['better_than_topk']} of {s['cuts']} cuts")
        out.append("")
    return "\n".join(out) + "\n"


def plot(data: dict, path: Path) -> None:
    def draw(ax, m):
        for c, style in zip(CRITERIA, ("-o", "--s", ":^", "-.v")):
            pts = sorted((r[c]["test_mean_kept"], 100 * r[c]["test_top1"]) for r in m["rows"] if r["site"] == 0)
            ax.plot(*zip(*pts), style, label=f"{c} (block 0)")
        ax.axhline(100 * m["unpruned_top1"]["test"], color="grey", lw=0.8, label="unpruned")

    plot_per_model(data, path, draw, "mean kept patch tokens (test)", "test top-1 %")


def main() -> None:
    ap = selection_parser(__doc__, "sites 0 and 1, two targets, 64 images")
    ap.add_argument("--sites", type=int, nargs="+", default=list(SITES))
    ap.add_argument("--targets", type=int, nargs="+", default=list(TARGETS))
    args = ap.parse_args()
    if args.quick:
        args.sites, args.targets, args.calib_limit, args.test_limit = [0, 1], [20, 45], 64, 64
    run_selection_study("threshold_criteria", args, run_model, markdown, plot)


if __name__ == "__main__":
    main()
