"""vitedge: retraining-free, latency-budgeted token pruning for timm Vision Transformers.

Data flow (each arrow an artifact on disk): model --calibrate--> Calibration (npz + JSON),
device --profile--> LatencyTable (JSON), both --search(budget)--> Schedule (JSON),
model + Schedule --export--> model.onnx + report.json, which ``bench`` measures on the device.
"""

__version__ = "0.1.0"

# The Python API (vitedge/api.py; torch is imported when a function is called, not here). ``vitedge.search`` is
# the subpackage of the search algorithms, made callable as the API's search (vitedge/search/__init__.py).
from .api import calibrate, export, profile  # noqa: E402


def __getattr__(name: str):
    if name == "search":  # imported on first use (NumPy), like any subpackage
        import importlib

        return importlib.import_module(f"{__name__}.search")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "calibrate", "export", "profile", "search"]
