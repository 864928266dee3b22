"""The data sources with the REAL kaggle 2.x client, offline: `cxr.data.sources.download` / `resolve_source` drive
the installed `KaggleApi` against a local fake of Kaggle's API (tests/fake_kaggle.py), reached through
KAGGLE_API_ENVIRONMENT=LOCALHOST and an http_proxy on 127.0.0.1. HOME, the Kaggle config folder and every
KAGGLE_* variable are temporary (the real home is never read or written). Also: where credentials are looked for
(checked against the client's own rule), the Kaggle Notebook mount, Colab's kagglehub (a fake module), the
../shared switch and the zip-safety caps of `extract`."""
from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import fake_kaggle
from cxr.data import build_index, sources
from cxr.data.sources import DataUnavailable

HELP_TEXT = "Authentication required to call the Kaggle API"  # the first line of the client's 17-line help


# ----------------------------------------------------------------------------------------------------------------
# A small archive in the Kaggle layout
# ----------------------------------------------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:80]  # 64 px: above the smallest side a 224-px model takes
    a = 120 + 60 * np.sin(x / (3 + seed % 5) + seed) + 40 * np.cos(y / (2 + seed % 7)) + rng.normal(0, 8, (64, 80))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


KAGGLE_FILES = {  # as in Kaggle's archive.zip: chest_xray/ with the nested duplicate and __MACOSX inside
    **{f"chest_xray/train/NORMAL/IM-{p:04d}-0001.jpeg": p for p in range(1, 7)},
    **{f"chest_xray/train/PNEUMONIA/person{p}_bacteria_{p}.jpeg": 100 + p for p in range(1, 7)},
    "chest_xray/val/NORMAL/NORMAL2-IM-1427-0001.jpeg": 200,
    "chest_xray/val/PNEUMONIA/person1946_bacteria_4874.jpeg": 201,
    **{f"chest_xray/test/NORMAL/IM-{100 + p:04d}-0001.jpeg": 300 + p for p in range(1, 4)},
    **{f"chest_xray/test/PNEUMONIA/person{200 + p}_virus_{300 + p}.jpeg": 400 + p for p in range(1, 4)},
    "chest_xray/chest_xray/test/NORMAL/IM-0101-0001.jpeg": 301,
    "chest_xray/__MACOSX/._IM-0001-0001.jpeg": 0,
}
N_KEPT = 6 + 6 + 2 + 3 + 3


def kaggle_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, seed in KAGGLE_FILES.items():
            zf.writestr(name, jpeg(seed) if seed else b"\x00\x05\x16\x07 resource fork")
    return buf.getvalue()


ARCHIVE = kaggle_zip()


def kaggle_tree(base: Path) -> Path:
    """The extracted layout (as a Kaggle Notebook mounts it under /kaggle/input/chest-xray-pneumonia/)."""
    for name, seed in KAGGLE_FILES.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(seed) if seed else b"\x00")
    return base


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------------------------------------------
# The environment: temporary HOME, the fake server, the real client pointed at it
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A temporary HOME with no Kaggle credentials anywhere, no shared copy, no Kaggle mount, not Colab."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in [v for v in os.environ if v.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME", "CXR_DATA",
                                                                        "COLAB_RELEASE_TAG"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CXR_HIDE_SHARED", "1")
    monkeypatch.setattr(sources, "KAGGLE_INPUT_DIRS", (tmp_path / "no-kaggle-input",))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    return home


@pytest.fixture
def fake(home, monkeypatch):
    """The fake Kaggle, the environment that routes the real client to it, and the client imported under it."""
    server = fake_kaggle.FakeKaggle(ARCHIVE)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):  # https too: nothing leaves the machine
        monkeypatch.setenv(var, server.proxy)
    for var in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with sources._client_output():
        extended = importlib.import_module("kaggle.api.kaggle_api_extended")
    # the client reads KAGGLE_API_ENVIRONMENT once, on its first import (maybe earlier in this process)
    monkeypatch.setattr(extended.KaggleApi, "args", ["--local"])
    monkeypatch.setattr(sources, "KAGGLE_RETRIES", 0)  # the client's retries sleep 2, 4, 8 ... s
    monkeypatch.setattr(sources, "KAGGLE_CHUNK_BYTES", 4096)
    yield server
    server.close()


