"""Grad-CAM correctness on a toy task whose answer is known: the class is a bright square at a random place.

A small model with the project's structure (image -> to_float -> augment -> to_backbone -> nested functional
backbone -> pool -> dropout -> logit -> prob) is trained once per session for a few seconds; the Grad-CAM peak must
then fall inside the square for most positives. Runs under every Keras backend (KERAS_BACKEND=tensorflow/jax/torch).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import keras
from keras import layers

from cxr import explain, plots, reporting

BATCH = 16
SIZE = 32
SQUARE = 6
pytestmark = pytest.mark.backend


def _toy_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (n, S, S, 1) uint8, labels, square top-left corners (row, col), -1 for negatives)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, size=(n, SIZE, SIZE, 1)).astype(np.uint8)
    y = (np.arange(n) % 2).astype(np.int64)
    corners = np.full((n, 2), -1)
    for i in np.flatnonzero(y):
        r, c = rng.integers(2, SIZE - SQUARE - 2, size=2)
        x[i, r:r + SQUARE, c:c + SQUARE] = 230
        corners[i] = (r, c)
    return x, y, corners


def _toy_model(size: int = SIZE, last_activation: str = "relu", name: str = "toy") -> keras.Model:
    """A model with exactly the contract's chain, a tiny CNN backbone keeping a 16x16 feature map."""
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.Sequential([layers.RandomFlip("horizontal", seed=1)], name="augment")(x)
    x = layers.Rescaling(1 / 255.0, name="to_backbone")(x)
    b_in = keras.Input((size, size, 1))
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(b_in)
    h = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
    h = layers.Conv2D(16, 3, padding="same", name="conv3")(h)
    h = layers.Activation(last_activation, name="features")(h)
    backbone = keras.Model(b_in, h, name="backbone")
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="prob")(x)
    return keras.Model(inputs, outputs, name=name)


def _in_square(cams: np.ndarray, corners: np.ndarray, margin: int = 1) -> np.ndarray:
    """Whether each map's peak lies within the square (plus `margin` pixels)."""
    peaks = np.stack(np.unravel_index(cams.reshape(len(cams), -1).argmax(1), cams.shape[1:]), axis=1)
    lo, hi = corners - margin, corners + SQUARE - 1 + margin
    return np.all((peaks >= lo) & (peaks <= hi), axis=1)


@pytest.fixture(scope="module")
def toy():
    keras.utils.set_random_seed(0)
    x, y, _ = _toy_data(512, seed=0)
    model = _toy_model()
    model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    xt, yt, ct = _toy_data(64, seed=1)
    p = model.predict(xt, verbose=0).reshape(-1)
    return model, xt, yt, ct, p


def test_toy_model_learned_the_task(toy):
    _, _, yt, _, p = toy
    assert np.mean((p >= 0.5) == yt) >= 0.95


def test_replay_equals_model_output(toy):
    model, xt, *_ = toy
    assert explain.replay_check(model, xt[:16], batch_size=BATCH) <= 1e-4
    assert explain.find_target_layer(model) == "features"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_peak_falls_inside_the_square(toy, method):
    model, xt, yt, ct, _ = toy
    pos = yt == 1
    cams = explain.METHODS[method](model, xt[pos], target_class=1, batch_size=BATCH)
    hit = _in_square(cams, ct[pos], margin=2)
    assert hit.mean() >= 0.8, f"{method}: peak in square for only {hit.mean():.0%} of positives"


def test_range_shape_finite(toy):
    model, xt, *_ = toy
    cams = explain.grad_cam(model, xt[:10], batch_size=BATCH)
    assert cams.shape == (10, SIZE, SIZE) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    peaks = cams.reshape(10, -1).max(1)
    assert np.all((peaks == 0) | np.isclose(peaks, 1.0))  # each map: no heat at all, or scaled to a maximum of 1
    assert np.isclose(peaks, 1.0).sum() >= 5
    one = explain.grad_cam(model, xt[0, ..., 0], batch_size=BATCH)  # a single (H, W) image
    assert one.shape == (1, SIZE, SIZE)


def test_normal_map_differs_and_avoids_the_square(toy):
    model, xt, yt, ct, _ = toy
    pos = yt == 1
    c1 = explain.grad_cam(model, xt[pos], target_class=1, batch_size=BATCH)
    c0 = explain.grad_cam(model, xt[pos], target_class=0, batch_size=BATCH)
    assert np.abs(c1 - c0).mean() > 0.1
    # evidence for NORMAL is evidence against PNEUMONIA: it is not where the square is
    assert _in_square(c0, ct[pos], margin=0).mean() <= 0.2
    # on the square itself, the class-0 map is (near) zero where the class-1 map is hot
    hot = c1 > 0.8
    assert c0[hot].mean() < 0.2


