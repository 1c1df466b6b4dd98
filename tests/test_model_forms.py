"""Models as users hold them (issue 11): a fine-tuned checkpoint with its own head and input size, timm
training checkpoints (EMA, ``module.``, pickled args), ``local-dir:`` / ``hf-hub:`` models, pretrained tags,
the data config of the loaded model, and how ``--eval-data`` folders map to the model's classes.

Every model is tiny and made here; nothing touches the network (the hub download is replaced by an
offline failure).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from conftest import TINY_CONFIGS, make_config, make_tiny_vit, tiny_kwargs
from vitedge.cli.main import main
from vitedge.data.images import load_image_folder, model_data_config
from vitedge.models.loading import (ModelLoadError, checkpoint_overrides, load_prunable, load_timm_model,
                                    read_checkpoint)

FAST = "test_vit"  # timm's registered 0.37 M-parameter ViT (patch 16, 160 px, 1000 classes)


def _one_line(err) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


def _state(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _assert_weights(model, state):
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def _fine_tuned(name=FAST, seed=1, **kw):
    torch.manual_seed(seed)
    return timm.create_model(name, **kw).eval()


# ------------------------------------------------------------------------------ head classes and input size

def test_checkpoint_head_and_grid_are_inferred(tmp_path):
    ft = _fine_tuned(num_classes=5, img_size=96)  # 6 x 6 patches, 5 classes
    path = tmp_path / "ft.safetensors"
    save_file(_state(ft), str(path))
    model = load_timm_model(FAST, checkpoint=path)
    assert model.num_classes == 5 and model.head.out_features == 5
    assert tuple(model.patch_embed.img_size) == (96, 96)
    _assert_weights(model, _state(ft))
    assert model.pretrained_cfg["input_size"] == (3, 96, 96) and model.pretrained_cfg["num_classes"] == 5
    assert model_data_config(model)["input_size"] == (3, 96, 96)


def test_distilled_checkpoint_infers_both_heads_and_two_prefix_tokens(tmp_path):
    ft = _fine_tuned("deit_tiny_distilled_patch16_224", num_classes=3, img_size=64)  # cls + dist + 16 patches
    assert ft.pos_embed.shape[1] == 2 + 16
    path = tmp_path / "deit.pth"
    torch.save(_state(ft), path)
    pm = load_prunable("deit_tiny_distilled_patch16_224", checkpoint=path)
    assert pm.vit.head.out_features == 3 and pm.vit.head_dist.out_features == 3
    assert pm.input_size == (3, 64, 64) and pm.num_prefix == 2 and pm.has_weights
    _assert_weights(pm.vit, _state(ft))


@pytest.mark.parametrize("key", list(TINY_CONFIGS))
def test_overrides_count_prefix_tokens(key):
    """cls, dist and register positions are not patches: the grid is read from the others."""
    trained, _ = make_config(key, img_size=48, num_classes=7)  # 6 x 6 patches of 8 px
    default, _ = make_config(key)                               # 4 x 4, 5 classes
    assert checkpoint_overrides(_state(trained), default) == {"num_classes": 7, "img_size": (48, 48)}
    assert checkpoint_overrides(_state(default), default) == {}


def test_overrides_without_embedded_prefix_positions():
    trained = make_tiny_vit(no_embed_class=True, reg_tokens=2, img_size=40)  # pos_embed: the 25 patches only
    default = make_tiny_vit(no_embed_class=True, reg_tokens=2)
    assert trained.pos_embed.shape[1] == 25
    assert checkpoint_overrides(_state(trained), default) == {"img_size": (40, 40)}


def test_explicit_num_classes_and_img_size(tmp_path):
    model = load_timm_model(FAST, num_classes=4, img_size=64)
    assert model.num_classes == 4 and tuple(model.patch_embed.img_size) == (64, 64)
    ft = _fine_tuned(num_classes=5, img_size=96)
    path = tmp_path / "ft.safetensors"
    save_file(_state(ft), str(path))
    with pytest.raises(ModelLoadError) as err:  # an explicit value wins, and then the checkpoint does not fit
        load_timm_model(FAST, checkpoint=path, num_classes=4)
    msg = _one_line(err)
    assert "head.weight is (5, 64) in the checkpoint, (4, 64) in the model" in msg and "--num-classes" in msg
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path, img_size=64)
    assert "pos_embed is (1, 37, 64) in the checkpoint, (1, 17, 64) in the model" in _one_line(err)


def test_mismatch_that_cannot_be_inferred_names_the_first_key(tmp_path):
    other = _fine_tuned(embed_dim=32)  # another width: nothing to infer
    path = tmp_path / "other.safetensors"
    save_file(_state(other), str(path))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path)
    msg = _one_line(err)
    assert f"checkpoint {path} does not fit {FAST}: cls_token is (1, 1, 32) in the checkpoint, (1, 1, 64) in the model" in msg
    state = _state(_fine_tuned())
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path)
    assert "it has extra.weight (2,), which the model has not" in _one_line(err)
    del state["extra.weight"], state["norm.bias"]
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path)
    assert "it lacks norm.bias (64,)" in _one_line(err)


# ------------------------------------------------------------------------------ timm training checkpoints

def _training_checkpoint(model, ema_model=None, *, prefix="module.", keys=("state_dict", "state_dict_ema")) -> dict:
    """What timm's train.py (CheckpointSaver) writes: weights, EMA weights, optimizer state, args, metric."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(1, 3, *model.patch_embed.img_size)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "arch": FAST, "optimizer": opt.state_dict(), "version": 2, "metric": 71.5,
            "args": argparse.Namespace(model=FAST, lr=0.1, epochs=4, img_size=None, mean=None, aa="rand-m9"),
            keys[0]: {prefix + k: v for k, v in _state(model).items()}}
    if ema_model is not None:
        ckpt[keys[1]] = {prefix + k: v for k, v in _state(ema_model).items()}
    return ckpt


