"""Train vitedge's reference model: a small timm ViT on scikit-learn digits placed on a canvas.

    python benchmarks/train_reference.py                 # 150 epochs, ~10 min on 2 cores
    python benchmarks/train_reference.py --epochs 2 --out /tmp/ref   # smoke run

Writes ``model.safetensors``, ``training.json`` (per-epoch loss, accuracy, command) and
``MODEL_CARD.md`` to ``--out`` (default: the package's assets), each via a temp file + rename.
Recipe (../shared/notes/reference-model-field-notes.md): AdamW 1e-3, weight decay 0.05, cosine
schedule with 5 warm-up epochs, label smoothing 0.1, batch 64, new random digit position per epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitedge.data.digits import SPLIT_SIZES, TEST_PLACEMENTS, digits_split, train_epoch
from vitedge.io import atomic_path
from vitedge.models.reference import ASSET_DIR, CONFIG, REFERENCE_NAME, build_reference


def evaluate(model: torch.nn.Module, split: str) -> float:
    data = digits_split(split)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.images))
    return float((logits.argmax(-1).numpy() == data.labels).mean())


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ASSET_DIR)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = build_reference(weights=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(SPLIT_SIZES["train"] / args.batch_size)
    total, warm = args.epochs * steps_per_epoch, min(5, args.epochs) * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    log, step, t0 = [], 0, time.time()
    for epoch in range(args.epochs):
        data = train_epoch(epoch, seed=args.seed)
        x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        losses = []
        for i in range(0, len(y), args.batch_size):
            b = perm[i:i + args.batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x[b]), y[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            model.eval()
            row["calib_top1"] = evaluate(model, "calib")
            model.train()
        log.append(row)
        print(json.dumps(row), flush=True)

    model.eval()
    test_top1, calib_top1 = evaluate(model, "test"), evaluate(model, "calib")
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    _atomic_write(args.out / "model.safetensors",
                  lambda t: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(t)))
    command = "python benchmarks/train_reference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {
        "model": REFERENCE_NAME, "config": CONFIG, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "threads": args.threads, "test_top1": test_top1,
        "calib_top1": calib_top1, "train_seconds": round(time.time() - t0, 1), "command": command.strip(),
        "torch": torch.__version__, "python": platform.python_version(), "log": log,
    }
    _atomic_write(args.out / "training.json", lambda t: t.write_text(json.dumps(summary, indent=1)))
    n_params = sum(p.numel() for p in model.parameters())
    card = f"""# {REFERENCE_NAME}: model card

A timm `VisionTransformer` trained from scratch by vitedge, used as the default model of every command.

| | |
|---|---|
| architecture | ViT, patch 4, 32x32 input, dim {CONFIG['embed_dim']}, depth {CONFIG['depth']}, {CONFIG['num_heads']} heads, MLP ratio {CONFIG['mlp_ratio']}, CLS token, {n_params / 1e6:.2f} M parameters |
| tokens | 64 patch tokens + 1 CLS; about 78 % of patch tokens are pure background |
| data | scikit-learn `load_digits` (1,797 real handwritten 8x8 digits), each upsampled to 16x16 and placed on a 32x32 black canvas, grey replicated to 3 channels, normalised (x-0.5)/0.5 |
| split | stratified, seed {0}: train {SPLIT_SIZES['train']} digits (new random position every epoch), calibration {SPLIT_SIZES['calib']} digits (1 fixed position each), test {SPLIT_SIZES['test']} digits ({TEST_PLACEMENTS} fixed positions each = {SPLIT_SIZES['test'] * TEST_PLACEMENTS} images); disjoint digits |
| training | AdamW lr {args.lr}, weight decay 0.05, cosine with 5 warm-up epochs, label smoothing 0.1, batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}, {args.threads} CPU threads, {summary['train_seconds']:.0f} s |
| **test top-1** | **{100 * test_top1:.1f} %** ({SPLIT_SIZES['test'] * TEST_PLACEMENTS} images; about +-1.5 points standard error) |
| calibration top-1 | {100 * calib_top1:.1f} % |
| command | `{summary['command']}` |
| software | torch {torch.__version__}, Python {platform.python_version()} |

Intended use: a real, small, trained model on real images for vitedge's defaults, tests and benchmarks.
Not a digit recogniser for any other purpose.
"""
    _atomic_write(args.out / "MODEL_CARD.md", lambda t: t.write_text(card))
    print(f"test top-1 {test_top1:.4f}  calib top-1 {calib_top1:.4f}  -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
