"""`Config.reencode_quality` (issue 25, off in protocol v2): predict re-encodes a user's image as the saved model's
Config says, and the study's resize check scores the originals through the run's setting."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import UserError, data, model as cxr_model, train
from cxr.config import Config
from cxr.data.images import canonical
from cxr.evaluate import shift
from cxr.predict import predict_files


def _sharp_image(path: Path, seed: int = 0) -> Path:
    """A noisy 96 x 80 image (PNG, or a JPEG at quality 95): fine detail that a JPEG re-encode at 75 changes."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (80, 96), dtype=np.uint8)).save(path, quality=95)
    return path


def _seen_by_predict(folder: Path, image: Path, monkeypatch) -> np.ndarray:
    """The uint8 (S, S) image predict gives the model for `image`."""
    seen: list[np.ndarray] = []
    real = train.predict_proba

    def spy(model, batch, batch_size):
        seen.append(np.array(batch))
        return real(model, batch, batch_size)

    monkeypatch.setattr(train, "predict_proba", spy)
    (result,) = predict_files(folder, [image])
    monkeypatch.undo()
    assert "probability" in result, result
    return seen[0][0, ..., 0]


@pytest.mark.parametrize("quality", [75, None])
def test_predict_reencodes_a_users_image_as_the_saved_model_was_trained(tmp_path, monkeypatch, quality):
    config = Config.preset("tiny", reencode_quality=quality)
    folder = cxr_model.save_model(cxr_model.build_model(config), tmp_path / "m", config, 0.5, ("NORMAL", "PNEUMONIA"))
    assert json.loads((folder / "model.json").read_text())["config"]["reencode_quality"] == quality
    image = _sharp_image(tmp_path / "user.png")
    plain = data.load_image(image, config.image_size, config.resize_policy)
    expected = plain if quality is None else canonical(plain, quality)
    got = _seen_by_predict(folder, image, monkeypatch)
    np.testing.assert_array_equal(got, expected)
    assert (quality is None) == np.array_equal(got, plain)


def test_a_model_saved_before_the_setting_predicts_as_before_and_a_bad_quality_is_refused(tmp_path, monkeypatch):
    config = Config.preset("tiny")
    saved = cxr_model.save_model(cxr_model.build_model(config), tmp_path / "m", config, 0.5, ("NORMAL", "PNEUMONIA"))
    image = _sharp_image(tmp_path / "user.png", 1)
    for name, value in (("older", "absent"), ("bad", 100)):
        folder = tmp_path / name
        shutil.copytree(saved, folder)
        meta = json.loads((folder / "model.json").read_text())
        if value == "absent":
            del meta["config"]["reencode_quality"]
        else:
            meta["config"]["reencode_quality"] = value
        (folder / "model.json").write_text(json.dumps(meta))
        if value == "absent":
            np.testing.assert_array_equal(_seen_by_predict(folder, image, monkeypatch),
                                          data.load_image(image, config.image_size))
        else:
            with pytest.raises(UserError, match="reencode_quality must be null or an integer from 1 to 95"):
                cxr_model.load_model(folder)


def test_the_resize_check_scores_the_originals_through_the_runs_reencode(tmp_path, monkeypatch):
    """A made-up model answering the mean absolute difference from a reference image: the original is loaded as
    predict loads it under the run's setting (resized, then re-encoded at 75), the copy is taken as the cache
    holds it, and no `preprocess` is needed for that."""
    folder = tmp_path / "originals" / "NORMAL"
    folder.mkdir(parents=True)
    original = _sharp_image(folder / "a.jpeg", 2)  # the check reads JPEG originals
    reference = canonical(data.load_image(original, 32), 75)
    index = pd.DataFrame({"path": ["train/NORMAL/a.jpeg"], "label": ["NORMAL"], "split": "train", "fold": [0]})
    prepared = SimpleNamespace(index=index, images=reference[None].copy())
    monkeypatch.setattr(train, "predict_proba",
                        lambda m, x, b: np.abs(np.asarray(x, float) - reference).mean(axis=(1, 2)) / 255)
    result = SimpleNamespace(members=[0], model=None)
    for quality in (75, None):
        config = SimpleNamespace(image_size=32, resize_policy="squash", batch_size=4, reencode_quality=quality)
        table = shift.raw_sample_agreement(result, prepared, config, 0.5, tmp_path / "originals")
        assert len(table) == 1 and float(table["p_copy"].iloc[0]) == 0.0
        assert (float(table["p_original"].iloc[0]) == 0.0) == (quality == 75)
