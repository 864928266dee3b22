"""EfficientNet-Lite0 port: the safe .pth reader, the weight cache and agreement with the PyTorch reference.

Runs under whichever Keras backend is active (KERAS_BACKEND); PyTorch is not needed: the reference logits are
in tests/fixtures/lite0_reference.npz (made by tests/fixtures/make_lite0_reference.py).
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from cxr import lite0  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("make_lite0_reference", FIXTURES / "make_lite0_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cxr-cache")
    lite0.imagenet_weights(include_top=True, directory=directory)
    return directory


def test_state_dict_read_without_torch():
    state = lite0.read_torch_state_dict(lite0.pytorch_weights_file())
    assert sum(v.size for v in state.values()) == lite0.LITE0_NUM_VALUES
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(state["_bn1.running_var"] > 0)


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
            "from cxr import lite0\n"
            "state = lite0.read_torch_state_dict(lite0.pytorch_weights_file())\n"
            "print(sum(v.size for v in state.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == lite0.LITE0_NUM_VALUES


def test_architecture_matches_state_dict():
    model = lite0.build_lite0(include_top=True, name="lite0")
    assert model.count_params() == lite0.LITE0_NUM_VALUES - 49  # 49 BatchNorm num_batches_tracked counters
    assert model.output_shape == (None, 1000)
    assert lite0.build_lite0((64, 64, 3)).output_shape == (None, 2, 2, 1280)


def _legacy_file(state_pickle: bytes) -> bytes:
    header = b"".join(pickle.dumps(v, protocol=2) for v in
                      (lite0._TORCH_MAGIC, lite0._TORCH_PROTOCOL, {"little_endian": True}))
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
            lite0.read_torch_state_dict(path)
    # GLOBAL opcode of protocol 0 and a builtins lookup are refused as well
    raw = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        lite0.SafeUnpickler(io.BytesIO(raw)).load()
    assert not marker.exists()


def test_truncated_or_foreign_file_is_refused(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(pickle.dumps(123, protocol=2))
    with pytest.raises(ValueError, match="magic"):
        lite0.read_torch_state_dict(path)
    good = lite0.pytorch_weights_file().read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        lite0.read_torch_state_dict(path)
    path.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="zip"):
        lite0.read_torch_state_dict(path)


def test_weight_cache_is_reused_and_repaired(weights_dir):
    top = lite0.imagenet_weights(include_top=True, directory=weights_dir)
    notop = lite0.imagenet_weights(include_top=False, directory=weights_dir)
    assert top.name.endswith("_top.weights.h5") and notop.name.endswith("_notop.weights.h5")
    assert not list(weights_dir.glob(".tmp-*"))
    mtime = top.stat().st_mtime_ns
    assert lite0.imagenet_weights(include_top=True, directory=weights_dir) == top
    assert top.stat().st_mtime_ns == mtime  # reused, not converted again
    notop.write_bytes(b"corrupt")
    lite0.imagenet_weights(include_top=False, directory=weights_dir)
    assert notop.stat().st_size > 1_000_000  # converted again
    model = lite0.efficientnet_lite0((64, 64, 3), weights=notop)
    assert model.output_shape == (None, 2, 2, 1280)


def test_logits_match_pytorch_reference(weights_dir):
    ref = np.load(FIXTURES / "lite0_reference.npz")
    maker = _load_fixture_module()
    images = maker.make_inputs(int(ref["seed"]), int(ref["size"]))
    assert maker.checksum(images) == str(ref["inputs_sha256"])
    x = (images.astype(np.float32) - float(ref["mean"])) / float(ref["std"])
    model = lite0.build_lite0((224, 224, 3), include_top=True, name="lite0")
    model.load_weights(lite0.imagenet_weights(include_top=True, directory=weights_dir))
    logits = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)
    expected = ref["logits"].astype(np.float64)
    rel = np.abs(logits - expected).max(axis=1) / np.abs(expected).max(axis=1)
    print(f"backend={keras.backend.backend()} max relative error of logits: {rel.max():.2e}")
    assert rel.max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_normalisation_constants():
    assert lite0.LITE0_MEAN == (127.0,) * 3 and lite0.LITE0_STD == (128.0,) * 3
    ref = np.load(FIXTURES / "lite0_reference.npz")
    assert float(ref["mean"]) == 127.0 and float(ref["std"]) == 128.0
