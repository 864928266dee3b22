"""Burned-in markers: the acquisition stamp that some images of the Kaggle archive carry (a bold "R" at the top left
and a "KV58"/"KV59"-style text at the bottom right, one device's or protocol's marking), found by template matching;
the fixed corner zones where such markings lie, masked the same way in training and in `predict`; and the stamp
pasted onto an image, for the counterfactual check of `cxr.explain.checks`.

The templates are cut from one training image of the dataset (`person1026_virus_1718.jpeg`, 224-px copy; Kermany
et al., Cell 2018, CC BY 4.0). Every size and position is relative to the image (224 px is the reference), so the
detector works on any square image of the cache."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

REFERENCE = 224  # the image size the templates and thresholds were measured at
# "KV" of the bottom-right stamp (12 x 12 at 224 px) and the whole stamp with its digits (13 x 18)
_KV = "3e3d3929211c0d0103080c043f3c3e382516130b0203061e443c474e5262530a003d6c78493c6e81839485251889926e4d3b82a3714559" \
      "413a86753a38419abf6d1755665a4c70853b4280c57906317c77342858434673a588311e92a31b002a4d4978637e7b2b88ab11316051466b" \
      "3a4f742e526b1054835340463a1d231a17190f2b2c59412e3715000f00030a0600"
_KV59 = "403e2e22211c090005050b00090801100e003e3d3929211c0d0103080c040c01000807103f3c3e382516130b0203061e19030d15060644" \
        "3c474e5262530a003d6c784f436b7a4f05493c6e81839485251889926e375068716a084d3b82a3714559413a86753a1a543427764b3841" \
        "9abf6d1755665a4c70856a5169557d193b4280c57906317c773428586b5f6e849811434673a588311e92a31b002a68511e698f004d4978" \
        "637e7b2b88ab113160703e135b5b0e51466b3a4f742e526b1054834f294f6a18105340463a1d231a17190f2b2c12182936040059412e37" \
        "15000f00030a0600001000030f00"
# the bold "R" at the top left (27 x 12)
_R = "15171b121a2f3728363b3f4a1a4f6a5b5c6c685a3b3b4741278ddfe9e6e2c9b96a454c47389cf5f2e3f3f8ecb76f4a4c2ba9f5b1697fa9e7" \
     "f39f454a1dc1e37015244588ffbe664b1fb8db711d1c204fe8d76d3b15bde271252e2d3ad3f3763715c5e56a1e2b2946d4f66d3e1dc0e175" \
     "2c2e2748e0e9533f21bdd8711f212f64f6d3433b25bbd679222751b1f1973d3b20b2eac2848bbcf3d14c353d15aafbf0e0f7f5dc79243a44" \
     "1db9f8e4d9e7e8a43729424708b6e8985c7fdabe3537393f05c4e366072cb2fa7e3d233610cbd96b201b59e6c54b203515bad273210b28a8" \
     "f081382f1fb3dd780f0a3366e8c95a2a1cafd5771c1b2426bbf0722e20b7e1781c022c195ce2d7601ec0eb6f1b0d222b3badea991098bd51" \
     "1d201f351d5ec6a600435a29212a26291a236769010b131820212b1b2515252e0e0a0d201b13261a28242224"


def _template(hex_text: str, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_text), np.uint8).reshape(shape)


KV_TEMPLATE = _template(_KV, (12, 12))
STAMP_KV = _template(_KV59, (13, 18))
STAMP_R = _template(_R, (27, 12))

# Where the markings lie, as (top, bottom, left, right) fractions of the image: the search regions of the detector
# and the zones that `mask_zones` blacks out (each about 3% of the image, outside the lung fields of these frontal
# films): the bottom-right one holds the stamp's text, the top-left one the bold "R".
KV_REGION = (0.86, 1.0, 0.72, 1.0)
R_REGION = (0.0, 0.45, 0.0, 0.18)
ZONES = ((0.88, 1.0, 0.76, 1.0), (0.0, 0.30, 0.0, 0.13))  # 98% of the bold "R" glyphs found lie inside the second
KV_THRESHOLD = 0.7  # normalised cross-correlation at which the stamp counts as present (checked by eye on grids of
# the 224-px copy: between 0.6 and 0.7 most matches are wires and clips, above 0.7 nearly all are the stamp)
SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.6)  # the stamp's size varies with the original's size before the 224-px copy


def _region(image: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    h, w = image.shape
    top, bottom, left, right = region
    return image[int(top * h):int(round(bottom * h)), int(left * w):int(round(right * w))]


def _scaled(template: np.ndarray, factor: float) -> np.ndarray:
    h, w = (max(5, round(n * factor)) for n in template.shape)
    return np.asarray(Image.fromarray(template).resize((w, h), Image.Resampling.BILINEAR), np.float64)


def _best_ncc(regions: np.ndarray, template: np.ndarray, min_std: float, max_mean: float) -> np.ndarray:
    """For each region of `regions` (N x h x w), the largest normalised cross-correlation of `template` over it.
    Windows flatter than `min_std` grey levels score 0 (a uniform patch matches nothing), and so do windows brighter
    on average than `max_mean`: the stamp is light text on the dark border, and the edge of the body beside the
    border is what it must not match."""
    th, tw = template.shape
    if regions.shape[1] < th or regions.shape[2] < tw:
        return np.zeros(len(regions))
    t = ((template - template.mean()) / (template.std() + 1e-9)).astype(np.float32)
    windows = sliding_window_view(regions.astype(np.float32), (th, tw), axis=(1, 2))  # N, y, x, th, tw
    mean = windows.mean(axis=(-1, -2))
    sd = windows.std(axis=(-1, -2))
    score = np.einsum("nijkl,kl->nij", windows, t) / (th * tw) / (sd + 1e-6)
    score[(sd < min_std) | (mean > max_mean)] = 0.0
    return score.reshape(len(regions), -1).max(axis=1)


def kv_scores(images: np.ndarray, chunk: int = 128) -> np.ndarray:
    """How much the bottom-right corner of each image (N x H x W uint8, square) looks like the "KV" stamp: the best
    normalised cross-correlation with the template over the stamp's region and sizes (1 = identical)."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    factor = images.shape[1] / REFERENCE
    templates = [_scaled(KV_TEMPLATE, s * factor) for s in SCALES]
    out = np.zeros(len(images))
    for start in range(0, len(images), chunk):
        regions = np.stack([_region(image, KV_REGION) for image in images[start:start + chunk]])
        out[start:start + chunk] = np.max([_best_ncc(regions, t, 15.0, 90.0) for t in templates], axis=0)
    return out


