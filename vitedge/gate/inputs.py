"""Models and inputs of the latency gate: the image input of an .onnx / .tflite file, the runtime
for a file, the images fed to it.

Part of :mod:`vitedge.gate` (the public names are importable from there).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitedge.devices.runtimes import FORMAT_RUNTIME, FORMAT_SUFFIX, runtimes_for_suffix

from .settings import BenchError, BenchSettings

RUNTIME_BY_SUFFIX = {FORMAT_SUFFIX[fmt]: runtime for fmt, runtime in FORMAT_RUNTIME.items()}
# runtimes that can run a file of this kind (a device preset's default runtime is kept when it fits)
RUNTIMES_FOR_SUFFIX = {suffix: runtimes_for_suffix(suffix) for suffix in FORMAT_SUFFIX.values()}



_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 2: "uint8", 3: "int8"}


def runtime_for(path: str | Path, runtime: str | None) -> str:
    if runtime:
        return runtime
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIME_BY_SUFFIX:
        raise BenchError(f"cannot tell the runtime of {path} from its extension: use .onnx or .tflite, or give --runtime")
    return RUNTIME_BY_SUFFIX[suffix]


def read_input_spec(path: str | Path) -> dict:
    """The image input of an .onnx or .tflite file: {"name", "shape" (batch 1), "dtype", "layout"}.

    Raises BenchError: missing file, unreadable model, not exactly one image input, dynamic H/W.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"model file {path} does not exist: give the path of an exported .onnx or .tflite")
    if path.suffix.lower() == ".tflite":
        name, shape, dtype = _tflite_input(path)
    else:
        name, shape, dtype = _onnx_input(path)
    if len(shape) != 4:
        raise BenchError(f"{path}: input {name!r} has shape {shape}: vitedge bench feeds one image (N, C, H, W) or (N, H, W, C)")
    shape = [1 if (i == 0 and (d is None or d < 1)) else d for i, d in enumerate(shape)]
    if any(d is None or d < 1 for d in shape):
        raise BenchError(f"{path}: input {name!r} has a dynamic size {shape}: export the model with a fixed input size")
    layout = "NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None
    if layout is None:
        raise BenchError(f"{path}: input {name!r} of shape {shape} is not an image with 1 or 3 channels")
    return {"name": name, "shape": [int(d) for d in shape], "dtype": dtype, "layout": layout}


def _onnx_input(path: Path):
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for corrupt bytes
        raise BenchError(f"cannot load model {path}: not a valid ONNX file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BenchError(f"cannot load model {path}: it has {len(inputs)} inputs; vitedge bench feeds exactly one image input")
    t = inputs[0].type.tensor_type
    if not inputs[0].type.HasField("tensor_type") or t.elem_type not in _ONNX_DTYPES:
        raise BenchError(f"{path}: input {inputs[0].name!r} is not a float or 8-bit image tensor")
    shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return inputs[0].name, shape, _ONNX_DTYPES[t.elem_type]


def _tflite_input(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise BenchError("reading a .tflite model needs ai-edge-litert (or tflite-runtime) on this host: "
                             "run `pip install 'vitedge[tflite]'` (or `python -m pip install ai-edge-litert`)") from None
    from vitedge.devices.runner import litert_signature_inputs

    try:  # the runner's listing: the feed is named as the device's runner matches it
        signatures = litert_signature_inputs(Interpreter(model_path=str(path)))
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"cannot load model {path}: not a valid TFLite file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not signatures:
        raise BenchError(f"cannot load model {path}: it has no signatures; convert it with signatures (litert-torch does)")
    specs = next(iter(signatures.values()))
    if len(specs) != 1:
        raise BenchError(f"cannot load model {path}: it has {len(specs)} inputs; vitedge bench feeds exactly one image input")
    d = specs[0]
    return d["name"], [x if x > 0 else None for x in d["shape_signature"]], d["dtype"]


def _resize_chw(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (C, H, W) array with PIL (mode "F"), channel by channel."""
    from PIL import Image

    if tuple(img.shape[1:]) == tuple(hw):
        return img
    return np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR))
                     for c in img])


def _fit_channels(x: np.ndarray, c: int) -> np.ndarray:
    if x.shape[1] == c:
        return x
    return np.repeat(x[:, :1], c, axis=1) if c > x.shape[1] else x[:, :c]


@dataclass
class ImageFeeds:
    """Input dicts (batch 1) for a model's single image input, and where they come from."""

    feeds: list
    source: str
    hash: str

    def rotated(self, k: int) -> list:
        k %= len(self.feeds)
        return self.feeds[k:] + self.feeds[:k]


def load_feeds(spec: dict, settings: BenchSettings) -> ImageFeeds:
    """Images for ``spec`` (see :func:`read_input_spec`): ``settings.data`` read with PIL, resized
    (bilinear) to the input H x W and normalised with mean/std; else the digits calibration split
    (already normalised for the reference model, resized when H x W differ).

    Raises BenchError for a missing or empty folder, an unreadable image.
    """
    n, (c, h, w) = settings.images, _chw(spec)
    if settings.data is None:
        from vitedge.data.digits import digits_split

        base = digits_split("calib").images[:n]                     # (D, 3, 32, 32), (x - 0.5) / 0.5
        x = np.stack([_resize_chw(im, (h, w)) for im in base])
        x = _fit_channels(x, c)
        source = "digits:calib" + ("" if (h, w) == tuple(base.shape[2:]) else f"@{h}x{w}")
        pixels = None
    else:
        x, source = _read_folder(Path(settings.data), (c, h, w), n, settings.mean, settings.std)
    if spec["dtype"] in ("uint8", "int8"):  # quantised input: raw pixels
        px = np.clip(np.rint((x * 0.5 + 0.5) * 255.0), 0, 255)
        pixels = px.astype(np.uint8) if spec["dtype"] == "uint8" else (px - 128).astype(np.int8)
        x = pixels
    else:
        x = x.astype(spec["dtype"])
    if spec["layout"] == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    h_ = hashlib.sha256(x.tobytes())
    h_.update(str(x.shape).encode())
    return ImageFeeds(feeds=[{spec["name"]: x[i:i + 1]} for i in range(len(x))], source=source,
                      hash=h_.hexdigest()[:16])


def _chw(spec: dict) -> tuple[int, int, int]:
    s = spec["shape"]
    return (s[1], s[2], s[3]) if spec["layout"] == "NCHW" else (s[3], s[1], s[2])


def _read_folder(root: Path, chw, limit: int, mean, std):
    from PIL import Image

    from vitedge.data.images import IMAGE_SUFFIXES

    if not root.is_dir():
        raise BenchError(f"image folder {root} does not exist: pass a folder of images to --data")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise BenchError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}): add images or omit --data")
    c, h, w = chw
    if len(mean) not in (1, c):
        raise BenchError(f"--mean/--std have {len(mean)} values for a {c}-channel input")
    m = np.asarray(mean if len(mean) == c else mean * c, np.float32).reshape(c, 1, 1)
    s = np.asarray(std if len(std) == c else std * c, np.float32).reshape(c, 1, 1)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.float32) / 255.0
        except Exception as e:  # noqa: BLE001
            raise BenchError(f"cannot read image {f} ({type(e).__name__}): remove or replace it") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out.append((a - m) / s)
    return np.stack(out).astype(np.float32), str(root)