def test_batch_equals_one_by_one(toy):
    model, xt, *_ = toy
    batched = explain.grad_cam(model, xt[:6], batch_size=4)
    single = np.concatenate([explain.grad_cam(model, xt[i:i + 1], batch_size=BATCH) for i in range(6)])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_all_negative_or_zero_activations_give_zeros():
    keras.utils.set_random_seed(1)
    x, _, _ = _toy_data(4, seed=2)
    for act in ("relu", "linear"):
        model = _toy_model(last_activation=act)
        conv3 = model.get_layer("backbone").get_layer("conv3")
        kernel, bias = conv3.get_weights()
        conv3.set_weights([np.zeros_like(kernel), np.full_like(bias, -5.0)])  # A = 0 (relu) or -5 (linear)
        logit = model.get_layer("logit")
        logit.set_weights([np.abs(logit.get_weights()[0]) + 0.1, logit.get_weights()[1]])  # all w_k > 0
        for fn in (explain.grad_cam, explain.grad_cam_plus_plus):
            cams = fn(model, x, target_class=1, batch_size=BATCH)
            assert np.isfinite(cams).all(), (act, fn.__name__)
            assert np.all(cams == 0), (act, fn.__name__)


def test_finish_cams_handles_degenerate_maps():
    raw = np.stack([np.full((4, 4), -1.0), np.zeros((4, 4)), np.full((4, 4), np.nan), np.eye(4) * 3])
    out = explain.finish_cams(raw, (8, 8))
    assert out.shape == (4, 8, 8) and np.isfinite(out).all()
    assert np.all(out[:3] == 0) and out[3].max() == pytest.approx(1.0)


def test_saved_and_loaded_model(toy, tmp_path):
    model, xt, *_ = toy
    path = tmp_path / "toy.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(explain.grad_cam(loaded, xt[:4], batch_size=BATCH), explain.grad_cam(model, xt[:4], batch_size=BATCH), atol=1e-4)


def test_randomization_lowers_the_correlation(toy):
    model, xt, yt, *_ = toy
    before = [w.copy() for w in model.get_weights()]
    table = explain.randomization_test(model, xt[yt == 1][:16], seed=0, batch_size=BATCH)
    assert list(table["randomised_to"])[1:] == ["logit", "conv3", "conv2", "conv1"]
    assert table["spearman_mean"].iloc[0] == 1.0 and (table["n_images"] == 16).all()
    # a random CNN still responds to a bright square a little (Adebayo et al. saw the same edge-detector effect),
    # but the maps of the randomised backbone must be far from the trained ones
    assert table["spearman_mean"].iloc[-1] < 0.6
    assert table["spearman_mean"].iloc[1:].mean() < 0.7
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # the user's model untouched
    fig = plots.randomization_figure(table, xt[yt == 1][:2])
    assert len(fig.axes) > 1


def test_deletion_is_faster_with_heat_order(toy):
    model, xt, yt, *_ = toy
    pos = xt[yt == 1][:12]
    cams = explain.grad_cam(model, pos, batch_size=BATCH)
    res = explain.deletion_insertion(model, pos, cams, steps=10, batch_size=BATCH)
    s = res.summary()
    assert res.curves["deletion_heat"].shape == (12, 11)
    assert s.loc["deletion", "heat"] < s.loc["deletion", "random"]
    assert s.loc["insertion", "heat"] > s.loc["insertion", "random"]
    assert len(plots.deletion_insertion_figure(res).axes) == 2


def test_confident_cases_rule():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.8, 0.95, 0.3])
    cases = explain.confident_cases(y, p, threshold=0.5, per_cell=2)
    assert list(cases.index) == [4, 0, 2, 5, 3, 1]  # TP, TN, FP, FN, each by confidence
    assert list(cases["cell"]) == ["TP", "TP", "TN", "TN", "FP", "FN"]
    np.testing.assert_array_equal(cases["p"], p[cases.index]) and np.testing.assert_array_equal(cases["y"], y[cases.index])
    none = explain.confident_cases(np.array([1, 0]), np.array([0.9, 0.1]), 0.5, cells=("FP", "FN"))
    assert none.empty
    with pytest.raises(ValueError, match="unknown cells"):
        explain.confident_cases(y, p, 0.5, cells=("XX",))


def test_overlay_and_figures(toy):
    model, xt, yt, _, p = toy
    cams = explain.grad_cam(model, xt[:8], batch_size=BATCH)
    rgb = plots.overlay(xt[0], cams[0])
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    fig = plots.overlay_figure(xt[0, ..., 0], cams[0], title="toy")
    assert len(fig.axes) == 3  # image, overlay, colour bar
    np.testing.assert_array_equal(plots.overlay(xt[0], np.zeros((SIZE, SIZE))), np.repeat(xt[0], 3, -1))  # no heat:
    # the X-ray shows through unchanged