def access_token(home: Path, token: str = fake_kaggle.TOKEN) -> Path:
    path = home / ".kaggle" / "access_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    return path


def legacy_key(folder: Path, key: str = fake_kaggle.KEY) -> Path:
    path = folder / "kaggle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": fake_kaggle.USERNAME, "key": key}))
    path.chmod(0o600)
    return path


def refused(capsys, call, match: str) -> str:
    """Run `call`, expect DataUnavailable whose first line matches; return that line. The output has no help text
    of the client and no credential."""
    with pytest.raises(DataUnavailable) as error:
        call()
    first = str(error.value).splitlines()[0]
    assert match in first, first
    out = capsys.readouterr()
    shown = first + out.out + out.err
    assert HELP_TEXT not in shown and "SystemExit" not in shown
    for secret in (fake_kaggle.TOKEN, fake_kaggle.KEY, "tok-BAD", "key-WRONG"):
        assert secret not in shown
    return first


def data_left(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")) if data.exists() else []


# ----------------------------------------------------------------------------------------------------------------
# Credentials: where the client looks
# ----------------------------------------------------------------------------------------------------------------


def client_configs(home: Path, envs: list[dict[str, str]]) -> list[str]:
    """The kaggle.json path the real client computes under each environment (its class body fixes it on import:
    imported, then reloaded per environment, in a child process)."""
    code = ("import contextlib, importlib, io, json, os, sys\n"
            "base, found = dict(os.environ), []\n"
            "for env in json.loads(sys.argv[1]):\n"
            "    os.environ.clear(); os.environ.update({**base, **env})\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        m = importlib.reload(importlib.import_module('kaggle.api.kaggle_api_extended'))\n"
            "    found.append(m.KaggleApi.config)\n"
            "print(json.dumps(found))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(envs)], env={**clean, "HOME": str(home)},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_credentials_are_looked_for_where_the_client_looks(home, tmp_path, monkeypatch):
    assert sources.kaggle_credentials() is None
    config = tmp_path / "config"
    envs = [{}, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, {"KAGGLE_CONFIG_DIR": str(config)}]
    assert client_configs(home, envs) == [str(home / ".config/kaggle/kaggle.json"),
                                          str(tmp_path / "xdg/kaggle/kaggle.json"), str(config / "kaggle.json")]
    assert not (home / ".kaggle").exists()  # (the client created the others, not this one)
    # no ~/.kaggle on Linux: the client's kaggle.json is ~/.config/kaggle/kaggle.json (or under $XDG_CONFIG_HOME)
    xdg = legacy_key(home / ".config" / "kaggle")
    assert sources.kaggle_config_dir() == xdg.parent
    assert sources.kaggle_credentials() == str(xdg)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert sources.kaggle_credentials() is None
    other = legacy_key(tmp_path / "xdg" / "kaggle")
    assert sources.kaggle_credentials() == str(other)
    monkeypatch.delenv("XDG_CONFIG_HOME")
    # once ~/.kaggle exists, it is the folder (the XDG one is no longer read)
    (home / ".kaggle").mkdir()
    assert sources.kaggle_config_dir() == home / ".kaggle"
    assert client_configs(home, [{}]) == [str(home / ".kaggle" / "kaggle.json")]
    assert sources.kaggle_credentials() is None
    # `kaggle auth login` writes ~/.kaggle/credentials.json (read only with a refresh token)
    oauth = home / ".kaggle" / "credentials.json"
    oauth.write_text(json.dumps({"refresh_token": "", "access_token": "x"}))
    assert sources.kaggle_credentials() is None
    oauth.write_text(json.dumps({"refresh_token": "refresh-SECRET-1", "access_token": "access-SECRET-2"}))
    assert sources.kaggle_credentials() == str(oauth)
    oauth.unlink()
    # $KAGGLE_CONFIG_DIR holds kaggle.json only: an access_token there is never read by the client
    config.mkdir(exist_ok=True)
    (config / "access_token").write_text("tok-IGNORED-123\n")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    assert sources.kaggle_credentials() is None
    legacy_key(config)
    assert sources.kaggle_credentials() == str(config / "kaggle.json")
    (config / "kaggle.json").write_text(json.dumps({"username": "tester"}))  # no key: not a credential ...
    assert sources.kaggle_credentials() is None
    monkeypatch.setenv("KAGGLE_KEY", "key-FROM-ENV-1")  # ... unless $KAGGLE_KEY completes it, as in the client
    assert sources.kaggle_credentials() == str(config / "kaggle.json")
    monkeypatch.delenv("KAGGLE_KEY")
    # access tokens: ~/.kaggle/access_token (always ~/.kaggle), or $KAGGLE_API_TOKEN as a value or a file name
    token = access_token(home)
    assert sources.kaggle_credentials() == str(token)
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(empty))  # a file name: then ~/.kaggle/access_token is not read
    assert sources.kaggle_credentials() is None
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-ENV-123456")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "key-ENV-654321")
    assert sources.kaggle_credentials() == "$KAGGLE_API_TOKEN, $KAGGLE_USERNAME/$KAGGLE_KEY"
    # none of these values is ever printed
    oauth.write_text(json.dumps({"refresh_token": "refresh-SECRET-1"}))
    text = sources._scrub("tok-ENV-123456 key-ENV-654321 refresh-SECRET-1 tok-GOOD-1234567890 tester")
    assert text == "*** *** *** *** ***"


def test_hiding_the_shared_copy(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data"
    (shared / "raw-sample" / "NORMAL").mkdir(parents=True)
    (shared / "raw-sample" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(jpeg(1))
    (shared / sources.SHARED_ZIP_NAME).write_bytes(ARCHIVE)
    checkout = tmp_path / "checkout"  # a checkout beside shared/, as on our machines
    checkout.mkdir()
    monkeypatch.setattr(sources, "REPO_ROOT", checkout)
    monkeypatch.chdir(checkout)
    monkeypatch.delenv("CXR_HIDE_SHARED", raising=False)
    assert shared / sources.SHARED_ZIP_NAME in sources._shared_candidates()
    assert sources.raw_sample_dir() == shared / "raw-sample"
    monkeypatch.setenv("CXR_HIDE_SHARED", "1")
    assert sources._shared_candidates() == []
    assert sources.raw_sample_dir() is None


# ----------------------------------------------------------------------------------------------------------------
# The real client against the fake Kaggle
# ----------------------------------------------------------------------------------------------------------------


def test_download_extracts_indexes_and_is_reused(fake, home, tmp_path, capsys):
    access_token(home)
    data = tmp_path / "data"
    (data / ".download-k2j3h4").mkdir(parents=True)  # a killed download of the old code
    (data / ".download-k2j3h4" / "chest-xray-pneumonia.zip").write_bytes(b"half")
    zip_path = sources.resolve_source("kaggle", data)
    assert zip_path == data / sources.KAGGLE_ZIP_NAME
    assert zip_path.read_bytes() == ARCHIVE
    assert data_left(data) == [sources.KAGGLE_ZIP_NAME, sources.KAGGLE_ZIP_NAME + ".json"]  # no partial, no temp
    # the token checked, the dataset asked for, the redirect followed (the import may check the token once more)
    assert fake.paths()[-3:] == ["/api/v1/security.OAuthService/IntrospectToken",
                                 "/api/v1/datasets.DatasetApiService/DownloadDataset", fake_kaggle.STORAGE]
    assert {r["host"] for r in fake.requests} == {"localhost"}  # the client's LOCALHOST endpoint, via the proxy
    out = capsys.readouterr()
    assert fake_kaggle.TOKEN not in out.out + out.err and HELP_TEXT not in out.out + out.err
    root = sources.extract(zip_path, data / "extracted" / "chest-xray-pneumonia")
    assert root == data / "extracted" / "chest-xray-pneumonia" / "chest_xray"
    index, skipped = build_index(root, workers=1)
    assert len(index) == N_KEPT and skipped.empty
    assert dict(index["official_split"].value_counts()) == {"train": 12, "test": 6, "val": 2}
    # a verified download is reused: no request at all, no credentials needed
    fake.requests.clear()
    access_token(home).unlink()
    assert sources.resolve_source(None, data) == zip_path
    assert sources.download(data) == zip_path
    assert sources.resolve_source("kaggle", data) == zip_path
    assert fake.requests == []


@pytest.mark.parametrize("plain", [False, True], ids=["json-401", "plain-401"])
def test_refused_key_is_one_line_by_status_code(fake, home, tmp_path, capsys, plain):
    fake.plain_errors = plain
    config = legacy_key(home / ".kaggle", key="key-WRONG-000000")
    data = tmp_path / "data"
    first = refused(capsys, lambda: sources.download(data),
                    f"Kaggle refused the credentials in {config} (HTTP 401: ")
    assert ("Unauthorized" if plain else "Unauthenticated") in first
    assert data_left(data) == []  # nothing half-written
    # resolve_source without "kaggle" falls back to the sample with the same one line
    assert sources.resolve_source(None, data) == sources.SAMPLE_ZIP
    assert f"Kaggle refused the credentials in {config}" in capsys.readouterr().err


@pytest.mark.parametrize("answer", ["inactive", "401"])
def test_refused_token_is_one_line_without_the_clients_help(fake, home, tmp_path, capsys, monkeypatch, answer):
    fake.introspect = answer
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-BAD-1111111111")
    stdin = sys.stdin
    first = refused(capsys, lambda: sources.download(tmp_path / "data"),
                    "Kaggle refused the credentials in $KAGGLE_API_TOKEN")
    assert sys.stdin is stdin  # the client's exit() closed a stand-in, not ours
    assert "IntrospectToken" in fake.paths()[-1]
    assert not any("DownloadDataset" in p for p in fake.paths())
    assert ("HTTP 401" in first) == (answer == "401")
    assert data_left(tmp_path / "data") == []


def test_dataset_not_found(fake, home, tmp_path, capsys):
    access_token(home)
    fake.mode = "404"
    refused(capsys, lambda: sources.download(tmp_path / "data"),
            "Kaggle dataset paultimothymooney/chest-xray-pneumonia not found (HTTP 404: Not found)")
    fake.plain_errors = True
    refused(capsys, lambda: sources.download(tmp_path / "data"), "not found (HTTP 404: 404 Client Error")
    assert data_left(tmp_path / "data") == []


def test_body_that_is_not_a_zip(fake, home, tmp_path, capsys):
    access_token(home)
    fake.mode = "not-zip"
    first = refused(capsys, lambda: sources.download(tmp_path / "data"), "is not a zip archive")
    assert "removed" in first
    assert data_left(tmp_path / "data") == []


def test_truncated_transfer_without_resume_support_leaves_nothing(fake, home, tmp_path, capsys):
    access_token(home)
    fake.mode, fake.validator = "truncated", False
    first = refused(capsys, lambda: sources.download(tmp_path / "data"),
                    "Downloading paultimothymooney/chest-xray-pneumonia with Kaggle failed (")
    assert "resume" not in first
    assert data_left(tmp_path / "data") == []


def test_truncated_transfer_is_kept_and_resumed(fake, home, tmp_path, capsys):
    access_token(home)
    data = tmp_path / "data"
    fake.mode = "truncated"
    first = refused(capsys, lambda: sources.download(data), "Downloading paultimothymooney/chest-xray-pneumonia")
    assert "kept in" in first and "(the download resumes)" in first
    partial = data / sources.PARTIAL_DIR / sources.KAGGLE_ZIP_NAME
    assert not (data / sources.KAGGLE_ZIP_NAME).exists()
    size = partial.stat().st_size
    assert 0 < size < len(ARCHIVE) and ARCHIVE.startswith(partial.read_bytes())
    fake.mode = "ok"
    fake.requests.clear()
    assert sources.download(data).read_bytes() == ARCHIVE
    ranged = [r for r in fake.requests if r["range"]]
    assert [(r["range"], r["if_range"]) for r in ranged] == [(f"bytes={size}-", fake.etag)]
    assert data_left(data) == [sources.KAGGLE_ZIP_NAME, sources.KAGGLE_ZIP_NAME + ".json"]
    assert "resuming the partial download" in capsys.readouterr().out


def test_killed_download_is_resumed(fake, home, tmp_path, capsys):
    """A download killed mid-transfer (SIGKILL, in a child process) is continued by the next one with a range
    request; the final zip is complete and no partial is left."""
    access_token(home)
    data = tmp_path / "data"
    fake.mode = "stall"
    code = ("import sys; import cxr.data.sources as s; s.KAGGLE_RETRIES = 0; s.KAGGLE_CHUNK_BYTES = 4096; "
            "s.download(sys.argv[1])")
    child = subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=dict(os.environ))
    partial = data / sources.PARTIAL_DIR / sources.KAGGLE_ZIP_NAME
    try:
        assert fake.half_sent.wait(timeout=60)
        deadline = time.monotonic() + 20
        while not (partial.is_file() and partial.stat().st_size >= 4096) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        child.kill()
        child.wait(timeout=10)
    fake.release.set()
    size = partial.stat().st_size
    assert 0 < size < len(ARCHIVE)
    assert Path(str(partial) + ".kaggle-partial").is_file()  # the client's record of what it was fetching
    assert not (data / sources.KAGGLE_ZIP_NAME).exists()
    fake.mode = "ok"
    fake.requests.clear()
    zip_path = sources.resolve_source(None, data)  # credentials exist: the download is resumed
    assert zip_path == data / sources.KAGGLE_ZIP_NAME and zip_path.read_bytes() == ARCHIVE
    assert [r["range"] for r in fake.requests if r["range"]] == [f"bytes={size}-"]
    assert data_left(data) == [sources.KAGGLE_ZIP_NAME, sources.KAGGLE_ZIP_NAME + ".json"]
    assert sources.download(data) == zip_path  # verified: reused


def test_a_second_download_into_the_same_folder_is_refused(fake, home, tmp_path, capsys):
    access_token(home)
    data = tmp_path / "data"
    lock = data / sources.PARTIAL_DIR / ".lock"
    lock.parent.mkdir(parents=True)
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(capsys, lambda: sources.download(data), "Another process is downloading")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert fake_kaggle.STORAGE not in fake.paths()
    assert sources.download(data).read_bytes() == ARCHIVE  # once the other process is gone
    assert data_left(data) == [sources.KAGGLE_ZIP_NAME, sources.KAGGLE_ZIP_NAME + ".json"]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m cxr ...` in a fresh process (so the client is imported there, under the test's environment)."""
    return subprocess.run([sys.executable, "-m", "cxr", *args], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def test_cli_index_kaggle_one_line_refusal_then_download(fake, home, tmp_path, monkeypatch, capsys):
    """`python -m cxr index kaggle` in a fresh process, where the client authenticates already on import (and
    prints its help there too): a refused token is the command's whole output, one error line; with a good token
    the download is indexed."""
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-BAD-1111111111")
    done = cli(tmp_path, "index", "kaggle", "--out", "index.csv")
    assert done.returncode == 2
    assert done.stderr.startswith("error: Kaggle refused the credentials in $KAGGLE_API_TOKEN: ")
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
    assert "tok-BAD" not in done.stderr and not (tmp_path / "index.csv").exists()
    assert data_left(tmp_path / "data") == []
    assert fake.paths().count("/api/v1/security.OAuthService/IntrospectToken") == 2  # on import, then by us
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.TOKEN)
    monkeypatch.chdir(tmp_path)
    from cxr.__main__ import main

    assert main(["index", "kaggle", "--out", "index.csv"]) == 0  # (in this process, to save a start)
    assert (tmp_path / "data" / sources.KAGGLE_ZIP_NAME).read_bytes() == ARCHIVE
    assert len((tmp_path / "index.csv").read_text().strip().splitlines()) == 1 + N_KEPT
    out = capsys.readouterr()
    assert HELP_TEXT not in out.out + out.err and fake_kaggle.TOKEN not in out.out + out.err


# ----------------------------------------------------------------------------------------------------------------
# Kaggle Notebooks, Colab
# ----------------------------------------------------------------------------------------------------------------


def test_kaggle_notebook_input_is_found_and_read_in_place(home, tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "kaggle" / "input"
    mount = kaggle_tree(inputs / "chest-xray-pneumonia")
    for path in sorted(mount.rglob("*"), reverse=True) + [mount]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # read-only, as Kaggle mounts it
    monkeypatch.setattr(sources, "KAGGLE_INPUT_DIRS", (tmp_path / "kaggle" / "nothing", inputs))
    monkeypatch.setattr(sources, "_shared_candidates", lambda: [tmp_path / "shared.zip"])
    (tmp_path / "shared.zip").write_bytes(ARCHIVE)  # the mount comes first
    before = snapshot(mount)
    data = tmp_path / "data"
    root = sources.resolve_source(None, data)
    assert root == mount / "chest_xray"  # not the nested chest_xray/chest_xray/
    assert "attached to this Kaggle Notebook" in capsys.readouterr().out
    assert sources.extract(root, data / "extracted" / "chest_xray") == root
    index, _ = build_index(root, workers=1)
    assert len(index) == N_KEPT
    assert snapshot(mount) == before and not data.exists()  # nothing written into the input, nor extracted
    monkeypatch.setenv("CXR_DATA", str(tmp_path / "shared.zip"))  # $CXR_DATA comes before the mount
    assert sources.resolve_source(None, data) == tmp_path / "shared.zip"
    for path in [mount, *mount.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)


def fake_kagglehub(monkeypatch, folder: Path | None, error: Exception | None = None) -> list[str]:
    calls: list[str] = []

    def dataset_download(handle: str) -> str:
        calls.append(handle)
        if error is not None:
            raise error
        return str(folder)

    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download))
    return calls


def test_colab_uses_kagglehub_when_credentials_exist(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    cache = kaggle_tree(tmp_path / "kagglehub" / "datasets" / "paultimothymooney" / "chest-xray-pneumonia" / "2")
    calls = fake_kagglehub(monkeypatch, cache)
    data = tmp_path / "data"
    assert sources.resolve_source(None, data) == sources.SAMPLE_ZIP  # no credentials: kagglehub is not asked
    assert calls == []
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-COLAB-1234567")
    assert sources.resolve_source(None, data) == cache
    assert calls == ["paultimothymooney/chest-xray-pneumonia"]
    assert sources.extract(cache, data / "extracted" / "2") == cache / "chest_xray"
    assert not data.exists()
    # a refusal from kagglehub (an HTTPError with the response) is the same one line
    response = requests.Response()
    response.status_code = 401
    fake_kagglehub(monkeypatch, None, requests.HTTPError("401 Client Error: Unauthorized tok-COLAB-1234567",
                                                         response=response))
    capsys.readouterr()
    first = refused(capsys, lambda: sources.resolve_source("kaggle", data),
                    "kagglehub refused the credentials in $KAGGLE_API_TOKEN (HTTP 401")
    assert "tok-COLAB" not in first


# ----------------------------------------------------------------------------------------------------------------
# Zip safety: caps before extraction, and on the bytes written
# ----------------------------------------------------------------------------------------------------------------


def zip_with(path: Path, extra: dict[str, bytes | int]) -> Path:
    """The Kaggle archive plus entries: bytes, or an int = that many zero bytes, streamed (a compression bomb)."""
    path.write_bytes(ARCHIVE)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in extra.items():
            if isinstance(payload, int):
                with zf.open(name, "w", force_zip64=True) as out:
                    block = bytes(1 << 20)
                    for _ in range(payload >> 20):
                        out.write(block)
            else:
                zf.writestr(name, payload)
    return path


def test_extract_skips_entries_over_the_caps_before_writing(tmp_path, capsys, monkeypatch):
    archive = zip_with(tmp_path / "bomb.zip", {"chest_xray/train/NORMAL/IM-0900-0001.jpeg": 100 << 20,
                                               "chest_xray/train/NORMAL/IM-0901-0001.jpeg": 2 << 20,
                                               "chest_xray/train/NORMAL/IM-0902-0001.jpeg": bytes(4000)})
    assert archive.stat().st_size < 1 << 20  # 102 MiB declared in a few hundred KB
    written: list[str] = []
    real = sources._extract_entry
    monkeypatch.setattr(sources, "_extract_entry",
                        lambda zf, info, target: written.append(info.filename) or real(zf, info, target))
    root = sources.extract(archive, tmp_path / "out")
    message = capsys.readouterr().out
    assert "1 over 64 MiB" in message and "1 compressed over 100:1" in message
    assert "Extracted 21 files" in message  # the 20 images and the small (harmless) zero file
    assert "chest_xray/train/NORMAL/IM-0900-0001.jpeg" not in written  # refused from the header, never opened
    assert "chest_xray/train/NORMAL/IM-0901-0001.jpeg" not in written
    assert not (root / "train/NORMAL/IM-0900-0001.jpeg").exists()
    assert (root / "train/NORMAL/IM-0902-0001.jpeg").stat().st_size == 4000
    done = json.loads((tmp_path / "out" / ".extracted.json").read_text())
    assert done["left_out"]["over 64 MiB"] == 1
    assert sources.extract(archive, tmp_path / "out") == root  # reused
    assert capsys.readouterr().out == ""


def test_extract_bounds_the_bytes_of_a_lying_header(tmp_path, capsys, monkeypatch):
    payload = np.random.default_rng(0).bytes(300_000)
    archive = zip_with(tmp_path / "liar.zip", {"chest_xray/train/NORMAL/IM-0903-0001.jpeg": payload})
    raw = bytearray(archive.read_bytes())
    name = b"chest_xray/train/NORMAL/IM-0903-0001.jpeg"
    at = max(i for i in range(len(raw)) if raw.startswith(b"PK\x01\x02", i) and raw[i + 46: i + 46 + len(name)] == name)
    raw[at + 24: at + 28] = (1000).to_bytes(4, "little")  # the central directory now declares 1000 bytes
    archive.write_bytes(bytes(raw))
    root = sources.extract(archive, tmp_path / "out")
    message = capsys.readouterr().out
    assert "1 corrupt in the archive (BadZipFile)" in message  # zipfile stops at 1000 bytes: the CRC fails
    assert not (root / "train/NORMAL/IM-0903-0001.jpeg").exists()
    assert len(build_index(root, workers=1)[0]) == N_KEPT
    # the writer itself stops at the cap, whatever the decompressor gives (CPython's stops at the declared size)
    monkeypatch.setattr(sources, "MAX_ENTRY_BYTES", 1000)
    with zipfile.ZipFile(zip_with(tmp_path / "plain.zip", {"chest_xray/train/NORMAL/x.jpeg": payload})) as zf:
        target = tmp_path / "x.jpeg"
        problem = sources._extract_entry(zf, zf.getinfo("chest_xray/train/NORMAL/x.jpeg"), target)
    assert problem == "more bytes than declared (or allowed)" and not target.exists()


def test_extract_refuses_an_archive_declaring_too_much(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 20_000)
    with pytest.raises(DataUnavailable, match="zip bomb; nothing was extracted"):
        sources.extract(zip_with(tmp_path / "a.zip", {}), tmp_path / "out")
    assert not (tmp_path / "out").exists()
