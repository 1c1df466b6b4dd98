"""The calibration file: one versioned ``.npz`` holding RCTP's stage 1-3 outputs.

Layout (``np.savez_compressed``, readable with ``np.load(allow_pickle=False)``):

==============  =================  =========================================================
key             dtype, shape       content
==============  =================  =========================================================
thresholds      float64 (L, M)     candidate threshold table (stage 2, RCTP eqs. (5)-(6))
fisher_loss     float64 (L, M)     FLOPs-Fisher table (§III-B stage 3)
kept            uint16 (L, M, D)   kept patch tokens per candidate and image
scores          float32 (L, D, P)  CLS-attention scores of patch tokens (stage 1)
fisher          float32 (L, D, P)  token importance, normalised as meta["importance"] says
labels          int64 (D,)         labels the stage-1 loss used (meta["label_source"])
meta_json       0-d str            JSON object of metadata, see :data:`REQUIRED_META`
==============  =================  =========================================================
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from vitedge.calibration.tables import (
    candidate_thresholds, fisher_loss_table, flops_reduction, kept_counts, normalise_fisher,
)
from vitedge.io import atomic_path
from vitedge.token_score import recorded as recorded_token_score

__all__ = ["FORMAT", "VERSION", "CalibrationError", "Calibration", "build_calibration"]

FORMAT = "vitedge-calibration"
VERSION = 1

ARRAYS = {"thresholds": np.float64, "fisher_loss": np.float64, "kept": np.uint16,
          "scores": np.float32, "fisher": np.float32, "labels": np.int64}
REQUIRED_META = ("format", "version", "model", "model_hash", "image_set_hash", "num_candidates",
                 "num_layers", "num_images", "num_patches", "num_prefix", "dim", "importance",
                 "label_source", "created")
#: importance criteria (meta["importance"]) -> how the ``fisher`` array was made
IMPORTANCE = {
    "fisher_block": "Fisher information normalised per block to sum 1 (RCTP §III-B, default)",
    "fisher_raw": "Fisher information averaged over images, no per-block scaling (ablation)",
    "cls_attention": "CLS-attention scores used as importance, normalised per block (ablation)",
}
_RERUN = "re-run `vitedge calibrate`"


class CalibrationError(ValueError):
    """A calibration file or input is unusable; the message is one line naming problem and fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _int_field(meta, key, where):
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise CalibrationError(f"{where}: meta[{key!r}] = {v!r} is not a non-negative integer; {_RERUN}")
    return int(v)


