"""Calibration stages 2-3 (vitedge.calibration.tables) and the calibration file (store)."""
from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from vitedge.calibration.store import (
    FORMAT, VERSION, Calibration, CalibrationError, build_calibration,
)
from vitedge.calibration.tables import (
    block_flops, candidate_thresholds, fisher_loss_table, flops_reduction, kept_counts,
    normalise_fisher, tokens_for_flops,
)

DIM, PREFIX = 8, 1


def _scores(rng, L=3, D=6, P=16, ties=False):
    s = rng.random((L, D, P))
    if ties:
        s = np.round(s, 1)
    return s.astype(np.float32)


def _r_max(P, dim=DIM, p=PREFIX):
    return 1.0 - block_flops(p, dim) / block_flops(P + p, dim)


# ----------------------------------------------------------------------------- eq. (5) / (6)

def test_block_flops_formula():
    assert block_flops(197, 768) == 12 * 197 * 768**2 + 2 * 197**2 * 768
    assert isinstance(block_flops(3.5, 8), float)
    n = np.array([0.0, 1.0, 10.5, 65.0])
    np.testing.assert_allclose(block_flops(n, 96), 12 * n * 96**2 + 2 * n**2 * 96)


@pytest.mark.parametrize("dim", [8, 96, 768])
def test_tokens_for_flops_round_trip(dim):
    n = np.array([0.0, 1.0, 1.25, 17.0, 65.0, 197.0, 577.0])
    np.testing.assert_allclose(tokens_for_flops(block_flops(n, dim), dim), n, rtol=1e-12, atol=1e-9)
    target = np.linspace(0.0, block_flops(197, dim), 13)
    np.testing.assert_allclose(block_flops(tokens_for_flops(target, dim), dim), target,
                               rtol=1e-12, atol=1e-6)


# ----------------------------------------------------------------------------- stage 2

@pytest.mark.parametrize("correction", [True, False])
def test_candidate_thresholds_shape_m0_monotone(correction):
    s = _scores(np.random.default_rng(0), ties=True)
    thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=21, correction=correction)
    assert thr.shape == (3, 21) and thr.dtype == np.float64
    assert np.all(thr[:, 0] == -np.inf)
    assert np.all(thr[:, 1:] >= thr[:, :-1])


def test_step_one_thresholds_follow_eq6():
    s = np.random.default_rng(8).random((2, 3, 5)).astype(np.float32)
    L, D, P = s.shape
    M = 9
    thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=M, correction=False)
    for l in range(L):
        desc = np.sort(s[l].ravel().astype(np.float64))[::-1]
        for m in range(M):
            n = tokens_for_flops((1 - m / M) * block_flops(P + PREFIX, DIM), DIM)
            k = int(np.clip(round((n - PREFIX) * D), 0, D * P))
            if k == D * P:
                assert thr[l, m] == -np.inf
            elif k == 0:
                assert thr[l, m] == np.nextafter(np.float32(desc[0]), np.float32(np.inf))
            else:   # the mean of the k-th and (k+1)-th largest, rounded to float32
                assert thr[l, m] == np.float32((desc[k - 1] + desc[k]) / 2), (l, m, k)
            assert np.sum(s[l] >= thr[l, m]) == k
            assert np.sum(s[l] >= np.float32(thr[l, m])) == k     # float32 runtime agrees


def test_thresholds_between_adjacent_float32_scores():
    P = 12                                              # scores one float32 ulp apart
    row = np.float32(0.5) - np.arange(P, dtype=np.float32) * np.finfo(np.float32).eps / 4
    s = np.stack([row, row[::-1]])[None].astype(np.float32)
    thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=15)
    kept = kept_counts(s, thr)
    kept32 = (s[0][None, :, :] >= thr[0].astype(np.float32)[:, None, None]).sum(axis=-1)
    np.testing.assert_array_equal(kept[0], kept32)
    assert kept[0, -1].sum() == 0 and kept[0, 0].sum() == 2 * P


