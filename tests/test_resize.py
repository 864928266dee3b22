"""The same X-ray, however it was resized: the resampling path of the augmentation, and the check that scores the
full-resolution originals of ../shared/data/raw-sample beside their 224-px copies (skipped without ../shared)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import augment, data, reporting
from cxr.config import Config


def _laplacian(a: np.ndarray) -> float:
    a = a.astype(float)
    return float(np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean())


def test_the_resampling_path_is_seeded_and_probability_zero_is_the_identity():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (6, 64, 64, 1), dtype=np.uint8)
    a = augment.resample_batch(x, np.random.default_rng(1), probability=1.0)
    b = augment.resample_batch(x, np.random.default_rng(1), probability=1.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.uint8 and not np.array_equal(a, x)
    np.testing.assert_array_equal(augment.resample_batch(x, np.random.default_rng(1), probability=0.0), x)


def _pairs(shared: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, the original decoded and resized by the package, its 224-px copy) for every raw-sample image."""
    raw = sorted((shared / "raw-sample").rglob("*.jpeg"))
    if not raw:
        pytest.skip("raw-sample/ not present")
    with zipfile.ZipFile(shared / data.SHARED_ZIP_NAME) as zf:
        names = {Path(n).name: n for n in zf.namelist()}
        return [(p.name, data.load_image(p, 224, "squash"), data.load_image(io.BytesIO(zf.read(names[p.name])), 224,
                                                                              "squash")) for p in raw]


def test_the_resampling_path_spans_the_gap_between_the_copies_and_the_originals(shared_data):
    """What separates a third-party 224-px copy from the same X-ray resized here (the originals come out sharper)
    lies within what the resampling path does to the copy in training: in pixels and in sharpness."""
    within_pixels = within_sharpness = 0
    pairs = _pairs(shared_data)
    for i, (name, original, copy) in enumerate(pairs):
        rng = np.random.default_rng(i)
        paths = augment.resample_batch(np.repeat(copy[None], 40, axis=0), rng, probability=1.0)
        gap = np.abs(original.astype(float) - copy).mean()
        spread = np.abs(paths.astype(float) - copy).mean(axis=(1, 2))
        within_pixels += gap <= np.percentile(spread, 90)
        sharp = [_laplacian(p) for p in paths]
        within_sharpness += min(sharp) <= _laplacian(original) <= max(sharp)
    assert len(pairs) == 24
    assert within_pixels >= 0.9 * len(pairs), within_pixels
    assert within_sharpness >= 0.9 * len(pairs), within_sharpness


def test_raw_sample_agreement_scores_each_original_with_a_model_that_never_saw_its_child(shared_data, tmp_path):
    """Each original is scored beside its copy by its fold's model (here: fold models that answer a constant of
    their own, so the test sees which one scored what), and an image outside the training rows by the ensemble."""
    from scipy.special import logit

    from cxr import model as cxr_model
    from cxr.evaluate import shift

    root = data.extract(shared_data / data.SHARED_ZIP_NAME, tmp_path / "x")
    index, _ = data.build_index(root)
    raw_names = {p.name for p in (shared_data / "raw-sample").rglob("*.jpeg")}
    rows = index[index["path"].str.rsplit("/", n=1).str[-1].isin(raw_names)].reset_index(drop=True)
    rows["split"] = "train"
    rows["fold"] = np.arange(len(rows)) % 2
    rows.loc[0, ["split", "fold"]] = ["test", -1]  # one original outside the training rows: the whole ensemble
    images = np.stack([data.load_image(root / p, 32, "squash") for p in rows["path"]])
    prepared = data.Prepared(index=rows, skipped=pd.DataFrame(), images=images, root=root, source=None)
    config = Config(backbone="tiny_cnn", weights=None, image_size=32, batch_size=8)
    members = []
    for f, constant in enumerate((0.2, 0.7)):
        m = cxr_model.build_model(config, name=f"fold{f}")
        kernel, _ = m.get_layer("logit").get_weights()
        m.get_layer("logit").set_weights([np.zeros_like(kernel), np.array([logit(constant)], "float32")])
        members.append(m)
    result = type("Result", (), {"members": members, "model": cxr_model.ensemble_model(members, "pair")})()
    table = shift.raw_sample_agreement(result, prepared, config, 0.5, shared_data / "raw-sample")
    assert len(table) == 24 and set(table["fold"]) == {-1, 0, 1}
    expected = np.where(table["fold"] == 0, 0.2, np.where(table["fold"] == 1, 0.7, 0.45))
    np.testing.assert_allclose(table["p_copy"], expected, atol=1e-5)
    np.testing.assert_allclose(table["p_original"], expected, atol=1e-5)
    assert table["agree"].all() and np.allclose(table["delta"], 0, atol=1e-5)
    assert "24 of 24" in reporting.describe_raw_sample(table, 0.5)
    assert shift.raw_sample_agreement(result, prepared, config, 0.5, None).empty