def test_training_checkpoint_weights_and_ema(tmp_path):
    trained, ema = _fine_tuned(num_classes=5, seed=1), _fine_tuned(num_classes=5, seed=2)
    path = tmp_path / "model_best.pth.tar"
    torch.save(_training_checkpoint(trained, ema), path)
    _assert_weights(load_timm_model(FAST, checkpoint=path), _state(trained))  # module. stripped
    _assert_weights(load_timm_model(FAST, checkpoint=path, ema=True), _state(ema))
    only = tmp_path / "no_ema.pth"
    torch.save(_training_checkpoint(trained), only)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=only, ema=True)
    assert "has no EMA weights (state_dict_ema or model_ema): drop --ema" in _one_line(err)


def test_deit_style_model_and_model_ema_keys(tmp_path):
    trained, ema = _fine_tuned(num_classes=5, seed=1), _fine_tuned(num_classes=5, seed=2)
    path = tmp_path / "checkpoint.pth"
    ckpt = _training_checkpoint(trained, ema, prefix="", keys=("model", "model_ema"))
    torch.save(ckpt, path)
    _assert_weights(load_timm_model(FAST, checkpoint=path), _state(trained))
    _assert_weights(load_timm_model(FAST, checkpoint=path, ema=True), _state(ema))
    del ckpt["model"]
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path)
    assert "holds only EMA weights (model_ema): pass --ema" in _one_line(err)


def test_ema_needs_a_training_checkpoint(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_state(_fine_tuned()), str(path))
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, checkpoint=path, ema=True)
    assert "no EMA weights" in _one_line(err)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(FAST, ema=True)
    assert "give it with --checkpoint" in _one_line(err)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run a shell command
        return os.system, (f"touch {self.marker}",)


def test_no_unpickling_beyond_tensors_and_namespace(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth.tar"
    ckpt = _training_checkpoint(_fine_tuned())
    ckpt["hook"] = _RunsCode(marker)
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError) as err:
        read_checkpoint(path)
    msg = _one_line(err)
    assert "holds a pickled" in msg and "system" in msg and "argparse.Namespace only" in msg
    assert not marker.exists()
    ckpt = _training_checkpoint(_fine_tuned())
    ckpt["args"].output = Path("/runs")  # a class the training args may hold but vitedge does not allow
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError) as err:
        read_checkpoint(path)
    assert "Path" in _one_line(err)


# ------------------------------------------------------------------------------ local-dir:, hf-hub:, tags

