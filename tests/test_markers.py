"""Burned-in markers: the stamp detector on made-up images with and without a stamp (and on real images of
../shared when present), the marker zones masked identically by the model in training and in predict, and the
counterfactual check that pastes the stamp onto images called normal."""
from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.config import Config
from cxr.data import markers
from cxr.explain.checks import stamp_counterfactual
from cxr.reporting import describe_counterfactual, describe_markers


def chest(size: int = 224, seed: int = 0) -> np.ndarray:
    """A made-up frontal film: dark border, a bright body with two darker lung fields, noise."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 12.0)
    y, x = np.mgrid[0:size, 0:size] / size
    body = (np.abs(x - 0.5) < 0.36) & (y > 0.05)
    img[body] = 150
    for cx in (0.33, 0.67):
        img[((x - cx) / 0.13) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 80
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [224, 160, 96])
def test_the_detector_finds_a_pasted_stamp_and_nothing_on_a_clean_film(size):
    clean = np.stack([chest(size, s) for s in range(4)])
    stamped = np.stack([markers.paste_stamp(c) for c in clean])
    found = markers.detect(np.concatenate([clean, stamped]))
    assert list(found["stamp"]) == [False] * 4 + [True] * 4, found
    if size >= 160:  # the bold glyph rule needs the glyph's strokes, which a 96-px image blurs away
        assert list(found["bold_r"]) == [False] * 4 + [True] * 4, found
    else:
        assert not found["bold_r"].iloc[:4].any()
    assert (found["kv_score"].iloc[4:] > 0.9).all() and (found["kv_score"].iloc[:4] < markers.KV_THRESHOLD).all()


def test_a_bright_edge_or_a_uniform_corner_is_not_a_stamp():
    img = chest()
    img[190:, 160:] = 255  # a saturated blob where the stamp would be
    edge = chest()
    edge[:, 200:] = 200  # the body's edge running along the border
    assert not markers.detect(np.stack([img, edge]))["stamp"].any()


def test_masking_the_zones_takes_the_stamp_away_and_nothing_else():
    img = markers.paste_stamp(chest())
    masked = markers.mask_zones(img)
    assert not markers.detect(masked[None])[["stamp", "bold_r"]].any(axis=None)
    changed = masked != img
    inside = markers.mask_zones(np.ones_like(img)) == 0
    assert changed[~inside].sum() == 0 and (masked[inside] == 0).all()
    assert 0.04 < inside.mean() < 0.09  # two corner zones, a few percent of the image
    batch = markers.mask_zones(np.stack([img, img])[..., None])  # (N, H, W, 1) as the model sees it
    np.testing.assert_array_equal(batch[0, ..., 0], masked)


def test_the_model_masks_the_zones_itself_in_training_scoring_and_predict(tmp_path):
    """`marker_zones` puts the masking in the model's first layer: the saved model reloaded for predict gives the
    same probability for an image with and without the stamp, and the masked image, exactly."""
    from cxr import model as cxr_model, train
    from cxr.predict import predict_files

    config = Config(backbone="tiny_cnn", weights=None, image_size=64, batch_size=4, marker_zones=True)
    net = cxr_model.build_model(config)
    assert type(net.get_layer("to_float")).__name__ == "MaskedFloat"
    clean = chest(64, 3)
    stamped = markers.paste_stamp(clean)
    assert (stamped != clean).any()
    p = train.predict_proba(net, np.stack([clean, stamped, markers.mask_zones(stamped)])[..., None], 4)
    assert p[1] == pytest.approx(p[2], abs=1e-6)
    training = cxr_model.training_model(net, config.augment)  # fine-tuning runs through the same first layer
    assert training.get_layer("to_float") is net.get_layer("to_float")
    folder = cxr_model.save_model(net, tmp_path / "m", config, 0.5, ("NORMAL", "PNEUMONIA"))
    for name, image in (("a.png", stamped), ("b.png", markers.mask_zones(stamped))):
        Image.fromarray(image).save(tmp_path / name)
    a, b = predict_files(folder, [tmp_path / "a.png", tmp_path / "b.png"])
    assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    assert a["probability"] == pytest.approx(float(p[1]), abs=1e-5)
    plain = cxr_model.build_model(config.replace(marker_zones=False))
    assert type(plain.get_layer("to_float")).__name__ == "Rescaling"  # off: today's model, unchanged


def test_the_counterfactual_flips_a_model_that_reads_the_stamp_and_not_one_that_ignores_it():
    images = np.stack([chest(96, s) for s in range(30)])
    zone = markers.mask_zones(np.ones((96, 96), np.uint8)) == 0

    def shortcut(batch):  # probability rises with the bright (text-like) pixels of the marker zones
        return np.clip(0.2 + (batch[..., 0][:, zone] > 170).sum(axis=1) / 10.0, 0, 1)

    def anatomy(batch):  # looks at the lung fields only
        return np.clip(batch[..., 0][:, 30:70, 20:76].mean(axis=(1, 2)) / 400.0, 0, 1)

    flipped = stamp_counterfactual(shortcut, images, threshold=0.5)
    assert flipped["n"] == 30 and flipped["changed"] == 30 and not flipped["meets_targets"]
    assert flipped["mean_rise"] > 0.3 and flipped["changed_ci"][0] > 0.8
    assert "shortcut" in describe_counterfactual(flipped)
    steady = stamp_counterfactual(anatomy, images, threshold=0.5)
    assert steady["n"] == 30 and steady["changed"] == 0 and steady["meets_targets"]
    assert abs(steady["mean_rise"]) < 0.01 and "does not move" in describe_counterfactual(steady)
    none = stamp_counterfactual(lambda b: np.ones(len(b)), images, threshold=0.5)
    assert none["n"] == 0 and none["meets_targets"] is None


def test_the_table_and_the_finding_say_when_the_stamp_is_tied_to_the_label():
    index = pd.DataFrame({"official_split": ["train"] * 6 + ["test"] * 2,
                          "subtype": ["normal", "normal", "virus", "virus", "bacteria", "bacteria", "normal", "virus"]})
    found = pd.DataFrame({"stamp": [False, False, True, True, True, False, True, False],
                          "bold_r": [False, True, True, True, False, False, True, False]})
    table = markers.marker_table(index, found)
    assert table.loc[("train", "virus"), "stamp"] == 2 and table.loc[("train", "normal"), "stamp"] == 0
    assert table.loc[("train", "bacteria"), "stamp share"] == 0.5
    finding = markers.marker_finding(table)
    assert finding["train_pneumonia_stamped"] == 3 and finding["test_normal_stamped"] == 1
    assert not finding["tied_to_label"]  # 3 images: too few to call it a finding
    many = markers.marker_finding(table.assign(stamp=table["stamp"] * 10))
    assert many["tied_to_label"] and "means pneumonia" in describe_markers(many)


def test_on_real_images_the_stamp_is_on_viral_training_images_and_on_no_training_normal(shared_data):
    """A slice of the shared 224-px copy: the first 300 training normals and viral images by name."""
    with zipfile.ZipFile(shared_data / "chest-xray-pneumonia-224.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpeg") and "/train/" in n)
        normals = [n for n in names if "/NORMAL/" in n][:300]
        viral = [n for n in names if "_virus_" in n][:300]
        images = np.stack([np.asarray(Image.open(zf.open(n)).convert("L")) for n in normals + viral])
    found = markers.detect(images)
    assert found["stamp"].iloc[:300].sum() == 0
    assert found["stamp"].iloc[300:].sum() >= 15  # about 10% of viral training images carry it
