"""The runner's LiteRT interpreter choice (ai-edge-litert / tflite-runtime), saved outputs, tflite-runtime
parity when a tflite-runtime Python exists, the presets' interpreter recommendation, and a smoke run of
benchmarks/tflite_runtimes.py.

One tiny capacity-mode model is converted once per module. The tflite-runtime checks run under a separate
Python (tflite-runtime 2.14 needs numpy < 2): ``$VITEDGE_TFLITE_RUNTIME_PYTHON``, else
/work/venv-tflrt/bin/python; they are skipped when neither exists (CI has ai-edge-litert only).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from conftest import CLASSES, NUM_PATCHES, make_tiny_vit  # noqa: E402
from vitedge.cli.main import main as cli  # noqa: E402
from vitedge.devices import runner as R  # noqa: E402
from vitedge.devices.presets import PresetError, load_presets, parse_setting  # noqa: E402
from vitedge.exporters.graphs import PrunedModelGraph  # noqa: E402
from vitedge.exporters.tflite import export_tflite, xnnpack_delegation  # noqa: E402
from vitedge.models.adapter import PrunableViT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TFLRT_PYTHON = os.environ.get("VITEDGE_TFLITE_RUNTIME_PYTHON") or "/work/venv-tflrt/bin/python"
HAS_TFLRT = os.path.isfile(TFLRT_PYTHON) and os.access(TFLRT_PYTHON, os.X_OK)
RECOMMENDING = ("rpi4", "rpi5", "jetson-orin", "local")
FAST = {"warmup": 1, "min_runs": 3, "min_time_s": 0.0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model keeping 8 of 16 patch tokens after block 2, folder with capacity.tflite, img0/1.npz, plan dict)."""
    pm = PrunableViT(make_tiny_vit())
    pm.set_capacities([None, 8])
    folder = tmp_path_factory.mktemp("tflrt")
    export_tflite(PrunedModelGraph(pm).eval(), (torch.zeros(1, 3, 32, 32),), folder / "capacity.tflite")
    name = R.open_session("litert", str(folder / "capacity.tflite"), 1).input_specs[0]["name"]
    x = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    for i in range(2):
        np.savez(folder / f"img{i}.npz", **{name: x[i]})
    plan = {"runtime": "litert", "threads": 1, "config": FAST,
            "points": [{"name": "cap", "model": "capacity.tflite", "inputs_npz": ["img0.npz", "img1.npz"],
                        "outputs_npz": "cap_out.npz"}]}
    return pm, folder, x, plan


def torch_outputs(pm, x) -> tuple:
    with torch.no_grad():
        outs = [pm.forward_with_info(torch.from_numpy(xi)) for xi in x]
    return np.stack([o.logits.numpy() for o in outs]), np.array([[int(k) for k in o.kept] for o in outs])


def run_copied_runner(python: str, folder: Path, plan: dict, tmp_path: Path) -> tuple:
    """The runner copied alone next to the files (as on a device), run isolated under ``python``."""
    dev = tmp_path / "device"
    shutil.copytree(folder, dev)
    shutil.copy(R.__file__, dev / "runner.py")
    (dev / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run([python, "-I", str(dev / "runner.py"), str(dev / "plan.json"), str(dev / "result.json")],
                          cwd=dev, capture_output=True, text=True, timeout=300)
    return proc, dev


# ------------------------------------------------------------------------------ interpreter choice

@pytest.mark.parametrize("choice", ["ai-edge-litert", "auto", None])
def test_ai_edge_litert_choice_runs_and_reports_delegation(tiny, choice):
    pm, folder, x, _ = tiny
    path = folder / "capacity.tflite"
    sess = R.open_session("litert", str(path), 1, None if choice is None else {"interpreter": choice})
    assert sess.version.startswith("ai-edge-litert ") and sess.info["interpreter"] == "ai-edge-litert"
    d, ref = sess.info["delegation"], xnnpack_delegation(path)
    assert (d["nodes"], d["delegated"], d["delegate_partitions"], d["not_delegated"]) == \
        (ref.nodes, ref.delegated, ref.partitions, ref.not_delegated)
    assert d["delegated"] == d["nodes"] > 0
    logits, kept = sess.run({"anything": x[0]})
    np.testing.assert_allclose(logits, torch_outputs(pm, x[:1])[0][0], atol=1e-4)
    assert np.asarray(kept).astype(int).tolist() == [NUM_PATCHES, 8]


def test_missing_tflite_runtime_is_one_line_with_the_pip_command(tiny, monkeypatch, capsys):
    _, folder, _, plan = tiny
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)        # absent, whatever this machine has
    with pytest.raises(R.RuntimeMissingError) as err:
        R.open_session("litert", str(folder / "capacity.tflite"), 1, {"interpreter": "tflite-runtime"})
    msg = str(err.value)
    assert "\n" not in msg and "tflite-runtime is not installed" in msg
    assert "python3 -m pip install tflite-runtime 'numpy<2'" in msg
    p = folder / "plan-tflrt.json"
    p.write_text(json.dumps(dict(plan, runtime_options={"interpreter": "tflite-runtime"})))
    assert R.main([str(p), str(folder / "never.json")]) == 3
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "pip install tflite-runtime" in out and not (folder / "never.json").exists()


