"""Score new images with a saved model: one result per file, unreadable files reported, the rest still scored."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr.config import PRIMARY_TASK


def model_folder(path: str | Path, task: str = PRIMARY_TASK) -> Path:
    """A saved model folder: `path` itself, a model.keras file as is, or `path/<task>` when
    `path` is a run folder. Whether it really holds a model is checked by `cxr.model.load_model`."""
    path = Path(path)
    if path.suffix == ".keras":
        return path  # `load_model` takes the file too (and names it in its error)
    if not (path / "model.keras").is_file() and (path / task / "model.keras").is_file():
        return path / task
    return path


def predict_files(model_dir: str | Path, paths: list[str | Path],
                  gradcam_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Probability, label and threshold for each image; `{"path", "error"}` for a file that cannot be read.

    `probability` is the model's own output, the one the threshold chosen on the out-of-fold predictions applies to (`label`);
    `calibrated_probability` applies the calibration fitted on the out-of-fold predictions and saved with the model
    (`model.json`: temperature or Platt scaling; absent for models saved without one). Images go through the same
    decoding, resize policy and JPEG re-encode (`reencode_quality`, if the model was trained with one) as training
    (`cxr.data.load_image`, the settings of `model.json`), in batches of the size the model was trained
    with (`model.json`). A fold ensemble predicts the mean of its members' probabilities. With `gradcam_dir`, a
    Grad-CAM overlay PNG per image (the map of the predicted class) is written there and its path added.
    """
    from cxr import UserError, data, evaluate, model as cxr_model, train
    from cxr.config import Config

    model, meta = cxr_model.load_model(model_folder(model_dir))  # model.json checked against the model
    size, policy = meta["config"]["image_size"], meta["config"]["resize_policy"]
    quality = meta["config"].get("reencode_quality")  # None: off, and for models saved before the setting
    # the batch size the model was trained with; a record without one (auto) is resolved from its own Config
    batch_size = meta["config"].get("batch_size") or train.resolve(Config.from_dict(meta["config"])).batch_size
    threshold, names = float(meta["threshold"]), list(meta["class_names"])
    results: list[dict[str, Any]] = []
    images, ok = [], []
    for path in paths:
        try:
            images.append(data.load_image(path, size, policy, quality))
            ok.append(len(results))
            results.append({"path": str(path)})
        except Exception as exc:  # reported per file; the others are still scored
            # a refused input (cxr.data.ImageRejected and the like) says what is wrong in its own words
            text = " ".join(str(exc).split())
            results.append({"path": str(path), "error": text if isinstance(exc, UserError) else
                            f"{type(exc).__name__}: {text}"})
    if not images:
        return results
    batch = np.stack(images)[..., None]
    probs = train.predict_proba(model, batch, batch_size)  # fixed-shape (padded) batches
    calibrator = meta.get("calibration")
    calibrated = evaluate.apply_calibrator(calibrator, probs) if calibrator else None
    for j, (i, p) in enumerate(zip(ok, probs)):
        results[i].update(probability=round(float(p), 6), label=names[int(p >= threshold)],
                          threshold=round(threshold, 6), positive_class=names[1])
        if calibrated is not None:
            results[i]["calibrated_probability"] = round(float(calibrated[j]), 6)
    if gradcam_dir is not None:
        from cxr import explain, plots

        out = Path(gradcam_dir)
        out.mkdir(parents=True, exist_ok=True)
        called = (probs >= threshold).astype(int)
        cams = explain.grad_cam(model, batch, target_class=called, batch_size=batch_size)
        targets = overlay_names([results[i]["path"] for i in ok])
        for i, image, cam, c, name in zip(ok, batch[..., 0], cams, called, targets):
            r = results[i]
            fig = plots.overlay_figure(image, cam, title=f"{Path(r['path']).name}: P({names[1]}) = "
                                                          f"{r['probability']:.3f}, called {names[c]}",
                                       label=f"Grad-CAM: evidence for {names[c]}\n(this image's maximum = 1)")
            target = out / name
            plots.save_figure(fig, target)
            r["gradcam"] = str(target)
    return results


def predict_table(model_dir: str | Path, paths: list[str | Path]) -> "pd.DataFrame":
    """`predict_files` as a table for a notebook: one row per image, named by its file name (no folder, so no
    machine's path is shown), with its probability, calibrated probability, call and threshold, or its error."""
    import pandas as pd

    rows = predict_files(model_dir, paths)
    frame = pd.DataFrame(rows)
    frame["path"] = [Path(r["path"]).name for r in rows]
    return frame.rename(columns={"path": "image"}).set_index("image")


def overlay_names(paths: list[str | Path]) -> list[str]:
    """One Grad-CAM file name per input, never two alike: `<stem>_gradcam.png`, and where stems repeat (a.png and
    a.jpg, or two folders' 1.dcm) the parent folders are prefixed until they differ, then a counter."""
    paths = [Path(p) for p in paths]
    names = [p.stem for p in paths]
    depth = 0
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        counts = {n: names.count(n) for n in names}
        names = ["__".join([q for q in p.parent.parts[-depth:] if q.strip("/\\.")] + [p.stem])
                 if counts[n] > 1 else n for p, n in zip(paths, names)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(f"{n}{'' if k == 0 else f'-{k + 1}'}_gradcam.png")
    return out