def test_gradcam_pairs_show_the_predicted_class_on_one_scale(toy):
    model, xt, yt, _, p = toy
    called = (p[:6] >= 0.5).astype(int)
    raw = explain.grad_cam(model, xt[:6], target_class=called, normalize="none", batch_size=BATCH)
    scale = plots.map_scale(raw)
    fig = plots.gradcam_pairs(xt[:6, ..., 0], raw, yt[:6], p[:6], 0.5, scale, cells=["x"] * 6, title="t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert sum(t.startswith("evidence for ") for t in titles) == 6
    assert all(f"called {'PNEUMONIA' if c else 'NORMAL'}" in t for c, t in zip(called, titles[0::2]))
    colorbar = fig.axes[-1]
    assert colorbar.get_ylim()[1] == pytest.approx(scale)  # one stated scale for every panel
    assert plots.gradcam_pairs(xt[:0, ..., 0], raw[:0], [], [], 0.5, 1.0) is not None  # no cases: says so


def test_heat_shares_and_audit():
    cams = np.zeros((3, 20, 20), np.float32)
    cams[0, 0, 0] = 1.0  # all heat in the corner
    cams[1, 10, 10] = 1.0  # all heat in the centre
    shares = explain.heat_shares(cams)
    assert shares["border_share"].iloc[0] == 1.0 and shares["border_share"].iloc[1] == 0.0
    assert shares["outside_body_share"].iloc[0] == 1.0 and shares["outside_body_share"].iloc[1] == 0.0
    assert bool(shares["empty"].iloc[2]) and np.isnan(shares["border_share"].iloc[2])
    assert shares.attrs["border_area"] == pytest.approx(1 - 0.8 ** 2)
    audit = explain.shortcut_audit(cams, y_true=[1, 0, 1], y_pred=[1, 1, 1])
    assert isinstance(audit, pd.DataFrame) and set(audit["outcome"]) == {"correct", "incorrect", "all"}
    all_row = audit[audit["class"] == "all"].iloc[0]
    assert all_row["n"] == 3 and all_row["n_empty"] == 1 and all_row["border_share_mean"] == pytest.approx(0.5)
    assert "border" in reporting.describe_audit(audit)
    assert plots.shortcut_figure(audit) is not None


def test_bad_target_layer_and_class(toy):
    model, xt, *_ = toy
    with pytest.raises(ValueError):
        explain.grad_cam(model, xt[:2], layer="no_such_layer", batch_size=BATCH)
    with pytest.raises(ValueError):
        explain.grad_cam(model, xt[:2], target_class=2, batch_size=BATCH)
    # an earlier cut point of the backbone also works
    cams = explain.grad_cam(model, xt[:2], layer="conv2", batch_size=BATCH)
    assert cams.shape == (2, SIZE, SIZE) and np.isfinite(cams).all()


def test_skip_connection_target_is_refused():
    inputs = keras.Input((16, 16, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255.0, name="to_backbone")(inputs)
    b_in = keras.Input((16, 16, 1))
    a = layers.Conv2D(4, 3, padding="same", name="c1")(b_in)
    b = layers.Conv2D(4, 3, padding="same", name="c2")(a)
    out = layers.Add(name="add")([a, b])
    x = keras.Model(b_in, out, name="backbone")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(1, name="logit")(x)
    model = keras.Model(inputs, layers.Activation("sigmoid", name="prob")(x))
    img = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 1)).astype(np.uint8)
    assert explain.grad_cam(model, img, batch_size=BATCH).shape == (2, 16, 16)  # default: "add", the last feature map
    assert explain.grad_cam(model, img, layer="c1", batch_size=BATCH).shape == (2, 16, 16)  # c1 is a cut point
    with pytest.raises(ValueError, match="skip connection"):
        explain.grad_cam(model, img, layer="c2", batch_size=BATCH)


def test_project_model_tiny_cnn():
    cxr_model = pytest.importorskip("cxr.model")
    from cxr.config import Config

    keras.utils.set_random_seed(0)
    model = cxr_model.build_model(Config.preset("smoke", backbone="tiny_cnn", image_size=64).replace(weights=None))
    x = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 1)).astype(np.uint8)
    assert explain.replay_check(model, x, batch_size=BATCH) <= 1e-4
    for fn in (explain.grad_cam, explain.grad_cam_plus_plus):
        cams = fn(model, x, batch_size=BATCH)
        assert cams.shape == (3, 64, 64) and np.isfinite(cams).all() and 0 <= cams.min() <= cams.max() <= 1
    assert explain.find_target_layer(model) == "block3_relu"


