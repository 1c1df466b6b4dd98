"""vitedge: retraining-free, latency-budgeted token pruning for timm Vision Transformers.

Data flow (each arrow an artifact on disk): model --calibrate--> Calibration (npz + JSON),
device --profile--> LatencyTable (JSON), both --search(budget)--> Schedule (JSON),
model + Schedule --export--> model.onnx + report.json, which ``bench`` measures on the device.
"""

__version__ = "0.1.0"
