"""Shared fixtures for the vitedge unit tests: tiny timm ViTs, images, synthetic tables.

Everything here is offline (``pretrained=False``) and small: a 32x32 input with 8x8 patches gives
16 patch tokens, width 32, two heads, two blocks.
"""
from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vitedge.calibration.store import build_calibration
from vitedge.models.adapter import PrunableViT
from vitedge.tables.latency import LatencyTable

# Tiny models: one intra-op thread is fastest and avoids spinning against other jobs on a small machine.
torch.set_num_threads(1)

IMG, PATCH, DIM, HEADS, DEPTH, CLASSES = 32, 8, 32, 2, 2, 5
NUM_PATCHES = (IMG // PATCH) ** 2  # 16

# The `tflite` extra (litert-torch + ai-edge-litert): `pip install -e ".[test]"` alone lacks it, so the tests
# that need it skip with this reason (CI's .ci/run installs it and runs them).
TFLITE_EXTRA_MODULES = ("litert_torch", "ai_edge_litert")


def require_tflite_extra(*modules: str) -> None:
    """Skip the calling test when a module of the tflite extra (default: all of them) is not installed."""
    missing = [m for m in (modules or TFLITE_EXTRA_MODULES) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the tflite extra ({', '.join(missing)} missing): pip install -e '.[test,tflite]'")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``emulated`` (an emulated Raspberry Pi, minutes, root, a first build from the network) run
    only when the -m expression names them (`pytest -m emulated`, as .ci/run does); otherwise they skip."""
    if "emulated" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="emulated-board test: run `pytest -m emulated` (root; .ci/run does)")
    for item in items:
        if "emulated" in item.keywords:
            item.add_marker(skip)


HAS_REG_TOKENS = "reg_tokens" in inspect.signature(VisionTransformer.__init__).parameters

# name -> (timm model name, extra kwargs, expected number of prefix tokens)
TINY_CONFIGS = {
    "plain": ("vit_tiny_patch16_224", {}, 1),
    "distilled": ("deit_tiny_distilled_patch16_224", {}, 2),
    "layerscale": ("vit_tiny_patch16_224", {"init_values": 1e-2}, 1),
    "qk_norm": ("vit_tiny_patch16_224", {"qk_norm": True}, 1),
    "avg_pool": ("vit_tiny_patch16_224", {"global_pool": "avg"}, 1),
    "class_token": ("vit_tiny_patch16_224", {"class_token": True}, 1),
    "registers": ("vit_tiny_patch16_224", {"reg_tokens": 2}, 3),
}


def tiny_kwargs(**overrides) -> dict:
    kw = dict(pretrained=False, img_size=IMG, patch_size=PATCH, depth=DEPTH, num_classes=CLASSES,
              embed_dim=DIM, num_heads=HEADS)
    kw.update(overrides)
    return kw


def make_tiny_vit(name: str = "vit_tiny_patch16_224", *, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny timm model in eval mode with seeded random weights."""
    torch.manual_seed(seed)
    return timm.create_model(name, **tiny_kwargs(**overrides)).eval()


def make_config(key: str, *, seed: int = 0, **overrides):
    name, kw, prefix = TINY_CONFIGS[key]
    if key == "registers" and not HAS_REG_TOKENS:
        pytest.skip("this timm VisionTransformer has no reg_tokens option")
    return make_tiny_vit(name, seed=seed, **{**kw, **overrides}), prefix


@pytest.fixture(params=list(TINY_CONFIGS))
def tiny_config(request):
    """(timm model, expected prefix count, config key) for every tiny config."""
    vit, prefix = make_config(request.param)
    return vit, prefix, request.param


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


@pytest.fixture
def tiny_prunable():
    return PrunableViT(make_tiny_vit())


@pytest.fixture
def tiny_distilled():
    return PrunableViT(make_tiny_vit("deit_tiny_distilled_patch16_224"))


@pytest.fixture
def images():
    """(4, 3, 32, 32) float32 standard-normal images, seeded."""
    g = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, IMG, IMG, generator=g)


# ---------------------------------------------------------------------------- synthetic latency table

OVERHEAD = 0.05


def part_formulas(N: int) -> dict:
    """Median ms per part for n = 1..N tokens (each includes one call overhead)."""
    n = np.arange(1, N + 1, dtype=np.float64)
    return {"attention": 0.3 + 0.01 * n + 0.0005 * n * n + OVERHEAD,
            "selector": 0.02 + 0.001 * n + OVERHEAD,
            "mlp": 0.1 + 0.02 * n + OVERHEAD}


FIXED_MS = {"embed": 0.5 + OVERHEAD, "head": 0.2 + OVERHEAD, "run_overhead": OVERHEAD}


def make_table(*, N: int = 17, depth: int = 3, dim: int = 32, prefix: int = 1, selector=None,
               device: str = "local", runtime: str = "onnxruntime", threads: int = 1) -> LatencyTable:
    med = part_formulas(N)
    if selector is not None:
        med["selector"] = np.asarray(selector, np.float64)
    parts = {k: {"median_ms": v.tolist(), "p90_ms": (v * 1.1).tolist(), "samples_ms": [[x, x] for x in v]}
             for k, v in med.items()}
    fixed = {k: {"median_ms": v, "p90_ms": v * 1.1, "samples_ms": [v, v]} for k, v in FIXED_MS.items()}
    model = {"name": "toy", "dim": dim, "num_heads": 2, "mlp_ratio": 4.0, "depth": depth, "num_tokens": N,
             "num_prefix": prefix, "input_size": [3, 32, 32]}
    return LatencyTable(model=model, device={"name": device, "runtime": runtime, "threads": threads},
                        parts=parts, fixed=fixed)


@pytest.fixture
def synthetic_table():
    return make_table()


# ---------------------------------------------------------------------------- synthetic calibration

CAL_META = {"model": "toy", "model_hash": "m" * 16, "image_set_hash": "i" * 16, "label_source": "model"}


def make_calibration(*, seed: int = 0, L: int = 3, D: int = 6, P: int = 16, prefix: int = 1, dim: int = 32,
                     M: int = 11):
    """A calibration built by stages 2-3 on random stage-1 arrays (softmax-like scores)."""
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(P + prefix), size=(L, D))[..., prefix:].astype(np.float32)
    fisher = (rng.random((L, D, P)) ** 2).astype(np.float32)
    labels = rng.integers(0, CLASSES, D)
    return build_calibration(scores, fisher, labels, dim=dim, num_prefix=prefix, meta=dict(CAL_META),
                             num_candidates=M)


@pytest.fixture
def synthetic_calibration():
    return make_calibration()
