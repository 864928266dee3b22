"""EfficientNet-Lite0/1/2 port: the safe .pth reader, the weight cache and agreement with the PyTorch reference.

Runs under whichever Keras backend is active (KERAS_BACKEND); PyTorch is not needed: the reference logits are
in tests/fixtures/lite{0,1,2}_reference.npz (made by tests/fixtures/make_lite_reference.py).
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from cxr import lite  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = list(lite.VARIANTS)


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_lite_reference", FIXTURES / "make_lite_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A cache with the converted weights of every variant (converted once per test session)."""
    directory = tmp_path_factory.mktemp("cxr-cache")
    for variant in VARIANTS:
        lite.imagenet_weights(variant, include_top=True, directory=directory)
    return directory


# last block index, its depthwise channels (expanded last-stage filters) and the last stage's filters
LAST_BLOCK = {"lite0": (15, 1152, 320), "lite1": (20, 1152, 320), "lite2": (20, 1248, 352)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_read_without_torch(variant):
    state = lite.read_torch_state_dict(lite.pytorch_weights_file(variant))
    assert sum(v.size for v in state.values()) == lite.VARIANTS[variant].num_values
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    last, channels, filters = LAST_BLOCK[variant]
    assert state[f"_blocks.{last}._depthwise_conv.weight"].shape == (channels, 1, 3, 3)
    assert state[f"_blocks.{last}._project_conv.weight"].shape == (filters, channels, 1, 1)
    assert f"_blocks.{last + 1}._bn0.weight" not in state
    assert state["_conv_head.weight"].shape == (1280, filters, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(state["_bn1.running_var"] > 0)


def test_stage_scaling_rules():
    """Width: filters x multiplier rounded to multiples of 8; depth: repeats rounded up, except the first and last
    stage; stem 32 and head 1280 fixed (efficientnet_lite_pytorch / TF efficientnet/lite builder)."""
    assert lite.stages("lite0") == lite.BASE_STAGES
    repeats = [1, 3, 3, 4, 4, 5, 1]
    assert [s[0] for s in lite.stages("lite1")] == repeats
    assert [s[5] for s in lite.stages("lite1")] == [16, 24, 40, 80, 112, 192, 320]
    assert [s[0] for s in lite.stages("efficientnet_lite2")] == repeats
    assert [s[4:] for s in lite.stages("lite2")] == [(32, 16), (16, 24), (24, 48), (48, 88), (88, 120), (120, 208),
                                                      (208, 352)]
    assert [lite.round_filters(f, 1.1) for f in (32, 1280)] == [32, 1408]  # what fix_head_stem avoids
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        lite.get_variant("lite9")


def test_reader_works_where_torch_cannot_be_imported():
    """Even with PyTorch installed, the reader must not need it: run it where `import torch` fails."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import os; os.environ['KERAS_BACKEND'] = 'jax' if 'jax' in os.environ.get('KERAS_BACKEND', '') else "
            "os.environ.get('KERAS_BACKEND', 'tensorflow').replace('torch', 'tensorflow')\n"
            "from cxr import lite\n"
            "for variant in lite.VARIANTS:\n"
            "    state = lite.read_torch_state_dict(lite.pytorch_weights_file(variant))\n"
            "    print(sum(v.size for v in state.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [int(n) for n in out.stdout.split()[-len(VARIANTS):]] == [v.num_values for v in lite.VARIANTS.values()]


@pytest.mark.parametrize("variant", VARIANTS)
def test_architecture_matches_state_dict(variant):
    model = lite.build_lite(variant, include_top=True, name=variant)
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert n_bn == {"lite0": 49, "lite1": 64, "lite2": 64}[variant]
    assert model.count_params() == lite.VARIANTS[variant].num_values - n_bn  # one num_batches_tracked per BN
    assert model.output_shape == (None, 1000)
    assert lite.build_lite(variant, (64, 64, 3)).output_shape == (None, 2, 2, 1280)
    names = [layer.name for layer in model.layers]
    assert "block6a_expand_conv" in names and names[-4:] == ["top_bn", "top_activation", "avg_pool", "predictions"]


def _legacy_file(state_pickle: bytes) -> bytes:
    header = b"".join(pickle.dumps(v, protocol=2) for v in
                      (lite._TORCH_MAGIC, lite._TORCH_PROTOCOL, {"little_endian": True}))
    return header + state_pickle + pickle.dumps([], protocol=2)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (_Evil(marker), {"_conv_stem.weight": _Evil(marker)}):
        path = tmp_path / "evil.pth"
        path.write_bytes(_legacy_file(pickle.dumps(payload, protocol=2)))
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
            lite.read_torch_state_dict(path)
    # GLOBAL opcode of protocol 0 and a builtins lookup are refused as well
    raw = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        lite.SafeUnpickler(io.BytesIO(raw)).load()
    assert not marker.exists()


def test_truncated_or_foreign_file_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(pickle.dumps(123, protocol=2))
    with pytest.raises(ValueError, match="magic"):
        lite.read_torch_state_dict(path)
    good = lite.pytorch_weights_file("lite0").read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        lite.read_torch_state_dict(path)
    path.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="zip"):
        lite.read_torch_state_dict(path)


def test_weight_cache_is_reused_and_repaired(weights_dir):
    top = lite.imagenet_weights("lite0", include_top=True, directory=weights_dir)
    notop = lite.imagenet_weights("lite0", include_top=False, directory=weights_dir)
    assert top.name.endswith("_top.weights.h5") and notop.name.endswith("_notop.weights.h5")
    assert notop.name == "efficientnet_lite0_579344248a93_notop.weights.h5"  # the name caches already hold
    assert not list(weights_dir.glob(".tmp-*"))
    mtime = top.stat().st_mtime_ns
    assert lite.imagenet_weights("lite0", include_top=True, directory=weights_dir) == top
    assert top.stat().st_mtime_ns == mtime  # reused, not converted again
    notop.write_bytes(b"corrupt")
    lite.imagenet_weights("lite0", include_top=False, directory=weights_dir)
    assert notop.stat().st_size > 1_000_000  # converted again
    model = lite.efficientnet_lite("lite0", (64, 64, 3), weights=notop)
    assert model.output_shape == (None, 2, 2, 1280)
    assert [lite.imagenet_weights(v, directory=weights_dir).name.split("_")[1] for v in VARIANTS] == VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_pytorch_reference(variant, weights_dir):
    ref = np.load(FIXTURES / f"{variant}_reference.npz")
    maker = _load_fixture_module()
    images = maker.make_inputs(int(ref["seed"]), int(ref["size"]))
    assert maker.checksum(images) == str(ref["inputs_sha256"])
    x = (images.astype(np.float32) - float(ref["mean"])) / float(ref["std"])
    model = lite.build_lite(variant, images.shape[1:], include_top=True, name=variant)
    model.load_weights(lite.imagenet_weights(variant, include_top=True, directory=weights_dir))
    logits = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)
    expected = ref["logits"].astype(np.float64)
    rel = np.abs(logits - expected).max(axis=1) / np.abs(expected).max(axis=1)
    print(f"{variant} at {images.shape[1]} px, backend={keras.backend.backend()}: max relative error of logits "
          f"{rel.max():.2e}")
    assert rel.max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_normalisation_constants():
    assert lite.MEAN == (127.0,) * 3 and lite.STD == (128.0,) * 3
    for variant in VARIANTS:
        ref = np.load(FIXTURES / f"{variant}_reference.npz")
        assert float(ref["mean"]) == 127.0 and float(ref["std"]) == 128.0