def test_identical_images_hit_target_within_one_token():
    P, M, D = 32, 41, 6
    row = np.random.default_rng(1).permutation(np.linspace(0.01, 1.0, P))
    s = np.broadcast_to(row, (2, D, P)).astype(np.float32)
    target = np.minimum(np.arange(M) / M, _r_max(P))
    one_token = 1.0 - block_flops(P + PREFIX - 1, DIM) / block_flops(P + PREFIX, DIM)
    for correction in (False, True):
        thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=M,
                                   correction=correction)
        r = flops_reduction(kept_counts(s, thr), DIM, PREFIX, P)
        assert np.abs(r - target).max() <= one_token + 1e-12


def test_correction_reduces_error_on_heterogeneous_images():
    rng = np.random.default_rng(2)
    L, D, P, M = 2, 40, 64, 51
    scale = 10.0 ** np.linspace(-3, 0, D)          # images with very different score ranges
    s = (rng.random((L, D, P)) * scale[None, :, None]).astype(np.float32)
    target = np.minimum(np.arange(M) / M, _r_max(P))
    err = {}
    for correction in (False, True):
        thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=M,
                                   correction=correction)
        err[correction] = np.abs(flops_reduction(kept_counts(s, thr), DIM, PREFIX, P) - target).mean()
    assert err[True] < err[False]


def test_candidate_thresholds_rejects_bad_input():
    s = _scores(np.random.default_rng(3))
    with pytest.raises(ValueError):
        candidate_thresholds(s[0], dim=DIM, num_prefix=1)
    bad = s.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        candidate_thresholds(bad, dim=DIM, num_prefix=1)
    with pytest.raises(ValueError):
        candidate_thresholds(s, dim=DIM, num_prefix=1, num_candidates=0)


# ----------------------------------------------------------------------------- counts, stage 3

def _edge_thresholds(s, M=21):
    thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=M)
    # add exact score values (ties on the threshold), just-above-max and +inf
    thr[:, 3] = s[:, 0, 0]
    thr[:, 4] = np.nextafter(s.reshape(s.shape[0], -1).max(axis=1).astype(np.float64), np.inf)
    thr[:, 5] = np.inf
    return thr


def test_kept_counts_matches_brute_force():
    s = _scores(np.random.default_rng(4), ties=True)
    thr = _edge_thresholds(s)
    kept = kept_counts(s, thr)
    L, D, _ = s.shape
    assert kept.shape == (L, thr.shape[1], D) and kept.dtype == np.uint16
    brute = np.array([[[np.sum(s[l, d].astype(np.float64) >= thr[l, m]) for d in range(D)]
                       for m in range(thr.shape[1])] for l in range(L)])
    np.testing.assert_array_equal(kept, brute)


def test_fisher_loss_table_matches_brute_force_and_ends():
    rng = np.random.default_rng(5)
    P = 8                                           # small N: the last candidate prunes everything
    s = _scores(rng, P=P, ties=True)
    fn = normalise_fisher(rng.random(s.shape) ** 4)
    thr = candidate_thresholds(s, dim=DIM, num_prefix=PREFIX, num_candidates=21)
    f = fisher_loss_table(s, fn, thr)
    assert f.shape == thr.shape
    L, M = thr.shape
    brute = np.array([[fn[l][s[l] < thr[l, m]].sum() for m in range(M)] for l in range(L)])
    np.testing.assert_allclose(f, brute, rtol=1e-12, atol=1e-15)
    assert np.all(f[:, 0] == 0.0)
    assert np.all(kept_counts(s, thr)[:, -1] == 0)
    np.testing.assert_allclose(f[:, -1], 1.0, rtol=1e-12)
    assert np.all(np.diff(f, axis=1) >= 0)
    thr_e = _edge_thresholds(s)
    brute_e = np.array([[fn[l][s[l] < thr_e[l, m]].sum() for m in range(thr_e.shape[1])]
                        for l in range(L)])
    np.testing.assert_allclose(fisher_loss_table(s, fn, thr_e), brute_e, rtol=1e-12, atol=1e-15)


