"""Plots users expect: a latency table (latency vs kept tokens, p90 band, plateaus) and an export
report (kept tokens per block; predicted vs measured latency). matplotlib, Agg backend."""
from __future__ import annotations

import numpy as np

from .io import atomic_path
from .tables.latency import LatencyTable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def plateaus(median_ms: np.ndarray, measured: list[int], rel: float = 0.02) -> list[tuple[int, int]]:
    """Runs of consecutive measured token counts whose latency stays within ``rel`` of the run's
    first value: (first n, last n) pairs with at least 3 points. A schedule at the low edge of a
    plateau gets the plateau's latency with the fewest tokens pruned (POMT)."""
    runs, start = [], 0
    ms = [float(median_ms[n - 1]) for n in measured]
    for i in range(1, len(measured) + 1):
        if i == len(measured) or abs(ms[i] - ms[start]) > rel * ms[start]:
            if i - start >= 3:
                runs.append((measured[start], measured[i - 1]))
            start = i
    return runs


def plot_table(table: LatencyTable, path, *, title: str | None = None) -> dict:
    """Latency (ms) vs tokens n for each part, median line + p90 band, measured points marked,
    plateaus of the attention+MLP sum shaded. Returns the plateaus found."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n = np.arange(1, table.num_tokens + 1)
    total = np.zeros(len(n))
    for part, entry in table.parts.items():
        med, p90 = np.asarray(entry["median_ms"]), np.asarray(entry["p90_ms"])
        measured = entry.get("measured_tokens") or table.measured_tokens
        line, = ax.plot(n, med, label=part)
        ax.fill_between(n, med, p90, color=line.get_color(), alpha=0.15)
        ax.plot(measured, med[np.asarray(measured) - 1], ".", color=line.get_color(), ms=3)
        if part in ("attention", "mlp"):
            total += med
    measured = table.parts["mlp"].get("measured_tokens") or table.measured_tokens
    ax.plot(n, total, "k--", lw=1, label="attention + mlp")
    flats = plateaus(total, [m for m in measured if m >= 1])
    for a, b in flats:
        ax.axvspan(a, b, color="grey", alpha=0.12)
    dev = table.device
    ax.set(xlabel="tokens n (prefix included)", ylabel="latency (ms, median; band to p90)",
           title=title or f"{table.model.get('name') or 'model'} on {dev.get('name')} ({dev.get('runtime')} {dev.get('runtime_version')}, {dev.get('threads')} threads)")
    ax.set_ylim(0, 1.25 * float(total.max()))  # p90 outliers of a busy machine would flatten the medians
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return {"plateaus": flats}


def plot_report(report: dict, path) -> None:
    """Two panels: mean kept patch tokens per block; the closed loop's predicted vs measured latency per round."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    blocks = report["schedule"]["blocks"]
    a.bar([x["block"] for x in blocks], [x["mean_kept_tokens"] for x in blocks])
    a.set(xlabel="block", ylabel="mean kept patch tokens", title=f"schedule ({report.get('mode', 'threshold')} mode)")
    rounds = report.get("rounds") or []
    if rounds:
        r = [x["round"] for x in rounds]
        b.plot(r, [x["predicted_realised_ms"] for x in rounds], "o-", label="predicted (table, real counts)")
        b.plot(r, [x["measured_ms"] for x in rounds], "s-", label="measured median")
    b.axhline(report["budget_ms"], color="red", ls="--", label="budget")
    b.axhline(report["unpruned_ms"]["median"], color="grey", ls=":", label="unpruned")
    b.set(xlabel="closed-loop round", ylabel="latency (ms)", title="predicted vs measured")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
