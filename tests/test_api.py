"""The Python API (vitedge.export / calibrate / profile / search): the README's example, a timm model object
used as is, images as an array, a folder and a DataLoader, and bad input raised as typed one-line exceptions."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitedge
from conftest import IMG, make_tiny_vit
from vitedge.calibration import Calibration
from vitedge.data.images import ImageSetError, image_set_hash
from vitedge.models.adapter import PrunableBlock, UnsupportedModelError
from vitedge.models.loading import ModelLoadError, model_hash
from vitedge.schedule import Schedule
from vitedge.search import BudgetUnreachableError
from vitedge.tables.latency import LatencyTable

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = dict(warmup=1, runs=3, min_time=0, progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("api-cache"))


def quiet(messages=None):
    return (lambda m: None) if messages is None else messages.append


def random_images(n: int = 12, size: int = IMG, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def readme_python_block() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's Python API section has no python block"
    return found.group(1)


def test_readme_example_runs(tmp_path, monkeypatch):
    """Exactly the README's code, in an empty folder with its own cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITEDGE_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(readme_python_block(), "README.md (Python API)", "exec"), namespace)  # noqa: S102 - our own README
    report, schedule, table = namespace["report"], namespace["schedule"], namespace["table"]
    assert json.loads((tmp_path / "vitedge-out" / "report.json").read_text())["measured_ms"] == report["measured_ms"]
    assert (tmp_path / "vitedge-out" / "model.onnx").is_file()
    assert isinstance(schedule, Schedule) and isinstance(table, LatencyTable)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix in (".npz", ".json"))  # cached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "vitedge-out"]  # search wrote no file


def test_import_is_light_and_search_is_callable():
    code = ("import sys, vitedge; light = 'torch' not in sys.modules; import vitedge.search.planner as p; "
            "from vitedge.search import BudgetUnreachableError; "
            "print(light, callable(vitedge.search), p.Planner.__name__, vitedge.export.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "Planner", "vitedge.api"]


def test_model_object_is_used_as_is(cache):
    vit = make_tiny_vit()
    vit.train()
    x = torch.from_numpy(random_images(2))
    weight = vit.blocks[0].attn.qkv.weight
    with torch.no_grad():
        before = vit.eval()(x)
    vit.train()
    images = random_images()
    cal = vitedge.calibrate(vit, images=images, cache_dir=cache, log=quiet(), **QUICK)
    assert isinstance(cal, Calibration) and cal.num_images == len(images)
    assert all(type(b) is PrunableBlock for b in vit.blocks) and not vit.training  # swapped in place, eval mode
    assert vit.blocks[0].attn.qkv.weight is weight  # nothing copied
    with torch.no_grad():
        assert torch.equal(vit(x), before)  # timm's forward, same logits
    assert cal.meta["model_hash"] == model_hash(vit)
    messages: list = []
    again = vitedge.calibrate(vit, images=images, cache_dir=cache, log=quiet(messages), **QUICK)
    assert not any("calibrated on" in m for m in messages)  # the cache was hit (same weights, same images)
    assert np.array_equal(again.thresholds, cal.thresholds)


def write_pngs(folder: Path, n: int, classes: tuple = ()) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(sub / f"{i}.png")


def test_images_as_array_dataloader_and_folder(cache, tmp_path):
    vit = make_tiny_vit()
    images, labels = random_images(), np.arange(12) % 5
    from_array = vitedge.calibrate(vit, images=images, labels=labels, cache_dir=cache, log=quiet(), **QUICK)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    from_loader = vitedge.calibrate(vit, images=loader, cache_dir=cache, log=quiet(), **QUICK)
    assert from_loader.meta["image_set_hash"] == from_array.meta["image_set_hash"]
    unlabelled = torch.utils.data.DataLoader(torch.from_numpy(images), batch_size=5)
    limited = vitedge.calibrate(vit, images=unlabelled, cache_dir=cache, log=quiet(), calib_limit=7, **QUICK)
    assert limited.num_images == 7
    tensor = vitedge.calibrate(vit, images=torch.from_numpy(images[:7]), cache_dir=cache, log=quiet(), **QUICK)
    assert tensor.meta["image_set_hash"] == limited.meta["image_set_hash"]
    write_pngs(tmp_path / "flat", 5)
    write_pngs(tmp_path / "classes", 6, classes=("a", "b"))
    assert vitedge.calibrate(vit, images=tmp_path / "flat", cache_dir=cache, log=quiet(), **QUICK).num_images == 5
    assert vitedge.calibrate(vit, images=str(tmp_path / "classes"), cache_dir=cache, log=quiet(), **QUICK).num_images == 6


def test_export_returns_the_report(cache, tmp_path):
    """A budget above the unpruned latency (no calibration needed); accuracy on labelled in-memory images."""
    vit = make_tiny_vit()
    images, labels = random_images(), np.arange(12) % 5
    report = vitedge.export(vit, budget_ms=1e4, images=images, eval_images=images[:8], eval_labels=labels[:8],
                            out=tmp_path / "o", cache_dir=cache, log=quiet(), threads=1, **QUICK)
    assert report == json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["budget_met"] and report["objective"] == "keep-all"
    assert report["images"]["calibration"] == "array (12 images)"
    assert report["accuracy"]["available"] and report["accuracy"]["count"] == 8
    assert report["model"]["hash"] == model_hash(vit) and report["model"]["name"] == "vit_tiny_patch16_224"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.onnx", "report.json", "schedule.json"]


def test_profile_and_search(cache, tmp_path):
    vit = make_tiny_vit()
    images = random_images()
    table = vitedge.profile(vit, out=tmp_path / "t.json", cache_dir=cache, log=quiet(), threads=1, **QUICK)
    assert isinstance(table, LatencyTable) and LatencyTable.load(tmp_path / "t.json").parts == table.parts
    flops = vitedge.search(vit, budget_flops=0.5, images=images, cache_dir=cache, log=quiet(), **QUICK)
    assert isinstance(flops, Schedule) and flops.cost_model == "flops"
    args = dict(images=images, objective="fisher", latency_table=tmp_path / "t.json", cache_dir=cache, log=quiet(),
                threads=1, **QUICK)
    with pytest.raises(BudgetUnreachableError, match="smallest reachable") as info:
        vitedge.search(vit, budget_ms=1e-6, **args)
    full = table.predict_ms([table.num_tokens - 1] * 2, [False] * 2)
    budget = (info.value.min_budget + full) / 2
    s = vitedge.search(vit, budget_ms=budget, out=tmp_path / "s.json", **args)
    assert s.predicted <= budget and Schedule.load(tmp_path / "s.json").candidates == s.candidates
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "t.json"]