def test_flops_reduction_extremes():
    P, D = 16, 4
    kept = np.array([[np.full(D, P), np.zeros(D), [0, P, 0, P]]])
    r = flops_reduction(kept, DIM, PREFIX, P)
    assert r.shape == (1, 3)
    assert r[0, 0] == 0.0
    np.testing.assert_allclose(r[0, 1], _r_max(P))
    np.testing.assert_allclose(r[0, 2], _r_max(P) / 2)


# ----------------------------------------------------------------------------- normalisation

def test_normalise_fisher_modes_and_zero_block():
    rng = np.random.default_rng(6)
    f = rng.random((3, 5, 7)).astype(np.float32) * np.array([1e-6, 1.0, 0.0])[:, None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fb = normalise_fisher(f)
    np.testing.assert_allclose(fb.sum(axis=(1, 2)), [1.0, 1.0, 0.0], rtol=1e-12)
    assert np.all(fb[2] == 0.0)
    np.testing.assert_allclose(normalise_fisher(f, "raw"), f.astype(np.float64) / 5)
    with pytest.raises(ValueError):
        normalise_fisher(f, "softmax")
    with pytest.raises(ValueError):
        normalise_fisher(-f - 1)


# ----------------------------------------------------------------------------- store

META = {"model": "toy-vit", "model_hash": "a" * 64, "image_set_hash": "b" * 64,
        "label_source": "model"}


def _cal(importance="fisher_block", L=2, D=5, P=16):
    rng = np.random.default_rng(7)
    s = _scores(rng, L=L, D=D, P=P)
    fisher = (rng.random((L, D, P)) ** 3).astype(np.float32)
    labels = rng.integers(0, 10, D)
    return build_calibration(s, fisher, labels, dim=DIM, num_prefix=PREFIX, meta=dict(META),
                             num_candidates=11, importance=importance)


def test_build_calibration_importance_modes():
    rng = np.random.default_rng(9)
    s, fisher = _scores(rng, L=2, D=5), rng.random((2, 5, 16)).astype(np.float32)
    kw = dict(dim=DIM, num_prefix=PREFIX, num_candidates=11)
    raw = build_calibration(s, fisher, np.arange(5), meta=dict(META), importance="fisher_raw", **kw)
    np.testing.assert_allclose(raw.fisher, fisher / 5, rtol=1e-6)
    assert raw.meta["importance"] == "fisher_raw"
    att = build_calibration(s, fisher, np.arange(5), meta=dict(META), importance="cls_attention", **kw)
    np.testing.assert_allclose(att.fisher, normalise_fisher(s), rtol=1e-6)
    np.testing.assert_array_equal(att.thresholds, raw.thresholds)   # importance never moves θ
    with pytest.raises(CalibrationError):
        build_calibration(s, fisher, np.arange(5), meta={**META, "num_images": 4}, **kw)
    cal = _cal()
    assert (cal.num_layers, cal.num_candidates, cal.num_images) == (2, 11, 5)
    assert cal.meta["format"] == FORMAT and cal.meta["version"] == VERSION
    np.testing.assert_allclose(cal.fisher.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(cal.flops_reduction(),
                               flops_reduction(cal.kept, DIM, PREFIX, 16))
    with pytest.raises(CalibrationError):
        _cal("entropy")
    with pytest.raises(CalibrationError):
        build_calibration(cal.scores, cal.fisher, cal.labels, dim=DIM, num_prefix=1,
                          meta={"model": "x"})


def test_save_load_round_trip(tmp_path):
    cal = _cal()
    path = tmp_path / "cal.npz"
    cal.save(path)
    assert os.listdir(tmp_path) == ["cal.npz"]        # no temp file left behind
    back = Calibration.load(path, expect_model_hash="a" * 64, expect_image_set_hash="b" * 64)
    for key in ("thresholds", "fisher_loss", "kept", "scores", "fisher", "labels"):
        a, b = getattr(cal, key), getattr(back, key)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert back.meta == cal.meta


def test_save_is_atomic(tmp_path, monkeypatch):
    cal = _cal()
    target = tmp_path / "cal.npz"

    def broken(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(RuntimeError):
        cal.save(target)
    assert not target.exists() and os.listdir(tmp_path) == []
    monkeypatch.undo()
    cal.save(target)                                     # an existing file survives a failed save
    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(RuntimeError):
        cal.save(target)
    assert os.listdir(tmp_path) == ["cal.npz"]
    monkeypatch.undo()
    np.testing.assert_array_equal(Calibration.load(target).thresholds, cal.thresholds)


def _rewrite(src, dst, *, drop=(), meta=None, drop_meta=(), arrays=None):
    """Copy a calibration file, dropping arrays / changing or dropping meta fields."""
    with np.load(src, allow_pickle=False) as z:
        content = {k: z[k] for k in z.files if k not in drop}
    if meta or drop_meta:
        m = json.loads(str(content["meta_json"][()]))
        m.update(meta or {})
        for key in drop_meta:
            del m[key]
        content["meta_json"] = np.array(json.dumps(m))
    content.update(arrays or {})
    with open(dst, "wb") as fh:
        np.savez_compressed(fh, **content)
    return dst


def _load_error(path, **kw) -> str:
    with pytest.raises(CalibrationError) as info:
        Calibration.load(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_load_errors_are_one_line(tmp_path):
    good = tmp_path / "good.npz"
    _cal().save(good)
    data = good.read_bytes()
    assert "not found" in _load_error(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"\x00\x01 not a zip\n at all\n" * 10)
    assert "corrupt" in _load_error(tmp_path / "garbage.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert "corrupt" in _load_error(tmp_path / "empty.npz")
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    assert "corrupt" in _load_error(tmp_path / "trunc.npz")
    with zipfile.ZipFile(good) as zf:                   # flip a byte inside a member's data
        info = zf.getinfo("scores.npy")
    head = info.header_offset                           # local header: name/extra lengths at +26/+28
    at = (head + 30 + int.from_bytes(data[head + 26:head + 28], "little")
          + int.from_bytes(data[head + 28:head + 30], "little") + info.compress_size // 2)
    (tmp_path / "flip.npz").write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    msg = _load_error(tmp_path / "flip.npz")           # opens fine; CRC / zlib error on read
    assert "corrupt" in msg and ("BadZipFile" in msg or "error" in msg)
    np.save(tmp_path / "single.npy", np.zeros(3))
    _load_error(tmp_path / "single.npy")
    msg = _load_error(_rewrite(good, tmp_path / "fmt.npz", meta={"format": "other-tool"}))
    assert "not a vitedge calibration" in msg
    assert "newer" in _load_error(_rewrite(good, tmp_path / "ver.npz", meta={"version": VERSION + 1}))
    assert "missing arrays: kept" in _load_error(_rewrite(good, tmp_path / "key.npz", drop=("kept",)))
    _load_error(_rewrite(good, tmp_path / "nometa.npz", drop=("meta_json",)))
    assert "lacks model_hash" in _load_error(_rewrite(good, tmp_path / "mk.npz",
                                                      drop_meta=("model_hash",)))
    assert "shape" in _load_error(_rewrite(good, tmp_path / "shape.npz", meta={"num_images": 4}))
    assert "shape" in _load_error(_rewrite(good, tmp_path / "shape2.npz",
                                           arrays={"labels": np.zeros(7, np.int64)}))
    msg = _load_error(good, expect_model_hash="c" * 64)
    assert "another model" in msg and "aaaaaaaaaaaa" in msg and "vitedge calibrate" in msg
    assert "image set" in _load_error(good, expect_image_set_hash="d" * 64)


def test_calibration_error_is_value_error():
    assert issubclass(CalibrationError, ValueError)
    assert str(CalibrationError("a\nb  c")) == "a b c"