def kv_score(image: np.ndarray) -> float:
    """`kv_scores` of one image (H x W uint8)."""
    return float(kv_scores(np.asarray(image)[None])[0])


def bold_r(image: np.ndarray) -> bool:
    """True when the top-left region holds a bold, saturated glyph of the "R" marker's size (taller than wide, 6 to
    18% of the image height): bright pixels (>= 170) well above their neighbourhood, one connected component.
    Meant for images of 160 px or more (at 96 px the glyph's strokes blur below the brightness rule)."""
    from scipy import ndimage

    factor = image.shape[0] / REFERENCE
    box = _region(np.asarray(image), R_REGION).astype(np.int16)
    background = ndimage.uniform_filter(box.astype(np.float64), size=max(3, round(25 * factor)))
    mask = (box >= 170) & (box - background >= 70)
    labels, n = ndimage.label(mask)
    for k, where in enumerate(ndimage.find_objects(labels), start=1):
        h, w = where[0].stop - where[0].start, where[1].stop - where[1].start
        area = int((labels[where] == k).sum())
        if 14 * factor <= h <= 40 * factor and 5 * factor <= w <= 22 * factor and h > w and area >= 40 * factor ** 2:
            return True
    return False


def detect(images: np.ndarray) -> pd.DataFrame:
    """One row per image of `images` (N x H x W uint8): `kv_score`, `stamp` (the bottom-right acquisition stamp,
    kv_score >= KV_THRESHOLD) and `bold_r` (a bold "R" glyph at the top left)."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    scores = kv_scores(images)
    return pd.DataFrame({"kv_score": np.round(scores, 4), "stamp": scores >= KV_THRESHOLD,
                         "bold_r": [bold_r(image) for image in images]})


def mask_zones(images: np.ndarray, zones: tuple[tuple[float, float, float, float], ...] = ZONES) -> np.ndarray:
    """A copy of `images` (N x H x W or N x H x W x 1, or one H x W image) with every marker zone set to black (0),
    the same zones in every image whatever it holds: applied alike in training, scoring and `predict`, it takes the
    stamp away as a cue without a detector deciding per image."""
    out = np.array(images, copy=True)
    h, w = (out.shape[0], out.shape[1]) if out.ndim == 2 else (out.shape[1], out.shape[2])
    for top, bottom, left, right in zones:
        rows = slice(int(top * h), int(round(bottom * h)))
        cols = slice(int(left * w), int(round(right * w)))
        if out.ndim == 2:
            out[rows, cols] = 0
        else:
            out[:, rows, cols] = 0
    return out


def paste_stamp(image: np.ndarray) -> np.ndarray:
    """A copy of `image` (H x W uint8) with the acquisition stamp burned in where the archive's stamped images have
    it: the bold "R" at the top left and the "KV59" text at the bottom right, scaled to the image, each pixel the
    brighter of the image and the stamp (the marking is light on a dark border). For the counterfactual check."""
    image = np.asarray(image)
    out = image.copy()
    h, w = image.shape
    factor = h / REFERENCE
    for stamp, (top, left) in ((STAMP_R, (19 / REFERENCE, 1 / REFERENCE)),
                               (STAMP_KV, (210 / REFERENCE, 206 / REFERENCE))):
        piece = _scaled(stamp, factor).astype(np.uint8)
        y, x = int(round(top * h)), int(round(left * w))
        y, x = min(y, h - piece.shape[0]), min(x, w - piece.shape[1])
        patch = out[y:y + piece.shape[0], x:x + piece.shape[1]]
        out[y:y + piece.shape[0], x:x + piece.shape[1]] = np.maximum(patch, piece)
    return out


def marker_table(index: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """Images with the stamp and with a bold "R", per official split and subtype (normal, bacteria, virus), with
    their shares: `index` and `found` (from `detect`) row for row."""
    frame = pd.concat([index[["official_split", "subtype"]].reset_index(drop=True),
                       found[["stamp", "bold_r"]].reset_index(drop=True)], axis=1)
    table = frame.groupby(["official_split", "subtype"]).agg(images=("stamp", "size"), stamp=("stamp", "sum"),
                                                             bold_r=("bold_r", "sum"))
    table["stamp share"] = (table["stamp"] / table["images"]).round(3)
    table["bold R share"] = (table["bold_r"] / table["images"]).round(3)
    return table.rename(columns={"bold_r": "bold R"})


def marker_finding(table: pd.DataFrame) -> dict[str, Any]:
    """The numbers of the finding: stamped training images by class, and whether the stamp is tied to the label
    in training (on pneumonia images and on no, or almost no, normal one)."""
    def count(split: str, subtypes: tuple[str, ...], column: str = "stamp") -> int:
        rows = [(split, s) for s in subtypes if (split, s) in table.index]
        return int(table.loc[rows, column].sum()) if rows else 0

    def total(split: str, subtypes: tuple[str, ...]) -> int:
        rows = [(split, s) for s in subtypes if (split, s) in table.index]
        return int(table.loc[rows, "images"].sum()) if rows else 0

    pneumonia = ("bacteria", "virus")
    out = {"train_pneumonia_stamped": count("train", pneumonia), "train_pneumonia": total("train", pneumonia),
           "train_bacteria_stamped": count("train", ("bacteria",)), "train_virus_stamped": count("train", ("virus",)),
           "train_normal_stamped": count("train", ("normal",)), "train_normal": total("train", ("normal",)),
           "test_normal_stamped": count("test", ("normal",)), "test_normal": total("test", ("normal",)),
           "test_pneumonia_stamped": count("test", pneumonia), "test_pneumonia": total("test", pneumonia)}
    rate_p = out["train_pneumonia_stamped"] / max(out["train_pneumonia"], 1)
    rate_n = out["train_normal_stamped"] / max(out["train_normal"], 1)
    out["tied_to_label"] = bool(out["train_pneumonia_stamped"] >= 10 and rate_n <= 0.1 * rate_p)
    return out
