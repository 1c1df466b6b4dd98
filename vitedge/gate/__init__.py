"""The latency gate for CI (``vitedge bench``): measure an exported model on a device, compare it
with another model or a stored baseline, decide, report.

One module per concern; the public names are importable from here:

* :mod:`~vitedge.gate.core` -- :class:`Gate`, the measurement (single, baseline, interleaved A/B)
  and the decision (modes, decision rule, exit codes and their precedence are described there);
* :mod:`~vitedge.gate.stats` -- robust CV, summaries, bootstrap confidence intervals, the decision rule;
* :mod:`~vitedge.gate.settings` -- :class:`BenchSettings` (the CLI's flags), :class:`BenchError`;
* :mod:`~vitedge.gate.inputs` -- a model file's image input, its runtime, the images fed to it;
* :mod:`~vitedge.gate.baseline` -- the baseline file: write, read, check it was measured alike;
* :mod:`~vitedge.gate.report` -- text, JSON and JUnit XML reports.

No click and no torch: the command line (:mod:`vitedge.cli.bench`) is a thin wrapper; the device
side is :mod:`vitedge.devices`. User documentation: docs/latency-gate.md.
"""
from __future__ import annotations

from .baseline import BASELINE_FORMAT, BASELINE_VERSION, check_baseline, load_baseline, make_baseline, write_json
from .core import (BATCH_PAIRS, EXIT_FAIL, EXIT_PASS, EXIT_UNSTABLE, EXIT_USAGE, RESULT_FORMAT, RESULT_VERSION,
                   STABILITY_ADVICE, Gate)
from .inputs import RUNTIME_BY_SUFFIX, RUNTIMES_FOR_SUFFIX, ImageFeeds, load_feeds, read_input_spec, runtime_for
from .report import check_output_paths, format_text, junit_xml, result_json, write_junit
from .settings import BenchError, BenchSettings, parse_fraction
from .stats import (MAD_TO_SIGMA, STATISTICS, bootstrap_median, bootstrap_quantile, bootstrap_ratio_of_medians, decide,
                    pair_ratios, robust_cv, summary)

__all__ = [
    "Gate", "BenchSettings", "BenchError", "parse_fraction",
    "EXIT_PASS", "EXIT_FAIL", "EXIT_USAGE", "EXIT_UNSTABLE", "RESULT_FORMAT", "RESULT_VERSION", "BATCH_PAIRS",
    "STABILITY_ADVICE",
    "STATISTICS", "MAD_TO_SIGMA", "robust_cv", "summary", "pair_ratios", "bootstrap_median", "bootstrap_quantile",
    "bootstrap_ratio_of_medians", "decide",
    "RUNTIME_BY_SUFFIX", "RUNTIMES_FOR_SUFFIX", "ImageFeeds", "runtime_for", "read_input_spec", "load_feeds",
    "BASELINE_FORMAT", "BASELINE_VERSION", "make_baseline", "load_baseline", "check_baseline", "write_json",
    "format_text", "result_json", "junit_xml", "write_junit", "check_output_paths",
]
