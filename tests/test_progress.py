"""cxr.progress: live bars in interactive sessions only; off under papermill/headless runs, CI and pytest."""
from __future__ import annotations

import numpy as np
import pytest

from cxr import progress

VARIABLES = ("CXR_PROGRESS", "TQDM_DISABLE", "CI", "PYTEST_CURRENT_TEST")


@pytest.fixture
def env(monkeypatch):
    """A clean environment (none of the switches set) in an interactive session; tests set what they need.
    Pytest sets PYTEST_CURRENT_TEST again between setup and call: `clean_env` in the test removes it."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    return monkeypatch


def clean_env(env) -> None:
    env.delenv("PYTEST_CURRENT_TEST", raising=False)


def test_on_in_an_interactive_session(env):
    clean_env(env)
    assert progress.enabled()


@pytest.mark.parametrize("name, value", [("CXR_PROGRESS", "0"), ("TQDM_DISABLE", "1"), ("CI", "true"),
                                         ("PYTEST_CURRENT_TEST", "tests/x.py::t")])
def test_each_switch_turns_it_off(env, name, value):
    clean_env(env)
    env.setenv(name, value)
    assert not progress.enabled()


def test_off_when_not_interactive_unless_forced(env):
    clean_env(env)
    env.setattr(progress, "_interactive", lambda: False)
    assert not progress.enabled()
    env.setenv("CXR_PROGRESS", "1")
    assert progress.enabled()
    env.setenv("TQDM_DISABLE", "1")  # the headless runner's switch wins
    assert not progress.enabled()


def test_off_under_pytest_by_default():
    assert not progress.enabled()  # PYTEST_CURRENT_TEST is set while a test runs


def test_headless_runner_turns_progress_off(monkeypatch, tmp_path):
    """`run_notebook` (make run, make notebook) sets the variables the kernel inherits."""
    import cxr.reporting.run as report

    seen = {}

    class Stop(Exception):
        pass

    def fake_execute(*args, **kwargs):
        import os

        seen.update(CXR_PROGRESS=os.environ.get("CXR_PROGRESS"), TQDM_DISABLE=os.environ.get("TQDM_DISABLE"),
                    progress_bar=kwargs.get("progress_bar"))
        raise Stop

    import papermill

    for name in VARIABLES[:2]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr("cxr.data.resolve_source", lambda source, data_dir: report.REPO / "cxr/sample/x.zip")
    with pytest.raises(Stop):
        report.run_notebook(mode="smoke", settings={"output_dir": str(tmp_path / "run")})
    assert seen == {"CXR_PROGRESS": "0", "TQDM_DISABLE": "1", "progress_bar": False}
    assert not (tmp_path / "run" / "notebook.ipynb").exists()


def test_bar_counts_when_on_and_is_silent_when_off(env):
    clean_env(env)
    b = progress.bar(range(5), desc="work")
    assert not b.disable and list(b) == list(range(5))
    env.setenv("CXR_PROGRESS", "0")
    quiet = progress.bar(total=3, desc="work")
    assert quiet.disable
    quiet.update(3)
    quiet.close()


def test_keras_callbacks(env):
    clean_env(env)
    import keras
    from tqdm import tqdm

    closed = []

    class Recording(tqdm):
        def close(self):
            if not self.disable:
                closed.append((self.desc, self.n, self.total, dict(self.postfix or {}) if isinstance(self.postfix, dict)
                               else self.postfix))
            super().close()

    env.setattr(progress, "_tqdm", lambda: Recording)
    env.setenv("CXR_PROGRESS", "0")
    assert progress.keras_callbacks("head") == []
    env.delenv("CXR_PROGRESS")
    callbacks = progress.keras_callbacks("head")
    assert len(callbacks) == 1 and isinstance(callbacks[0], keras.callbacks.Callback)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).normal(size=(32, 3)).astype("float32"), np.arange(32) % 2
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
    assert callbacks[0].epochs is None and callbacks[0].steps is None  # closed at the end
    steps = [c for c in closed if ": epoch " in c[0]]
    assert [(c[0], c[1], c[2]) for c in steps] == [("head: epoch 1", 4, 4), ("head: epoch 2", 4, 4)]
    epochs = [c for c in closed if c[0] == "head: epochs"]
    assert len(epochs) == 1 and epochs[0][1:3] == (2, 2)
    assert "val_loss=" in str(epochs[0][3]) and "val_accuracy=" in str(epochs[0][3])  # the latest validation metrics
    closed.clear()
    model.predict(x, batch_size=8, verbose=0, callbacks=progress.keras_callbacks("features"))
    assert [(c[0], c[1]) for c in closed] == [("features", 4)]


def test_feature_extraction_shows_a_bar_of_its_batches(env):
    """`padded_predict(..., desc=...)` (the backbone features of each training run) shows a bar of its batches
    when progress is on, and none without `desc` or when progress is off; the outputs are the same."""
    clean_env(env)
    import keras
    from tqdm import tqdm

    from cxr.train.batches import padded_predict

    closed = []

    class Recording(tqdm):
        def close(self):
            if not self.disable:
                closed.append((self.desc, self.n))
            super().close()

    env.setattr(progress, "_tqdm", lambda: Recording)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    with_bar = padded_predict(model, x, 8, desc="pneumonia / backbone features (train)")
    assert closed == [("pneumonia / backbone features (train)", 3)]  # 20 rows in 3 padded batches of 8
    closed.clear()
    np.testing.assert_allclose(padded_predict(model, x, 8), with_bar, rtol=1e-6)
    env.setenv("CXR_PROGRESS", "0")
    np.testing.assert_allclose(padded_predict(model, x, 8, desc="features"), with_bar, rtol=1e-6)
    assert closed == []