def test_broken_install_and_neither_package(monkeypatch):
    def broken(package):
        raise ImportError("numpy.core.multiarray failed to import")
    monkeypatch.setattr(R, "_import_interpreter", broken)
    with pytest.raises(R.RuntimeMissingError, match=r"tflite-runtime is installed on this device but cannot be "
                       r"imported \(ImportError: numpy.core.multiarray failed to import\): run `python3 -m pip "
                       r"install tflite-runtime 'numpy<2'`"):
        R._litert_interpreter("tflite-runtime")

    def absent(package):
        raise ModuleNotFoundError("absent", name=package.replace("-", "_"))
    monkeypatch.setattr(R, "_import_interpreter", absent)
    with pytest.raises(R.RuntimeMissingError, match="neither ai-edge-litert nor tflite-runtime is installed"):
        R._litert_interpreter("auto")
    with pytest.raises(R.RuntimeMissingError, match="`python3 -m pip install ai-edge-litert`"):
        R._litert_interpreter("ai-edge-litert")


def test_unknown_interpreter_is_a_bad_plan(tiny, capsys):
    _, folder, _, plan = tiny
    p = folder / "plan-bad.json"
    p.write_text(json.dumps(dict(plan, runtime_options={"interpreter": "tflite"})))
    assert R.main([str(p), str(folder / "never.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown LiteRT interpreter 'tflite'" in err and "tflite-runtime" in err


# ------------------------------------------------------------------------------ saved outputs

def test_outputs_npz_holds_every_input_sets_outputs(tiny, tmp_path):
    pm, folder, x, plan = tiny
    proc, dev = run_copied_runner(sys.executable, folder, dict(plan, runtime_options={"interpreter": "ai-edge-litert"}),
                                  tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((dev / "result.json").read_text())
    row = res["points"][0]
    assert row["error_code"] == 0 and row["outputs_npz"] == "cap_out.npz" and "outputs_error" not in row
    assert res["environment"]["runtime_version"].startswith("ai-edge-litert ")
    assert res["runtime_info"]["capacity.tflite"]["delegation"]["delegate_partitions"] == 1
    with np.load(dev / "cap_out.npz", allow_pickle=False) as z:
        assert z.files == ["out0", "out1"] and z["out0"].shape == (2, 1, CLASSES) and z["out1"].shape == (2, 2)
        logits, kept = torch_outputs(pm, x)
        np.testing.assert_allclose(z["out0"], logits, atol=1e-4)
        assert (z["out1"].astype(int) == kept).all()
    assert not [f for f in os.listdir(dev) if f.endswith(".tmp")]


@pytest.mark.parametrize("choice", ["ai-edge-litert", pytest.param("tflite-runtime", marks=pytest.mark.skipif(
    not HAS_TFLRT, reason=f"no tflite-runtime Python at {TFLRT_PYTHON} (set VITEDGE_TFLITE_RUNTIME_PYTHON)"))])
def test_image_named_by_its_tensor_name_reaches_the_signature_input(tiny, tmp_path, choice):
    """Issue 15: an npz keyed by the tensor name that Interpreter.get_input_details lists, not the signature
    input name; the copied runner feeds it to that input (it used to add a random one beside it)."""
    from ai_edge_litert.interpreter import Interpreter

    pm, folder, x, plan = tiny
    tensor = Interpreter(model_path=str(folder / "capacity.tflite")).get_input_details()[0]["name"]
    spec = R.open_session("litert", str(folder / "capacity.tflite"), 1).input_specs[0]
    assert tensor != spec["name"] and spec["tensor"] == tensor
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(folder / "capacity.tflite", src)
    for i in range(2):
        np.savez(src / f"t{i}.npz", **{tensor: x[i]})
    point = dict(plan["points"][0], inputs_npz=["t0.npz", "t1.npz"])
    proc, dev = run_copied_runner(sys.executable if choice == "ai-edge-litert" else TFLRT_PYTHON, src,
                                  dict(plan, points=[point], runtime_options={"interpreter": choice}), tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((dev / "result.json").read_text())["points"][0]
    assert row["error_code"] == 0, row["error"]
    with np.load(dev / "cap_out.npz", allow_pickle=False) as z:
        np.testing.assert_allclose(z["out0"], torch_outputs(pm, x)[0], atol=1e-4)  # the images, not noise


@pytest.mark.parametrize("value", [3, "out.json", ["a.npz"]])
def test_bad_outputs_npz_is_a_plan_error(tiny, value):
    _, folder, _, plan = tiny
    bad = dict(plan, points=[dict(plan["points"][0], outputs_npz=value)])
    with pytest.raises(R.PlanError, match="'outputs_npz' must be a file name ending in .npz"):
        R.validate_plan(bad, str(folder))


# ------------------------------------------------------------------------------ tflite-runtime 2.14

@pytest.mark.skipif(not HAS_TFLRT, reason=f"no tflite-runtime Python at {TFLRT_PYTHON} "
                    "(set VITEDGE_TFLITE_RUNTIME_PYTHON)")
def test_tflite_runtime_python_matches_ai_edge_litert(tiny, tmp_path):
    pm, folder, x, plan = tiny
    outs = {}
    for python, choice in ((sys.executable, "ai-edge-litert"), (TFLRT_PYTHON, "tflite-runtime")):
        proc, dev = run_copied_runner(python, folder, dict(plan, runtime_options={"interpreter": choice}),
                                      tmp_path / choice)
        assert proc.returncode == 0, proc.stderr
        res = json.loads((dev / "result.json").read_text())
        assert res["environment"]["runtime_version"].startswith(choice + " ")
        assert res["runtime_info"]["capacity.tflite"]["interpreter"] == choice
        with np.load(dev / "cap_out.npz", allow_pickle=False) as z:
            outs[choice] = (z["out0"], z["out1"])
    np.testing.assert_allclose(outs["tflite-runtime"][0], outs["ai-edge-litert"][0], atol=1e-5)
    assert (outs["tflite-runtime"][1] == outs["ai-edge-litert"][1]).all()
    logits, _ = torch_outputs(pm, x)
    np.testing.assert_allclose(outs["tflite-runtime"][0], logits, atol=1e-4)


# ------------------------------------------------------------------------------ presets

def test_presets_recommend_ai_edge_litert():
    presets = load_presets()
    for name in RECOMMENDING:
        p = presets[name]
        assert p["litert_interpreter"] == "ai-edge-litert", name
        assert "tflite_runtimes.md" in p["notes"] and "pip install ai-edge-litert" in p["notes"], name
    r = CliRunner().invoke(cli, ["devices", "show", "rpi4"])
    assert r.exit_code == 0 and 'litert_interpreter "ai-edge-litert"' in r.output and "tflite_runtimes.md" in r.output


def test_preset_interpreter_values_are_the_runners(tmp_path):
    f = tmp_path / "d.toml"
    for value in R.LITERT_INTERPRETERS:
        f.write_text(f'[rpi4]\nlitert_interpreter = "{value}"\n')
        assert load_presets(f)["rpi4"]["litert_interpreter"] == value
    f.write_text('[rpi4]\nlitert_interpreter = "tflite"\n')
    with pytest.raises(PresetError) as err:
        load_presets(f)
    assert "\n" not in str(err.value) and "litert_interpreter 'tflite' is not one of auto, ai-edge-litert" in str(err.value)
    assert parse_setting("litert_interpreter=tflite-runtime") == ("litert_interpreter", "tflite-runtime")
    with pytest.raises(PresetError, match="is not one of"):
        parse_setting("litert-interpreter=tensorflow")


# ------------------------------------------------------------------------------ benchmark smoke

def test_benchmark_smoke(tmp_path):
    out = tmp_path / "out"
    cpu = str(min(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tflite_runtimes.py"), "--quick", "--models", "vitedge-digits-vit",
           "--cpus", cpu, "--out", str(out)]
    env = dict(os.environ, VITEDGE_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((out / "tflite_runtimes.json").read_text())
    assert (out / "tflite_runtimes.md").read_text().startswith("#")
    assert (out / "tflite_runtimes.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert data["environment"]["pinning"]["cpus"] == cpu and "load_average_1_5_15min" in data["environment"]
    assert [(r["model"], r["variant"]) for r in data["rows"]] == [("vitedge-digits-vit", "unpruned"),
                                                                  ("vitedge-digits-vit", "capacity")]
    for r in data["rows"]:
        a = r["runtimes"]["ai-edge-litert"]
        assert a["median_ms"] > 0 and a["p90_ms"] >= a["median_ms"] and a["parity"]["ok"]
        assert a["xnnpack"]["delegated"] == a["xnnpack"]["nodes"]
        if HAS_TFLRT:
            assert r["runtimes"]["tflite-runtime"]["parity"]["ok"] and r["ratio_tflrt_over_litert"]["median"] > 0
    if not HAS_TFLRT:
        assert data["skipped"] and "tflite-runtime side skipped" in proc.stderr