@pytest.fixture
def hf_dir(tmp_path):
    """A folder written by timm.models.save_for_hf for a tiny, non-dynamic ViT with its own data config."""
    model = make_tiny_vit(seed=4)
    out = tmp_path / "hf"
    timm.models.save_for_hf(model, str(out), safe_serialization=True,
                            data_config={"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear",
                                         "crop_pct": 1.0, "input_size": (3, 32, 32)},
                            model_config={"label_names": ["zero", "one", "two", "three", "four"]})
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    return out, _state(model)


def test_local_dir_model(hf_dir):
    folder, state = hf_dir
    pm = load_prunable(f"local-dir:{folder}")
    _assert_weights(pm.vit, state)  # weights from the folder: no random-weights warning
    assert pm.has_weights and pm.model_name == f"local-dir:{folder}"
    assert pm.input_size == (3, 32, 32) and pm.vit.num_classes == 5
    cfg = model_data_config(pm.vit)
    assert cfg["input_size"] == (3, 32, 32) and tuple(cfg["mean"]) == (0.0, 0.0, 0.0) and cfg["interpolation"] == "bilinear"


def test_local_dir_bad_folders(tmp_path, hf_dir):
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(f"local-dir:{tmp_path / 'nope'}")
    assert "does not exist" in _one_line(err) and "save_for_hf" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(f"local-dir:{tmp_path / 'empty'}")
    assert "has no config.json" in _one_line(err)
    folder, _ = hf_dir
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(f"local-dir:{folder}")
    assert "model.safetensors" in _one_line(err)


def test_hf_hub_offline_is_one_line(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("repo_id", args[0] if args else None))
        raise LocalEntryNotFoundError("Cannot find the requested files in the local cache; check your connection.")
    monkeypatch.setattr("timm.models._hub.hf_hub_download", offline)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    msg = _one_line(err)
    assert "cannot reach the Hugging Face Hub" in msg and "local-dir:DIR" in msg
    assert calls == ["timm/vit_tiny_patch16_224.augreg_in21k"]


def test_names_with_a_pretrained_tag():
    model = load_timm_model(f"{FAST}.r160_in1k")
    assert model.pretrained_cfg["tag"] == "r160_in1k" and model.num_classes == 1000
    with pytest.raises(ModelLoadError) as err:
        load_timm_model(f"{FAST}.no_such_tag")
    assert "no_such_tag" in _one_line(err) and "timm.list_pretrained" in str(err.value)
    with pytest.raises(ModelLoadError) as err:
        load_timm_model("some/folder")
    assert "local-dir:" in _one_line(err)


# ------------------------------------------------------------------------------ data config and labels

def _pngs(root: Path, classes, value=128, size=40):
    for c in classes:
        (root / c).mkdir(parents=True)
        Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(root / c / "a.png")


def test_images_follow_the_loaded_models_data_config(tmp_path, hf_dir):
    folder, _ = hf_dir
    _pngs(tmp_path / "imgs", ["x"])
    own = load_image_folder(tmp_path / "imgs", load_timm_model(f"local-dir:{folder}"))
    assert own.images.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(own.images, 128 / 255, atol=1e-6)  # mean 0, std 1 from the folder's config
    ft = _fine_tuned(num_classes=5, img_size=64)
    path = tmp_path / "ft.safetensors"
    save_file(_state(ft), str(path))
    timm_cfg = load_image_folder(tmp_path / "imgs", load_timm_model(FAST, checkpoint=path))
    assert timm_cfg.images.shape == (1, 3, 64, 64)  # the checkpoint's size, not the 160 px of test_vit's config
    np.testing.assert_allclose(timm_cfg.images, (128 / 255 - 0.5) / 0.5, atol=1e-6)


def test_eval_labels_by_name_or_sorted_order(tmp_path, hf_dir):
    folder, _ = hf_dir
    model = load_timm_model(f"local-dir:{folder}")  # label_names zero..four
    _pngs(tmp_path / "named", ["two", "four", "zero"])  # sorted: four, two, zero
    s = load_image_folder(tmp_path / "named", model)
    assert s.labels.tolist() == [4, 2, 0] and s.label_mapping == "by name"
    _pngs(tmp_path / "other", ["cat", "dog"])
    s = load_image_folder(tmp_path / "other", model)
    assert s.labels.tolist() == [0, 1] and s.label_mapping == "sorted order"
    _pngs(tmp_path / "mixed", ["one", "owl"])  # one folder is no label name: sorted order
    assert load_image_folder(tmp_path / "mixed", model).label_mapping == "sorted order"
    (tmp_path / "flat_parent").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat_parent" / "a.png")
    assert load_image_folder(tmp_path / "flat_parent", model).label_mapping is None