def test_describe_randomization_and_faithfulness_verdicts():
    import pandas as pd

    base = dict(n_randomised=1, spearman_std=0.1, n_images=8, n_empty=0)
    falls = pd.DataFrame([dict(step=0, randomised_to="none (trained)", spearman_mean=1.0, **base),
                          dict(step=1, randomised_to="logit", spearman_mean=0.1, **base),
                          dict(step=2, randomised_to="stem", spearman_mean=0.02, **base)])
    assert "passed" in reporting.describe_randomization(falls) and "0.02" in reporting.describe_randomization(falls)
    stays = falls.assign(spearman_mean=[1.0, 0.9, 0.8])
    assert "FAILED" in reporting.describe_randomization(stays)
    empty = falls.assign(spearman_mean=[1.0, np.nan, np.nan], n_images=0)
    assert "could not be assessed" in reporting.describe_randomization(empty)

    rng = np.random.default_rng(0)
    r = rng.uniform(0.6, 0.8, 12)
    auc = pd.DataFrame({"deletion_heat": r - 0.3, "deletion_random": r, "insertion_heat": r - 0.2,
                        "insertion_random": r})
    text = reporting.describe_faithfulness(explain.Faithfulness(np.linspace(0, 1, 3), {}, auc))
    deletion, insertion = text.splitlines()
    assert deletion.startswith("Deletion") and "supported" in deletion and "NOT" not in deletion
    assert "12 of 12" in deletion
    assert insertion.startswith("Insertion") and "NOT supported" in insertion and "0 of 12" in insertion


def test_faithfulness_verdict_needs_a_significant_test():
    rng = np.random.default_rng(1)
    r = rng.uniform(0.6, 0.8, 12)
    noisy = pd.DataFrame({"deletion_heat": r + np.tile([-0.1, 0.09], 6), "deletion_random": r,  # mean -0.005
                          "insertion_heat": r, "insertion_random": r})
    few = noisy.iloc[:4].assign(deletion_heat=lambda d: d.deletion_random - 0.1)
    deletion = reporting.describe_faithfulness(explain.Faithfulness(np.linspace(0, 1, 3), {}, noisy)).splitlines()[0]
    assert "not significant" in deletion and "supported" not in deletion  # right direction, within the noise
    short = reporting.describe_faithfulness(explain.Faithfulness(np.linspace(0, 1, 3), {}, few)).splitlines()[0]
    assert "too few images for a test (4; at least 6)" in short and "no test" in short


def test_per_image_classes_raw_maps_and_the_ensemble(toy):
    """A per-image class gives each image its class's map; raw maps keep their scale (the per-image normalised
    ones divide by the maximum); an ensemble's map is the normalised mean of its members' raw maps."""
    from cxr import model as cxr_model

    model, xt, *_ = toy
    x = xt[:4]
    c1 = explain.grad_cam(model, x, target_class=1, batch_size=BATCH)
    c0 = explain.grad_cam(model, x, target_class=0, batch_size=BATCH)
    mixed = explain.grad_cam(model, x, target_class=np.array([1, 0, 0, 1]), batch_size=BATCH)
    np.testing.assert_allclose(mixed, np.stack([c1[0], c0[1], c0[2], c1[3]]), atol=1e-6)
    raw = explain.grad_cam(model, x, target_class=1, normalize="none", batch_size=BATCH)
    peak = raw.reshape(len(raw), -1).max(1)
    np.testing.assert_allclose(c1[peak > 0], raw[peak > 0] / peak[peak > 0, None, None], atol=1e-5)
    with pytest.raises(ValueError, match="target_class"):
        explain.grad_cam(model, x, target_class=np.array([1, 2, 0, 1]), batch_size=BATCH)
    twin = _toy_model(name="twin")
    twin.set_weights([w * 0.9 for w in model.get_weights()])
    ensemble = cxr_model.ensemble_model([model, twin], name="pair")
    raw_twin = explain.grad_cam(twin, x, target_class=1, normalize="none", batch_size=BATCH)
    expected = explain.finish_cams((raw + raw_twin) / 2, raw.shape[1:3])
    np.testing.assert_allclose(explain.grad_cam(ensemble, x, target_class=1, batch_size=BATCH), expected, atol=1e-5)
    with pytest.raises(ValueError, match="single model"):
        explain.grad_cam(ensemble, x, weights=[], batch_size=BATCH)


def test_the_cases_reading_names_the_feature_map_of_this_run():
    import pandas as pd

    from cxr.reporting import describe_cases

    cams = np.random.default_rng(0).random((4, 96, 96)).astype("float32")
    right = pd.DataFrame({"cell": ["TP", "TN"], "y": [1, 0], "p": [0.9, 0.1]}, index=[0, 1])
    wrong = pd.DataFrame({"cell": ["FP"], "y": [0], "p": [0.8]}, index=[2])
    text = describe_cases(right, wrong, cams, scale=1.0)
    assert "3 x 3 at 96 px" in text and "224" not in text
