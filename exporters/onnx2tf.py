"""TFLite through onnx2tf: the optional route for threshold mode (NonZero, dynamic token counts).

litert-torch (the default TFLite route) cannot convert NonZero. onnx2tf (TensorFlow, 70-200 s per
model) can, but it has produced silently wrong files (a Slice end of INT64_MAX became ``end=-1``,
dropping one token per pruning stage; a capacity graph came out with max diff 0.8), so every file
it writes here is checked against the ONNX model it came from before it is kept:

- :func:`find_onnx2tf`: the executable, from ``$VITEDGE_ONNX2TF`` or ``PATH``;
- :func:`prepare_onnx`: clamps Slice bounds into int32 range (the off-by-one above);
- :func:`export_tflite_onnx2tf`: runs the onnx2tf CLI in a temporary folder (argument list, no
  shell), takes its float32 ``.tflite``, audits its ops and compares it with the ONNX model in
  ONNX Runtime vs ai-edge-litert (:class:`ConversionParityError` with the max difference);
  the file is written (atomically) only when everything passed.

The result has a dynamic token count inside: delegates that need static shapes (GPU, NNAPI, NPUs)
reject those nodes, so they run on LiteRT's reference kernels; the caller reports XNNPACK's
coverage with :func:`vitedge.exporters.tflite.xnnpack_delegation`.

Needs the extra ``pip install 'vitedge[onnx2tf]'`` (TensorFlow; its pins conflict with the
``tflite`` extra, so it is best installed in its own venv and given with ``VITEDGE_ONNX2TF``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vitedge.exporters.onnx import ExportError
from vitedge.exporters.tflite import TFLiteUnavailableError, audit_tflite
from vitedge.exporters.validation import ParityError
from vitedge.io import atomic_path

ENV_VAR = "VITEDGE_ONNX2TF"
ONNX2TF_OPSET = 20  # opset 20 maps GELU to TFLite's GELU builtin; at 17/18 exact GELU becomes FlexErf
EXTRA_HINT = ("install the onnx2tf extra: pip install 'vitedge[onnx2tf]' (or install onnx2tf in its own venv "
              f"and set {ENV_VAR} to its onnx2tf executable)")
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
DEFAULT_TIMEOUT_S = 1800


class Onnx2tfUnavailableError(TFLiteUnavailableError):
    """The onnx2tf executable cannot be found."""


class ConversionParityError(ParityError):
    """The converted .tflite disagrees with the ONNX model it was converted from."""

    def __init__(self, message: str, max_abs_diff: float):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


def find_onnx2tf() -> str:
    """The onnx2tf executable: ``$VITEDGE_ONNX2TF`` (a path or a name on PATH), else ``onnx2tf`` on PATH.

    Raises:
        Onnx2tfUnavailableError: not found, or ``$VITEDGE_ONNX2TF`` names no executable file.
    """
    given = os.environ.get(ENV_VAR, "").strip()
    if given:
        exe = shutil.which(given)
        if exe is None:
            raise Onnx2tfUnavailableError(f"{ENV_VAR}={given} is not an executable file: set it to the onnx2tf script "
                                          "of the venv where onnx2tf is installed (e.g. /path/venv/bin/onnx2tf)")
        return exe
    exe = shutil.which("onnx2tf")
    if exe is None:
        raise Onnx2tfUnavailableError(f"threshold mode in TFLite needs onnx2tf, which is not installed: {EXTRA_HINT}")
    return exe


def prepare_onnx(src, dst) -> int:
    """Copy ``src`` to ``dst`` with every constant Slice start/end clamped into int32 range.

    onnx2tf turns an end of INT64_MAX on a dynamic axis (``x[:, 1:]``) into ``end=-1``; clamped,
    the slice means the same in ONNX and converts correctly. Returns the number of values clamped.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    consts = {t.name: t for t in model.graph.initializer}
    producers = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    clamped, made = 0, set()
    for node in model.graph.node:
        if node.op_type != "Slice":
            continue
        for pos in (1, 2):  # starts, ends
            if len(node.input) <= pos or not node.input[pos]:
                continue
            name = node.input[pos]
            if name in consts:
                tensor = consts[name]
            elif name in producers and producers[name].attribute and producers[name].attribute[0].name == "value":
                tensor = producers[name].attribute[0].t
            else:
                continue
            values = numpy_helper.to_array(tensor)
            if values.dtype != np.int64:
                continue
            fixed = np.clip(values, INT32_MIN, INT32_MAX)
            changed = int((fixed != values).sum())
            if not changed:
                continue
            clamped += changed
            new_name = f"{name}__int32_clamped"
            if uses.get(name, 0) > 1:  # shared: the Slices read one clamped copy (made once), other users the original
                if new_name not in made:
                    model.graph.initializer.append(numpy_helper.from_array(fixed, new_name))
                    made.add(new_name)
                node.input[pos] = new_name
            else:
                tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))
    onnx.save(model, str(dst))
    return clamped


