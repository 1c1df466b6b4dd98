"""How the selectors score patch tokens: the head-averaged CLS attention (RCTP, POMT), the ATS significance score, and
the significance averaged over the blocks since the previous selector (``cumulative-significance``).

    taskset -c 0 python benchmarks/token_score.py --threads 1
    python benchmarks/token_score.py --quick            # smoke run

The significance score (Fayyaz et al., ECCV 2022, eq. (3); ``--token-score significance``) weights the CLS
attention to a token by the norm of its value vector, summed over heads: what the token adds to the CLS output.
``cumulative-significance`` ranks by its mean over the blocks from the previous selector (or the embedding) to the
selector's block (vitedge.models.pruning.window_mean).
Per model (the shipped one and the seed-1 one), ONNX, ``--mode auto``, every search knob at its default and
``--search-seconds`` unbounded; one latency table per model serves both scores (predicted latency, nothing timed,
so the CPU load does not change the result):

1. single cuts (top-K at one block l, l = 0, 1, 2, K = 14..45 of 64): test top-1 with each score (at block 0 the
   cumulative score equals the significance);
2. the measured search with each score (its own calibration), at budgets of 45 to 97.5 % of the predicted
   unpruned latency: each pick's test top-1, the mean over budgets, and the fastest pick / the fastest of every
   evaluated candidate (chosen on test, the search space's ceiling) within 1 point of the unpruned test top-1.

Test: the 600 held-out test digits (batched evaluator; equals the deployed forward). Writes
results/token_score.{json,md,png}.
"""
from __future__ import annotations

from _variants import variants_main

SCORES = ("cls-attention", "significance", "cumulative-significance")  # the first is the reference of the gains
# measured with the pruned tokens dropped, before the package token became the default
VARIANTS = {s: {"token_score": s, "package_token": False} for s in SCORES}


def main(argv=None) -> None:
    variants_main("token_score", __doc__, VARIANTS, "score",
                  "Token score: CLS attention (RCTP, POMT) vs ATS significance vs significance averaged over blocks",
                  "ONNX, `--mode auto`, the pruned tokens dropped (`--no-package-token`); calibration: the 200 calibration "
                  "digits; test: the 600 held-out test digits. Budgets and latency: the table's prediction / its unpruned "
                  "prediction (one table per model, profiled with the default score; selection only, nothing timed).",
                  "Single cuts (top-K at block l, K of 64 patch tokens kept from block l on), test top-1 %:", argv)


if __name__ == "__main__":
    main()
