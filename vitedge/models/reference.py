"""The reference model shipped with vitedge: a small timm ViT trained on digits on a canvas.

Trained by ``benchmarks/train_reference.py``; weights and model card live in
``vitedge/assets/reference/``. See ``MODEL_CARD.md`` there for data, split and accuracy.
"""
from __future__ import annotations

from pathlib import Path

REFERENCE_NAME = "vitedge-digits-vit"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference"
CHECKPOINT = ASSET_DIR / "model.safetensors"

# timm VisionTransformer kwargs: 32x32 input, patch 4 -> 64 patch tokens + CLS, 0.68 M params.
CONFIG = dict(
    img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=96, depth=6,
    num_heads=3, mlp_ratio=4.0, class_token=True, global_pool="token",
)
PRETRAINED_CFG = dict(
    input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
    interpolation="bilinear", num_classes=10, label_names=[str(i) for i in range(10)],
)


def build_reference(weights: bool = True):
    """Build the reference ``timm`` VisionTransformer, with the shipped weights by default.

    Raises:
        FileNotFoundError: ``weights=True`` and the shipped checkpoint is missing.
    """
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**CONFIG)
    model.pretrained_cfg = dict(PRETRAINED_CFG, architecture=REFERENCE_NAME)
    if weights:
        if not CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"reference checkpoint missing at {CHECKPOINT}: reinstall vitedge or run benchmarks/train_reference.py")
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(CHECKPOINT)))
    return model.eval()