def test_image_set_hash_of_an_array_is_its_content():
    from vitedge.data.digits import ImageSet

    x = random_images()
    assert image_set_hash(ImageSet(x, None, "a")) == image_set_hash(ImageSet(x.copy(), None, "b"))
    assert image_set_hash(ImageSet(x, None, "a")) != image_set_hash(ImageSet(x[:-1], None, "a"))


BAD = [  # (call, keyword arguments, error type, message fragment)
    ("export", dict(budget_ms=0), ValueError, "budget_ms= must be a positive number"),
    ("export", dict(budget_ms=-1), ValueError, "budget_ms= must be a positive number"),
    ("export", dict(budget_ms=float("nan")), ValueError, "budget_ms= must be a positive number"),
    ("export", dict(budget_ms="5"), ValueError, "budget_ms= must be a positive number"),
    ("export", dict(), ValueError, "give budget_ms="),
    ("export", dict(budget_ms=1, max_accuracy_drop=-1), ValueError, "max_accuracy_drop= must be a number >= 0"),
    ("export", dict(budget_ms=1, max_rounds=0), ValueError, "max_rounds="),
    ("export", dict(budget_ms=1, model="vit_not_a_model"), ModelLoadError, "unknown model 'vit_not_a_model'"),
    ("export", dict(budget_ms=1, images=random_images(size=16)), ImageSetError, "the model takes (3, 32, 32)"),
    ("calibrate", dict(images=random_images()[0]), ValueError, "must be a non-empty array (N, 3, H, W)"),
    ("calibrate", dict(images=(random_images() * 50).astype(np.uint8)), ValueError, "float images normalised"),
    ("calibrate", dict(images=random_images(), labels=[0, 1]), ValueError, "must be 12 integers"),
    ("calibrate", dict(images=42), ValueError, "folder path, an array"),
    ("calibrate", dict(images="/nonexistent/folder"), ImageSetError, "does not exist"),
    ("calibrate", dict(calib_limt=3), ValueError, "did you mean calib_limit="),
    ("calibrate", dict(threads=-1), ValueError, "threads= must be an integer >= 0"),
    ("calibrate", dict(objective="flops"), ValueError, "objective= must be one of measured, fisher"),
    ("calibrate", dict(checkpoint="w.safetensors"), ValueError, "checkpoint= loads a model by name"),
    ("calibrate", dict(model=torch.nn.Linear(2, 2)), UnsupportedModelError, "not a timm VisionTransformer"),
    ("search", dict(budget_ms=1, budget_flops=0.5), ValueError, "give it alone"),
    ("search", dict(budget_ms=1, objective="speed"), ValueError, "objective= must be one of measured, fisher"),
    ("search", dict(budget_ms=1, calibration=object()), ValueError, "calibration= takes a file path"),
    ("profile", dict(resume=True), ValueError, "give out="),
    ("profile", dict(device_opts=["identity=k"]), ValueError, "device_opts= must be a dict"),
    ("profile", dict(device_opts={"no_such_key": 1}), ValueError, "no_such_key"),
    ("profile", dict(device="no-such-device"), ValueError, "no-such-device"),
    ("profile", dict(mode="topk"), ValueError, "unknown mode 'topk'"),
]


@pytest.mark.parametrize("call, kwargs, error, fragment", BAD, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(BAD)])
def test_bad_input_raises_one_line(cache, call, kwargs, error, fragment):
    kwargs = dict(kwargs)
    model = kwargs.pop("model", None)
    model = make_tiny_vit() if model is None else model
    with pytest.raises(error) as info:
        getattr(vitedge, call)(model, cache_dir=cache, log=quiet(), **QUICK, **kwargs)
    assert isinstance(info.value, ValueError)  # what the CLI reports as bad input (exit 2)
    message = str(info.value)
    assert fragment in message and "\n" not in message, message
