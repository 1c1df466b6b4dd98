"""Shared by the benchmark scripts: environment, interleaved A/B timing, atomic JSON/markdown/plot output."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from vitedge.io import atomic_path, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import onnxruntime
    import timm
    import torch

    from vitedge.devices.runner import environment as device_env

    env = device_env("onnxruntime", os.cpu_count() or 1, onnxruntime.__version__)
    env.update({"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()]})  # how busy the machine was
    return env


def write_results(name: str, data: dict, table_md: str, out_dir: Path = RESULTS) -> None:
    """Write ``name.json`` and ``name.md`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(data, indent=1, default=float)), (".md", table_md)):
        atomic_write_text(out_dir / f"{name}{suffix}", text)


def save_plot(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def interleaved_ab(session_a, session_b, feeds: list, cfg, rounds: int = 15) -> dict:
    """Time A and B alternately (A B A B ...) so machine drift cancels; returns medians and the
    median of the per-round ratios B/A (with the 10th-90th percentile of those ratios)."""
    from vitedge.devices.runner import measure_feeds

    a_med, b_med = [], []
    for _ in range(rounds):
        a_med.append(measure_feeds(session_a, feeds, cfg).median_ms)
        b_med.append(measure_feeds(session_b, feeds, cfg).median_ms)
    ratios = np.array(b_med) / np.array(a_med)
    return {"a_median_ms": float(np.median(a_med)), "b_median_ms": float(np.median(b_med)),
            "ratio_median": float(np.median(ratios)), "ratio_p10": float(np.percentile(ratios, 10)),
            "ratio_p90": float(np.percentile(ratios, 90)), "rounds": rounds,
            "a_round_medians_ms": a_med, "b_round_medians_ms": b_med}


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def profile_options(args) -> dict:
    """Options of a selection study's latency table: the default protocol, or with ``--quick`` (a smoke run, whose
    numbers mean nothing) 1 warm-up and 3 timed runs per token count, which takes a fraction of the time."""
    from vitedge.devices.runner import MeasureConfig

    return {"profile_config": MeasureConfig(warmup=1, min_runs=3, min_time_s=0.0)} if getattr(args, "quick", False) else {}


# The reference architecture's trained models that the selection studies compare (accuracy_drop.py, selection_rule.py)
DIGIT_MODELS = {"shipped": None, "seed1": str(Path(__file__).resolve().parent / "models" / "digits-vit-seed1" / "model.safetensors")}


def selection_parser(doc: str, quick: str, *, budgets: bool = False):
    """argparse parser of a selection study: --models, --threads, --calib-limit, --test-limit, --quick (``quick``: its
    help), --out, and with ``budgets`` --fractions (budgets, % of the predicted unpruned latency, default 45-97.5 in
    steps of 2.5); the script adds its own sweep."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if budgets:
        ap.add_argument("--fractions", nargs="+", type=float, default=list(np.arange(45, 98, 2.5)),
                        help="budgets, %% of the predicted unpruned latency")
    ap.add_argument("--models", nargs="+", default=list(DIGIT_MODELS), choices=list(DIGIT_MODELS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap


def study_header(env: dict) -> str:
    """The first sentence of a selection study's report: its command, torch, and how busy the machine was."""
    return f"Command: `{env['command']}`; torch {env['torch']}, load average at the end {env['load_average_1_5_15min']}. "


def run_selection_study(name: str, args, run_model, markdown, plot) -> None:
    """Run ``run_model(model, checkpoint, args, cache)`` per model in ``args.models`` (torch at ``args.threads``, one
    temporary cache), then write results/NAME.{json,md,png}."""
    import tempfile

    import torch

    torch.set_num_threads(max(1, args.threads))
    data = {"models": []}
    with tempfile.TemporaryDirectory(prefix=f"vitedge-{name}-") as tmp:
        for model in args.models:
            data["models"].append(run_model(model, DIGIT_MODELS[model], args, Path(tmp) / "cache"))
    data["environment"] = environment()
    write_results(name, data, markdown(data), args.out)
    plot(data, args.out / f"{name}.png")
    print(f"wrote {args.out / name}.{{json,md,png}}")


def plot_per_model(data: dict, path: Path, draw, xlabel: str, ylabel: str) -> None:
    """One panel per entry of ``data["models"]``: ``draw(ax, model_entry)`` plots its lines; titled, labelled, saved."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data["models"]), figsize=(5.5 * len(data["models"]), 4), squeeze=False)
    for ax, m in zip(axes[0], data["models"]):
        draw(ax, m)
        ax.set_title(m["model"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_plot(fig, path)