@dataclass(eq=False)
class Calibration:
    """RCTP calibration tables for one model and one image set (L blocks, M candidates, D images,
    P patch tokens). See the module docstring for dtypes and shapes."""

    thresholds: np.ndarray   # (L, M) float64
    fisher_loss: np.ndarray  # (L, M) float64
    kept: np.ndarray         # (L, M, D) uint16
    scores: np.ndarray       # (L, D, P) float32
    fisher: np.ndarray       # (L, D, P) float32
    labels: np.ndarray       # (D,) int64
    meta: dict

    @property
    def num_layers(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.thresholds.shape[1])

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def flops_reduction(self) -> np.ndarray:
        """(L, M) achieved mean FLOPs reduction ratio of each candidate on the calibration set."""
        return flops_reduction(self.kept, self.meta["dim"], self.meta["num_prefix"],
                               self.meta["num_patches"])

    def validate(self, where: str = "calibration") -> None:
        """Check meta fields and that every array's shape matches meta.

        Raises:
            CalibrationError: a required meta field is missing or malformed, or a shape is off.
        """
        missing = [k for k in REQUIRED_META if k not in self.meta]
        if missing:
            raise CalibrationError(f"{where}: metadata lacks {', '.join(missing)}; {_RERUN}")
        L, M, D, P = (_int_field(self.meta, k, where) for k in
                      ("num_layers", "num_candidates", "num_images", "num_patches"))
        for k in ("num_prefix", "dim"):
            _int_field(self.meta, k, where)
        expected = {"thresholds": (L, M), "fisher_loss": (L, M), "kept": (L, M, D),
                    "scores": (L, D, P), "fisher": (L, D, P), "labels": (D,)}
        for key, shape in expected.items():
            got = tuple(np.shape(getattr(self, key)))
            if got != shape:
                raise CalibrationError(
                    f"{where}: array {key!r} has shape {got} but metadata says {shape} "
                    f"(L={L}, M={M}, D={D}, P={P}); the file is inconsistent, {_RERUN}")

    def save(self, path) -> None:
        """Write one compressed ``.npz`` at ``path`` (used verbatim; no suffix is appended).

        Atomic: written to a hidden temp file in the same directory, fsynced, then
        ``os.replace``-d over ``path``; on any error the temp file is removed and ``path`` is
        untouched. meta["format"] / meta["version"] are set to :data:`FORMAT` / :data:`VERSION`.

        Raises:
            CalibrationError: invalid object (see :meth:`validate`), meta not JSON-serialisable,
                or the file cannot be written (OSError).
        """
        path = os.fspath(path)
        self.validate(where=f"cannot save {path}")
        meta = {**self.meta, "format": FORMAT, "version": VERSION}
        try:
            meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"cannot save {path}: metadata is not JSON-serialisable ({e})") from None
        arrays = {k: np.ascontiguousarray(getattr(self, k), dtype=dt) for k, dt in ARRAYS.items()}
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, meta_json=np.array(meta_json), **arrays)
        except OSError as e:
            hint = "" if os.path.isdir(os.path.dirname(os.path.abspath(path))) else "; check the directory exists"
            raise CalibrationError(f"cannot write calibration file {path}: {e}{hint}") from None

    @classmethod
    def load(cls, path, *, expect_model_hash=None, expect_image_set_hash=None, expect_token_score=None) -> "Calibration":
        """Read a file written by :meth:`save` (``np.load(allow_pickle=False)``).

        ``expect_model_hash`` / ``expect_image_set_hash`` / ``expect_token_score``: when given, must equal the
        file's (a file without ``meta["token_score"]`` was made with "cls-attention").

        Raises:
            CalibrationError: missing file; not a zip / corrupt / truncated; missing entries;
                another format or a newer version; shapes inconsistent with meta; hash or token score mismatch.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise CalibrationError(f"calibration file {path} is a directory; pass the .npz file path")
        if not os.path.isfile(path):
            raise CalibrationError(f"calibration file {path} not found; run `vitedge calibrate` to create it")
        corrupt = f"calibration file {path} is corrupt or not a vitedge calibration (.npz)"
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
            if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise CalibrationError(f"{corrupt} (not a zip archive); delete it and {_RERUN}")
            npz = np.load(path, allow_pickle=False)
        except CalibrationError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CalibrationError(f"{corrupt} ({e}); delete it and {_RERUN}") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CalibrationError(f"{corrupt} (not an .npz archive); {_RERUN}")
        with npz:
            try:
                if "meta_json" not in npz.files:
                    raise CalibrationError(f"{corrupt} (no 'meta_json' entry); {_RERUN}")
                raw = npz["meta_json"]
                if raw.ndim != 0 or raw.dtype.kind != "U":
                    raise CalibrationError(f"{corrupt} ('meta_json' is not a string); {_RERUN}")
                meta = json.loads(str(raw[()]))
                if not isinstance(meta, dict):
                    raise CalibrationError(f"{corrupt} ('meta_json' is not a JSON object); {_RERUN}")
                fmt, ver = meta.get("format"), meta.get("version")
                if fmt != FORMAT:
                    raise CalibrationError(f"{path} is not a vitedge calibration file (format "
                                           f"{fmt!r}, expected {FORMAT!r}); {_RERUN}")
                if isinstance(ver, bool) or not isinstance(ver, int) or ver < 1:
                    raise CalibrationError(f"{path} has an invalid format version {ver!r}; {_RERUN}")
                if ver > VERSION:
                    raise CalibrationError(
                        f"{path} was written by a newer vitedge (format version {ver}, this vitedge "
                        f"reads up to {VERSION}); upgrade vitedge or {_RERUN}")
                missing = [k for k in ARRAYS if k not in npz.files]
                if missing:
                    raise CalibrationError(f"{corrupt} (missing arrays: {', '.join(missing)}); {_RERUN}")
                arrays = {k: np.asarray(npz[k], dtype=dt) for k, dt in ARRAYS.items()}
            except CalibrationError:
                raise
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
                raise CalibrationError(f"{corrupt} ({type(e).__name__}: {e}); delete it and {_RERUN}") from None
        cal = cls(meta=meta, **arrays)
        cal.validate(where=f"calibration file {path}")
        for key, expected, what in ((
                "model_hash", expect_model_hash, "another model"),
                ("image_set_hash", expect_image_set_hash, "another calibration image set")):
            if expected is not None and str(meta[key]) != str(expected):
                raise CalibrationError(
                    f"calibration file {path} was made for {what} (hash {str(meta[key])[:12]}…, "
                    f"expected {str(expected)[:12]}…), {_RERUN}")
        made_with = recorded_token_score(meta)
        if expect_token_score is not None and made_with != expect_token_score:
            raise CalibrationError(f"calibration file {path} scored tokens by {made_with}, not {expect_token_score}: "
                                   f"pass --token-score {made_with} or {_RERUN}")
        return cal


def build_calibration(scores, fisher_raw, labels, *, dim, num_prefix, meta, num_candidates=201,
                      importance="fisher_block", correction=True) -> Calibration:
    """Run RCTP stages 2-3 on stage-1 arrays and package them as a :class:`Calibration`.

    Args:
        scores: (L, D, P) CLS-attention scores of patch tokens. fisher_raw: (L, D, P) raw
            per-token FI (dL_d/dm_j)^2. labels: (D,) labels the stage-1 loss used.
        dim: embedding dimension d. num_prefix: prefix tokens p (never pruned).
        meta: must hold "model", "model_hash", "image_set_hash", "label_source" ("data" or
            "model"); shape fields, format, version, importance, correction and "created"
            (UTC ISO time, kept if given) are filled in. num_candidates: M (paper: 201).
        importance: the ``fisher`` array and stage-3 table are built from
            * "fisher_block" -- FI normalised per block (RCTP §III-B; default);
            * "fisher_raw" -- FI averaged over images, no per-block scaling (paper's ablation a);
            * "cls_attention" -- the CLS-attention scores themselves, normalised per block like
              FI (paper's ablation b).
        correction: apply stage 2's one-step FLOPs-ratio correction (see candidate_thresholds).

    Raises:
        CalibrationError: unknown importance / label_source, missing meta keys, shapes that
            disagree, or meta shape fields that contradict the arrays.
        ValueError: non-finite or negative inputs (from :mod:`vitedge.calibration.tables`).
    """
    if importance not in IMPORTANCE:
        raise CalibrationError(f"unknown importance {importance!r}; use one of {', '.join(IMPORTANCE)}")
    s = np.asarray(scores, dtype=np.float32)
    fr = np.asarray(fisher_raw, dtype=np.float32)
    y = np.asarray(labels)
    if s.ndim != 3 or fr.shape != s.shape or y.shape != s.shape[1:2]:
        raise CalibrationError(f"stage-1 shapes disagree: scores {s.shape}, fisher {fr.shape}, "
                               f"labels {y.shape}; expected (L, D, P), (L, D, P), (D,)")
    missing = [k for k in ("model", "model_hash", "image_set_hash", "label_source") if k not in meta]
    if missing:
        raise CalibrationError(f"build_calibration meta lacks {', '.join(missing)}; pass them from stage 1")
    if meta["label_source"] not in ("data", "model"):
        raise CalibrationError(f"meta['label_source'] = {meta['label_source']!r}; use 'data' or 'model'")
    L, D, P = s.shape
    derived = {"num_layers": L, "num_images": D, "num_patches": P, "num_prefix": int(num_prefix),
               "dim": int(dim), "num_candidates": int(num_candidates), "importance": importance}
    for key, value in derived.items():
        if key in meta and meta[key] != value:
            raise CalibrationError(f"meta[{key!r}] = {meta[key]!r} contradicts the inputs ({value!r}); "
                                   "drop it from meta or fix the inputs")
    if importance == "fisher_block":
        fn = normalise_fisher(fr, "block")
    elif importance == "fisher_raw":
        fn = normalise_fisher(fr, "raw")
    else:
        fn = normalise_fisher(s, "block")
    thr = candidate_thresholds(s, dim=dim, num_prefix=num_prefix, num_candidates=num_candidates,
                               correction=correction)
    full_meta = {**meta, **derived, "format": FORMAT, "version": VERSION, "correction": bool(correction)}
    full_meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    cal = Calibration(thresholds=thr, fisher_loss=fisher_loss_table(s, fn, thr),
                      kept=kept_counts(s, thr), scores=s, fisher=fn.astype(np.float32),
                      labels=y.astype(np.int64), meta=full_meta)
    cal.validate(where="build_calibration")
    return cal
