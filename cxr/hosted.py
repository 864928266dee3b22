"""Hosted notebooks (Colab, Kaggle Notebooks): what the notebook's first cell does once `cxr` is importable.

The cell itself only installs the package (it cannot call it before); `setup` then makes a hosted session behave
like a local clone: the cloned repository becomes the working folder (so data/, runs/ and doc/ are its own), Kaggle
credentials kept in Colab's secrets reach the Kaggle client, and on Kaggle it says whether the dataset is attached
(`cxr.data.sources.resolve_source` then uses it in place). On a local machine it does nothing and prints nothing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

KAGGLE_WORKING = Path("/kaggle/working")  # present in a Kaggle Notebook


def on_colab() -> bool:
    return "google.colab" in sys.modules


def on_kaggle() -> bool:
    return KAGGLE_WORKING.is_dir()


def colab_credentials() -> str:
    """Copy KAGGLE_USERNAME and KAGGLE_KEY from Colab's notebook secrets into the environment (what the Kaggle
    client reads); one line saying what happened."""
    try:
        from google.colab import userdata

        user, key = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
    except Exception as error:  # noqa: BLE001  (no secret, or access not granted: the bundled sample)
        return (f"no Kaggle credentials in the notebook's secrets ({type(error).__name__}): MODE = 'smoke' runs on "
                "the bundled sample")
    os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = user, key
    return "Kaggle credentials: from the notebook's secrets (the full data is downloaded)"


def setup(clone: str | Path | None = None) -> list[str]:
    """Prepare a hosted session and print (and return) what was done: `clone` (the repository cloned by the first
    cell) becomes the working folder when it holds the notebook; Colab's secrets give the Kaggle credentials; on
    Kaggle, whether the dataset is attached. Nothing on a local machine."""
    from cxr.data.sources import kaggle_input_dir

    said = []
    clone = Path(clone) if clone else None
    if clone is not None and (clone / "notebook.ipynb").is_file() and Path.cwd().resolve() != clone.resolve():
        os.chdir(clone)
        said.append(f"working folder: {clone}")
    if on_colab() and not os.environ.get("KAGGLE_KEY"):
        said.append(colab_credentials())
    if on_kaggle() and not os.environ.get("CXR_DATA"):
        found = kaggle_input_dir()
        said.append(f"data: the attached Kaggle dataset {found}" if found else
                    "no chest-xray-pneumonia dataset attached (Add Input); without it only MODE = 'smoke' runs")
    for line in said:
        print(line)
    return said
