"""pareto.py's plots (matplotlib, Agg): accuracy vs latency, the importance ablation, the larger models."""
from __future__ import annotations

from pathlib import Path

from _common import save_plot
from _pareto_report import LABELS

STYLE = {"random": ("tab:gray", "x"), "topk": ("tab:orange", "s"), "rctp_flops": ("tab:purple", "^"),
         "vitedge_threshold": ("tab:blue", "o"), "vitedge_capacity": ("tab:cyan", "D"), "pomt": ("tab:green", "v"),
         "fisher_threshold": ("tab:blue", "."), "fisher_capacity": ("tab:cyan", "."),
         "tome": ("tab:red", "P"), "topk_eager": ("tab:brown", "s"),
         "ablation_fisher_block": ("tab:blue", "o"), "ablation_fisher_raw": ("tab:olive", "^"),
         "ablation_cls_attention": ("tab:pink", "s")}


# ------------------------------------------------------------------------------------------ plots
def plot_main(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = data["reference"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ort = ref["runtimes"].get("onnxruntime") or next(iter(ref["runtimes"].values()))
    ax = axes[0]
    for m, pts in ort["methods"].items():
        c, mk = STYLE.get(m, ("k", "."))
        ax.errorbar([p["measured_ms"] for p in pts], [100 * p["accuracy"] for p in pts],
                    xerr=[[0] * len(pts), [p["p90_ms"] - p["measured_ms"] for p in pts]], fmt=mk + "-", color=c, ms=4,
                    lw=1, elinewidth=0.4, ecolor=matplotlib.colors.to_rgba(c, 0.3), capsize=0, label=LABELS.get(m, m))
    u = ort["unpruned"]
    ax.plot([u["measured_ms"]], [100 * u["accuracy"]], "k*", ms=12, label="unpruned")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8, label="unpruned - 1 point")
    pk = ort["pomt_grid"]["pick"]
    pick = [p for p in ort["methods"].get("pomt", []) if p.get("site") == pk["site"] and p.get("K") == pk["K"]]
    if pick:
        ax.plot([pick[0]["measured_ms"]], [100 * pick[0]["accuracy"]], "o", mfc="none", mec="tab:green", ms=14, label="POMT utility optimum")
    ax.set(xlabel=f"measured median latency, {ort['table']['device']['runtime']} (ms; bar to p90)", ylabel="top-1 % (digits test)",
           title=f"{ref['model']}: accuracy vs measured latency ({ort['table']['device']['threads']} threads)")
    lo = min(100 * p["accuracy"] for pts in ort["methods"].values() for p in pts if p["method"] != "random")
    ax.set_ylim(max(0, lo - 5), 100 * max(u["accuracy"], max(p["accuracy"] for pts in ort["methods"].values() for p in pts)) + 2)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    for rt, res in ref["runtimes"].items():
        ls = "-" if rt == "onnxruntime" else "--"
        for m, pts in res["methods"].items():
            if m == "random":
                continue
            c, mk = STYLE.get(m, ("k", "."))
            ax.plot([p["relative_latency"] for p in pts], [100 * p["accuracy"] for p in pts], mk + ls, color=c, ms=4, lw=1,
                    label=f"{LABELS.get(m, m)} [{rt}]")
    if "torch_eager" in ref:
        for m, pts in ref["torch_eager"]["methods"].items():
            c, mk = STYLE.get(m, ("k", "."))
            ax.plot([p["relative_latency"] for p in pts], [100 * p["accuracy"] for p in pts], mk + ":", color=c, ms=5, lw=1.2,
                    label=f"{LABELS.get(m, m)} [torch eager]")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8)
    ax.plot([1.0], [100 * ref["unpruned_accuracy"]], "k*", ms=12)
    ax.set(xlabel="latency / unpruned latency in the same runtime (axis cut at 1.6)", ylabel="top-1 %",
           title="all runtimes (solid: ONNX Runtime, dashed: LiteRT, dotted: PyTorch eager)")
    ax.set_xlim(0, 1.6)
    ax.set_ylim(axes[0].get_ylim())
    ax.legend(fontsize=6, loc="lower right")
    for a in axes:
        a.grid(alpha=0.3)
    save_plot(fig, path)
    plt.close(fig)


def plot_ablation(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = data["reference"]
    res = ref["runtimes"]["onnxruntime"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for imp, pts in res["ablation"].items():
        c, mk = STYLE[f"ablation_{imp}"]
        ax.plot([p["measured_ms"] for p in pts], [100 * p["accuracy"] for p in pts], mk + "-", color=c, label=LABELS[f"ablation_{imp}"])
    u = res["unpruned"]
    ax.plot([u["measured_ms"]], [100 * u["accuracy"]], "k*", ms=12, label="unpruned")
    ax.axhline(100 * ref["target_accuracy"], color="k", ls=":", lw=0.8, label="unpruned - 1 point")
    ax.set(xlabel="measured median latency, ONNX Runtime (ms)", ylabel="top-1 % (digits test)",
           title="RCTP Fig. 4 ablation: importance criterion (latency Viterbi, threshold mode)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_plot(fig, path)
    plt.close(fig)


def plot_large(large: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = large["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], models.items()):
        for fam, pts in r["families"].items():
            c, mk = STYLE.get(fam, ("k", "."))
            pts = sorted(pts, key=lambda p: p["mean_kept_avg"])
            ax.plot([p["mean_kept_avg"] for p in pts], [p["measured_ms"] for p in pts], mk + "-", color=c, label=LABELS.get(fam, fam))
        ax.axhline(r["unpruned_ms"], color="k", ls=":", label="unpruned")
        ax.set(xlabel="mean kept patch tokens per block (measured)", ylabel="measured median latency (ms)",
               title=f"{name} (random weights)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_plot(fig, path)
    plt.close(fig)
