"""The package token with proportional attention vs pruning alone, selection only.

    taskset -c 0 python benchmarks/package_token.py --threads 1
    python benchmarks/package_token.py --quick            # smoke run

``--package-token`` merges the tokens each selector prunes into one extra token that stands for them: their mean
(SPViT eq. (8)'s package token, retraining-free) carrying their count s, with log s added to its attention logits in
every later block (ToMe §3 eq. (1), proportional attention), so that it draws the attention they drew together.
Per model (the shipped one and the seed-1 one), ONNX, ``--mode auto``, every search knob at its default and
``--search-seconds`` unbounded; one latency table per model serves both variants (predicted latency, the package
token counted as a kept token; nothing timed, so the CPU load does not change the result):

1. single cuts (top-K at one block l, l = 0, 1, 2, K = 14..45 of 64): test top-1 without and with the package token;
2. the measured search without and with it, at budgets of 45 to 97.5 % of the predicted unpruned latency: each
   pick's test top-1, the mean over budgets, and the fastest pick / the fastest of every evaluated candidate (chosen
   on test, the search space's ceiling) within 1 point of the unpruned test top-1.

Test: the 600 held-out test digits (batched evaluator; equals the deployed forward, tests/test_measured_search.py).
Writes results/package_token.{json,md,png}.
"""
from __future__ import annotations

from _variants import variants_main

VARIANTS = {"pruned tokens dropped": {"package_token": False}, "package token": {"package_token": True}}


def main(argv=None) -> None:
    variants_main("package_token", __doc__, VARIANTS, "variant",
                  "Package token (pruned tokens merged into one sized token, proportional attention) vs pruning alone",
                  "ONNX, `--mode auto`, token score `significance`; calibration: the 200 calibration digits; test: the 600 "
                  "held-out test digits. Budgets and latency: the table's prediction / its unpruned prediction, the package "
                  "token counted as one more kept token (one table per model; selection only, nothing timed).",
                  "Single cuts (top-K at block l, K of 64 patch tokens kept from block l on; + 1 package token), test top-1 %:",
                  argv)


if __name__ == "__main__":
    main()
