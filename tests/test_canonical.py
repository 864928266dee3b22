"""The canonical re-encode (`cxr.data.images.canonical`, issue 25's experiment, `bench/resize_gap.py`) on tiny
synthetic images, and the resize check applying one preprocessing to the copies and the originals alike."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.images import canonical
from cxr.evaluate import shift


def _sharp(size: int = 64, seed: int = 0) -> np.ndarray:
    """A sharp synthetic image: a smooth ramp, a bright disc with a hard edge, faint pixel-scale noise (grain)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ramp = 60 + 100 * xx / size
    disc = 70 * (np.hypot(yy - size / 2, xx - size / 3) < size / 5)
    return np.clip(ramp + disc + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)


def _finest_energy(a: np.ndarray, cutoff: float = 0.25) -> float:
    """Spectral energy above `cutoff` cycles per pixel, the mean removed (as `shift.resize_diagnosis` measures it)."""
    x = a.astype(float) - a.mean()
    power = np.abs(np.fft.fft2(x)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(a.shape[0]), np.fft.fftfreq(a.shape[1]), indexing="ij")
    return float(power[np.hypot(fy, fx) > cutoff].sum())


def test_canonical_keeps_shape_and_dtype_and_leaves_its_input_alone():
    a = _sharp()
    before = a.copy()
    for quality, smooth in ((75, 0.0), (50, 0.0), (75, 0.8)):
        out = canonical(a, quality, smooth)
        assert out.shape == a.shape and out.dtype == np.uint8
        assert not np.shares_memory(out, a)
    np.testing.assert_array_equal(a, before)
    assert np.array_equal(canonical(a, 75), canonical(a, 75))  # deterministic


def test_canonical_takes_away_finest_scale_energy_of_a_sharp_image():
    a = _sharp()
    plain, smoothed = canonical(a, 75), canonical(a, 75, smooth=0.8)
    assert _finest_energy(plain) < 0.9 * _finest_energy(a)
    assert _finest_energy(smoothed) < 0.7 * _finest_energy(plain)  # the mild blur takes more of the finest scale
    assert abs(float(plain.mean()) - float(a.mean())) < 1.5  # brightness kept


def test_an_already_canonical_image_changes_far_less_than_a_sharp_one():
    for seed in range(3):
        a = _sharp(seed=seed)
        for quality in (75, 90):
            once = canonical(a, quality)
            first = np.abs(once.astype(float) - a).mean()
            again = np.abs(canonical(once, quality).astype(float) - once).mean()
            assert again < 0.25 * first, (seed, quality, first, again)


def test_canonical_refuses_what_is_not_one_uint8_grayscale_image():
    with pytest.raises(ValueError, match="uint8"):
        canonical(np.zeros((8, 8), np.float32), 75)
    with pytest.raises(ValueError, match="uint8"):
        canonical(np.zeros((8, 8, 3), np.uint8), 75)
    with pytest.raises(ValueError, match="quality"):
        canonical(np.zeros((8, 8), np.uint8), 0)


def test_raw_sample_agreement_applies_one_preprocessing_to_the_copy_and_the_original(tmp_path: Path, monkeypatch):
    """A made-up model that answers the mean grey level: with `preprocess` (here: add 40 grey levels) both the
    copy and the original are shifted before scoring; without it, neither (the original: a ramp from 80 to 120)."""
    from cxr import train

    folder = tmp_path / "originals" / "NORMAL"
    folder.mkdir(parents=True)
    Image.fromarray(np.tile(np.linspace(80, 120, 96).round().astype(np.uint8), (96, 1))).save(folder / "a.jpeg", quality=95)
    index = pd.DataFrame({"path": ["train/NORMAL/a.jpeg"], "label": ["NORMAL"], "split": "train", "fold": [0]})
    prepared = SimpleNamespace(index=index, images=np.full((1, 32, 32), 51, np.uint8))
    config = SimpleNamespace(image_size=32, resize_policy="squash", batch_size=4)
    monkeypatch.setattr(train, "predict_proba", lambda m, x, b: np.asarray(x, float).mean(axis=(1, 2)) / 255)
    result = SimpleNamespace(members=[0], model=None)
    plain = shift.raw_sample_agreement(result, prepared, config, 0.5, tmp_path / "originals")
    moved = shift.raw_sample_agreement(result, prepared, config, 0.5, tmp_path / "originals",
                                       preprocess=lambda a: (a + 40).astype(np.uint8))
    np.testing.assert_allclose(moved["p_copy"], plain["p_copy"] + 40 / 255)
    np.testing.assert_allclose(moved["p_original"], plain["p_original"] + 40 / 255, atol=1e-9)
    np.testing.assert_allclose(plain["p_copy"], [51 / 255])
    assert len(plain) == 1 and abs(float(plain["p_original"].iloc[0]) - 100 / 255) < 0.01