def test_eval_labels_by_imagenet_synset(tmp_path):
    model = load_timm_model(FAST)  # 1000 classes: timm's ImageNet-1k synsets
    _pngs(tmp_path / "inet", ["n15075141", "n01440764", "n01443537"], size=16)
    s = load_image_folder(tmp_path / "inet", model)
    assert s.labels.tolist() == [0, 1, 999] and s.label_mapping == "by name"


# ------------------------------------------------------------------------------ command line

def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _cli_error(r, code: int, *fragments):
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]


def test_cli_options_reach_the_loader(monkeypatch, tmp_path):
    seen = {}

    def fake(name=None, **kw):
        seen.update(kw, name=name)
        raise ModelLoadError("stop here")
    monkeypatch.setattr("vitedge.context.load_prunable", fake)
    r = _cli("calibrate", "--model", "vit_tiny_patch16_224", "--checkpoint", tmp_path / "c.pth.tar", "--num-classes", "5",
             "--img-size", "96", "--ema", "-o", tmp_path / "c.npz", "--cache-dir", tmp_path / "cache")
    _cli_error(r, 2, "stop here")
    assert seen == {"name": "vit_tiny_patch16_224", "checkpoint": tmp_path / "c.pth.tar", "pretrained": False,
                    "num_classes": 5, "img_size": 96, "ema": True}


@pytest.mark.parametrize("case", ["missing_dir", "no_ema", "mismatch", "offline", "unknown_tag", "reference_size"])
def test_cli_bad_model_forms(case, tmp_path, monkeypatch):
    ckpt = tmp_path / "w.safetensors"
    save_file(_state(_fine_tuned(embed_dim=32)), str(ckpt))
    if case == "offline":
        from huggingface_hub.errors import LocalEntryNotFoundError

        def offline(*a, **k):
            raise LocalEntryNotFoundError("offline")
        monkeypatch.setattr("timm.models._hub.hf_hub_download", offline)
    args, fragments = {
        "missing_dir": (["--model", f"local-dir:{tmp_path / 'nope'}"], ["does not exist", "save_for_hf"]),
        "no_ema": (["--model", FAST, "--checkpoint", ckpt, "--ema"], ["no EMA weights", "drop --ema"]),
        "mismatch": (["--model", FAST, "--checkpoint", ckpt], ["cls_token is (1, 1, 32) in the checkpoint, (1, 1, 64)"]),
        "offline": (["--model", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"], ["cannot reach the Hugging Face Hub"]),
        "unknown_tag": (["--model", f"{FAST}.no_such_tag"], ["no_such_tag"]),
        "reference_size": (["--img-size", "64"], ["fixed head and input size"]),
    }[case]
    r = _cli("calibrate", *args, "-o", tmp_path / "c.npz", "--cache-dir", tmp_path / "cache")
    _cli_error(r, 2, *fragments)
    assert not (tmp_path / "c.npz").exists()


def test_cli_export_local_dir_with_named_eval_labels(tmp_path, hf_dir):
    folder, _ = hf_dir
    for i, c in enumerate(["zero", "one", "two", "three", "four"]):
        for j in range(2):
            d = tmp_path / "eval" / c
            d.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(10 * i + j)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{j}.png")
    out = tmp_path / "o"
    r = _cli("export", "--model", f"local-dir:{folder}", "--data", tmp_path / "eval", "--eval-data", tmp_path / "eval",
             "--budget-ms", "10000", "--quiet", "--warmup", "1", "--runs", "3", "--min-time", "0", "--threads", "1",
             "-o", out, "--cache-dir", tmp_path / "cache")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["name"] == f"local-dir:{folder}" and rep["model"]["has_weights"]
    assert rep["accuracy"]["available"] and rep["accuracy"]["label_mapping"] == "by name"