@dataclass
class Onnx2tfResult:
    """What one conversion did: op counts (audited), parity against the ONNX model, seconds."""

    op_types: dict
    parity: dict
    convert_seconds: float
    slice_bounds_clamped: int
    onnx2tf: str

    def to_dict(self) -> dict:
        return asdict(self)


def _last_line(text: str) -> str:
    """The most telling line of onnx2tf's output: its last error line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    pick = (errors or lines or ["no output"])[-1]
    return pick[:300]


def run_onnx2tf(onnx_path, workdir, *, exe: str | None = None, keep_nchw: list[str] | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Run the onnx2tf CLI on ``onnx_path`` with output in ``workdir``; return its float32 .tflite.

    Inputs named in ``keep_nchw`` keep their ONNX (NCHW) layout, so the file takes the same arrays
    as the ONNX model. ``-osd`` writes a ``serving_default`` signature (what the runners call).

    Raises:
        Onnx2tfUnavailableError: no executable; ExportError: onnx2tf failed, timed out or wrote no
        float32 file.
    """
    exe = exe or find_onnx2tf()
    out = Path(workdir) / "onnx2tf_out"
    argv = [exe, "-i", str(onnx_path), "-o", str(out), "-osd", "-n"]
    if keep_nchw:
        argv += ["-k", *keep_nchw]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    try:
        proc = subprocess.run(argv, cwd=str(workdir), env=env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except FileNotFoundError:
        raise Onnx2tfUnavailableError(f"onnx2tf executable {exe} cannot be started: {EXTRA_HINT}") from None
    except subprocess.TimeoutExpired:
        raise ExportError(f"onnx2tf did not finish converting {Path(onnx_path).name} within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise ExportError(f"onnx2tf failed on {Path(onnx_path).name} (exit {proc.returncode}): "
                          f"{_last_line(proc.stderr + proc.stdout)}")
    found = sorted(out.glob("*_float32.tflite"))
    if len(found) != 1:
        raise ExportError(f"onnx2tf wrote {len(found)} float32 .tflite files for {Path(onnx_path).name} "
                          f"(expected one): {_last_line(proc.stderr + proc.stdout)}")
    return found[0]


def _image_feeds(onnx_path, count: int = 8, seed: int = 0) -> list[dict]:
    """Seeded standard-normal arrays for every (static) float input of the ONNX model."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def _constant_outputs(onnx_path) -> set[str]:
    """Graph outputs that are initializers or Constant node outputs (onnx2tf drops them)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    consts = {t.name for t in m.graph.initializer} | {o for n in m.graph.node if n.op_type == "Constant" for o in n.output}
    return {o.name for o in m.graph.output if o.name in consts}


def check_parity_onnx(tflite_path, onnx_path, feeds: list[dict], *, atol: float = 1e-4) -> dict:
    """Run the ONNX model (ONNX Runtime) and the .tflite (ai-edge-litert, 1 thread) on ``feeds``.

    Outputs are matched by name. Integer outputs (kept-token counts) must be equal; at most
    max(1, 10 %) of the inputs may keep a different token count (a score within float rounding of
    a threshold); where they agree, float outputs may differ by at most ``atol``. An ONNX output
    that is a constant (``kept_tokens`` of a model that prunes nothing) may be missing: onnx2tf
    drops constant outputs; it is listed in ``constant_outputs_dropped``.

    Raises:
        ConversionParityError: different output names or shapes, values off by more than ``atol``,
        or too many different kept-token counts.
    """
    import onnxruntime as ort

    from vitedge.exporters.tflite import _require

    _require("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    name = Path(tflite_path).name
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    constant = _constant_outputs(onnx_path)
    try:
        interp = Interpreter(model_path=str(tflite_path), num_threads=1)
        sigs = interp.get_signature_list()
        key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
        runner = interp.get_signature_runner(key)
    except Exception as e:  # noqa: BLE001 - the interpreter's own error for a broken file
        raise ConversionParityError(f"{name} cannot be run in ai-edge-litert ({type(e).__name__}: "
                                    f"{' '.join(str(e).split())[:200]})", float("inf")) from None
    got_names = set(sigs[key]["outputs"])
    dropped = sorted(set(out_names) - got_names)
    if got_names - set(out_names) or set(dropped) - constant or not got_names:
        raise ConversionParityError(f"{name} has outputs {sorted(got_names)}, the ONNX model "
                                    f"{sorted(out_names)}: it is not a conversion of {Path(onnx_path).name}", float("inf"))
    all_names, out_idx = out_names, {k: i for i, k in enumerate(out_names)}
    out_names = [k for k in out_names if k in got_names]
    in_names = list(sigs[key]["inputs"])
    worst, kept_diff, n = 0.0, 0, len(feeds)
    for feed in feeds:
        ref_all = sess.run(None, feed)
        ref = {k: ref_all[out_idx[k]] for k in out_names}
        try:
            got = runner(**{k: feed[k] for k in in_names}) if set(in_names) <= set(feed) else runner(
                **dict(zip(in_names, feed.values())))
        except Exception as e:  # noqa: BLE001 - e.g. a file that takes another input shape
            raise ConversionParityError(f"{name} cannot run the ONNX model's inputs ({type(e).__name__}: "
                                        f"{' '.join(str(e).split())[:200]})", float("inf")) from None
        ints = [k for k in out_names if np.issubdtype(np.asarray(ref[k]).dtype, np.integer)]
        if any(np.asarray(got[k]).shape != np.asarray(ref[k]).shape for k in out_names):
            shapes = {k: (tuple(np.shape(got[k])), tuple(np.shape(ref[k]))) for k in out_names}
            raise ConversionParityError(f"{name} output shapes differ from the ONNX model's (tflite, onnx): {shapes}",
                                        float("inf"))
        if any(not np.array_equal(np.asarray(got[k]).astype(np.int64), np.asarray(ref[k]).astype(np.int64)) for k in ints):
            kept_diff += 1
            continue
        for k in out_names:
            if k not in ints:
                worst = max(worst, float(np.abs(np.asarray(got[k], np.float64) - np.asarray(ref[k], np.float64)).max()))
    result = {"runtime": "ai-edge-litert vs onnxruntime", "inputs": n, "max_abs_diff": worst,
              "kept_mismatch": kept_diff, "atol": atol, "outputs": [k for k in all_names if k in got_names],
              "constant_outputs_dropped": dropped}
    if worst > atol or kept_diff > max(1, n // 10):
        raise ConversionParityError(f"onnx2tf produced a wrong {name}: max |diff| {worst:.2e} vs the ONNX model "
                                    f"(atol {atol:.0e}), kept tokens differ on {kept_diff}/{n} inputs", worst)
    return result


def export_tflite_onnx2tf(onnx_path, out_path, *, feeds: list[dict] | None = None, atol: float = 1e-4,
                          exe: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, audit: bool = True) -> Onnx2tfResult:
    """Convert ``onnx_path`` with onnx2tf and write ``out_path`` only if it matches the ONNX model.

    Args:
        onnx_path: an ONNX file (opset 20 recommended: :data:`ONNX2TF_OPSET`).
        out_path: destination ``.tflite`` (written atomically; nothing is left on failure).
        feeds: inputs for the parity check ({input name: array}); default 8 seeded random arrays.
        atol: largest accepted |difference| of float outputs.
        exe: the onnx2tf executable (default :func:`find_onnx2tf`).

    Raises:
        Onnx2tfUnavailableError: onnx2tf missing (checked first); TFLiteUnavailableError:
        ai-edge-litert missing; ExportError: conversion failed; OpAuditError: forbidden ops
        (TOPK_V2, Flex/custom, ...); ConversionParityError: the file disagrees with the ONNX model.
    """
    import onnx

    exe = exe or find_onnx2tf()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with atomic_path(out_path) as tmp:
        with tempfile.TemporaryDirectory(prefix="vitedge-onnx2tf-") as work:
            src = Path(work) / "model.onnx"
            clamped = prepare_onnx(onnx_path, src)
            model = onnx.load(str(src), load_external_data=False)
            inits = {t.name for t in model.graph.initializer}
            keep = [i.name for i in model.graph.input if i.name not in inits and len(i.type.tensor_type.shape.dim) in (3, 4, 5)]
            converted = run_onnx2tf(src, work, exe=exe, keep_nchw=keep, timeout_s=timeout_s)
            seconds = time.time() - t0
            checked = Path(work) / out_path.name  # checked under its final name (messages name it)
            os.replace(converted, checked)
            ops = audit_tflite(checked) if audit else {}
            parity = check_parity_onnx(checked, onnx_path, feeds if feeds else _image_feeds(onnx_path), atol=atol)
            shutil.copyfile(checked, tmp)
    return Onnx2tfResult(op_types=ops, parity=parity, convert_seconds=round(seconds, 2),
                         slice_bounds_clamped=clamped, onnx2tf=exe)
