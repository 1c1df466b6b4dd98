"""Model loading (vitedge.models.loading): names, checkpoints, hashes, the random-weights warning.

The reference architecture (0.68 M params) is built without weights for checkpoint round trips;
timm's tiny ``test_vit`` (0.37 M params) stands in for a timm model name.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_tiny_vit
from vitedge.models import loading
from vitedge.models.adapter import PrunableViT, UnsupportedModelError
from vitedge.models.loading import ModelLoadError, load_prunable, load_timm_model, model_hash
from vitedge.models.reference import CHECKPOINT, REFERENCE_NAME, build_reference

TIMM_TINY = "test_vit"


def _one_line(err) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def reference_state():
    torch.manual_seed(1)
    return {k: v.clone() for k, v in build_reference(weights=False).state_dict().items()}


def _assert_state_equal(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# ------------------------------------------------------------------------------ names

def test_unknown_name_raises_model_load_error():
    with pytest.raises(ModelLoadError) as err:
        load_timm_model("vit_definitely_not_a_model_42")
    msg = _one_line(err)
    assert "vit_definitely_not_a_model_42" in msg and "unknown model" in msg


def test_timm_name_creates_eval_model():
    model = load_timm_model(TIMM_TINY, num_classes=7)
    assert not model.training
    assert model.num_classes == 7 and model.head.out_features == 7


# ------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth_state_dict", "pth_model"])
def test_checkpoint_round_trip_reference(tmp_path, reference_state, fmt):
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(reference_state, str(path))
    else:
        path = tmp_path / "w.pth"
        wrap = {"pth": lambda s: s, "pth_state_dict": lambda s: {"state_dict": s, "epoch": 3},
                "pth_model": lambda s: {"model": s}}[fmt]
        torch.save(wrap(reference_state), path)
    model = load_timm_model(REFERENCE_NAME, checkpoint=path)
    assert not model.training
    _assert_state_equal(model, reference_state)


def test_default_name_is_reference(tmp_path, reference_state):
    path = tmp_path / "w.safetensors"
    save_file(reference_state, str(path))
    model = load_timm_model(None, checkpoint=str(path))
    assert model.pretrained_cfg["architecture"] == REFERENCE_NAME
    _assert_state_equal(model, reference_state)


def test_checkpoint_round_trip_timm_name(tmp_path):
    torch.manual_seed(3)
    state = {k: v.clone() for k, v in load_timm_model(TIMM_TINY).state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    _assert_state_equal(load_timm_model(TIMM_TINY, checkpoint=path), state)


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(REFERENCE_NAME, checkpoint=path)
    msg = _one_line(err)
    assert "does not exist" in msg and str(path) in msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_checkpoint(tmp_path, suffix):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(REFERENCE_NAME, checkpoint=path)
    msg = _one_line(err)
    assert "cannot be read" in msg and str(path) in msg


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(REFERENCE_NAME, checkpoint=path)
    assert "no state dict" in _one_line(err)


def test_mismatched_checkpoint(tmp_path):
    other = make_tiny_vit()  # another architecture than the reference model
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(REFERENCE_NAME, checkpoint=path)
    msg = _one_line(err)
    assert "does not fit" in msg and REFERENCE_NAME in msg
    path2 = tmp_path / "other.pth"
    torch.save(other.state_dict(), path2)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(TIMM_TINY, checkpoint=path2)
    assert "does not fit" in _one_line(err) and TIMM_TINY in str(err.value)


# ------------------------------------------------------------------------------ hash

def test_model_hash_stable_and_sensitive():
    a, b = make_tiny_vit(seed=5), make_tiny_vit(seed=5)
    h = model_hash(a)
    assert len(h) == 16 and int(h, 16) >= 0
    assert model_hash(a) == h and model_hash(b) == h          # stable, and equal for equal weights
    assert model_hash(make_tiny_vit(seed=6)) != h              # other weights
    w = a.blocks[1].mlp.fc2.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w[0, 0] += 1e-3
    assert model_hash(a) != h                                   # one weight changed
    with torch.no_grad():
        w.copy_(saved)
    assert model_hash(a) == h                                   # and back
    with torch.no_grad():
        a.cls_token.zero_()
    assert model_hash(a) != h


# ------------------------------------------------------------------------------ load_prunable

def test_load_prunable_reference():
    if not CHECKPOINT.is_file():
        with pytest.raises(ModelLoadError) as err:
            load_prunable(None)
        assert "reference checkpoint missing" in _one_line(err)
        pytest.skip(f"shipped reference weights not present at {CHECKPOINT}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = load_prunable(None)
    assert isinstance(pm, PrunableViT)
    assert pm.model_name == REFERENCE_NAME and pm.has_weights
    assert pm.input_size == (3, 32, 32) and pm.num_tokens == 65


def _tiny_loader(calls):
    def fake(name=None, *, checkpoint=None, pretrained=False, **sizes):
        calls.append((name, checkpoint, pretrained))
        return make_tiny_vit()
    return fake


def test_load_prunable_warns_for_random_weights(monkeypatch):
    # a full-size timm model takes seconds to initialise: stand in a tiny one for the loader
    calls = []
    monkeypatch.setattr(loading, "load_timm_model", _tiny_loader(calls))
    with pytest.warns(UserWarning, match="vit_tiny_patch16_224 has random weights"):
        pm = load_prunable("vit_tiny_patch16_224")
    assert calls == [("vit_tiny_patch16_224", None, False)]
    assert isinstance(pm, PrunableViT)
    assert pm.model_name == "vit_tiny_patch16_224" and pm.has_weights is False
    for kw in ({"checkpoint": "w.pth"}, {"pretrained": True}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pm = load_prunable("vit_tiny_patch16_224", **kw)
        assert pm.has_weights is True


def test_load_prunable_reference_checkpoint_does_not_warn(tmp_path, reference_state):
    ref_path = tmp_path / "ref.safetensors"
    save_file(reference_state, str(ref_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = load_prunable(REFERENCE_NAME, checkpoint=ref_path)
    assert pm.has_weights and pm.model_name == REFERENCE_NAME
    assert pm.num_tokens == 65 and pm.input_size == (3, 32, 32)


def test_load_prunable_refuses_unsupported(monkeypatch):
    with pytest.raises(UnsupportedModelError) as err:
        load_prunable("test_convnext")
    assert "not a timm VisionTransformer" in _one_line(err)
    with pytest.raises(UnsupportedModelError) as err:
        load_prunable(TIMM_TINY)  # timm's test_vit is built with dynamic_img_size=True
    assert "dynamic_img_size" in _one_line(err)
    monkeypatch.setattr(loading, "load_timm_model",
                        lambda *a, **k: make_tiny_vit(class_token=False, global_pool="avg"))
    with pytest.raises(UnsupportedModelError) as err:
        load_prunable("vit_tiny_patch16_224")
    assert "class token" in _one_line(err)
