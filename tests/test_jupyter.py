"""The notebook the way a person runs it: a Jupyter server on 127.0.0.1 (token, temporary folders), a kernel started
through its REST API, the notebook's first cells sent over the kernel's websocket as JupyterLab sends them, in smoke
mode on the bundled sample; real outputs asserted (the header, the data cell, a table, one inline figure, progress)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebook.ipynb"
CELL_TIMEOUT = 120.0  # seconds for one cell (importing TensorFlow on 2 busy cores is the slowest)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict | None:
    """One call of the server's REST API (the token in the header, as JupyterLab sends it)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


@pytest.fixture
def jupyter_server(tmp_path):
    """(base URL, token) of a `jupyter server` on 127.0.0.1 rooted in the repository, with its config, data and
    runtime folders in tmp_path and the environment of a person's session (no CI, pytest or progress switches)."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "PYTEST_CURRENT_TEST", "CXR_PROGRESS", "TQDM_DISABLE", "MPLBACKEND")}
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / name.lower())
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
         f"--ServerApp.root_dir={REPO}", "--ServerApp.shutdown_no_activity_timeout=600",
         "--MappingKernelManager.cull_idle_timeout=600", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _request(base, token, "GET", "/api/status")
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "jupyter server did not answer within 60 s"
                time.sleep(0.3)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


async def _execute(ws, code: str, session: str) -> dict:
    """Send `code` as JupyterLab does (execute_request on the shell channel) and gather the replies: its iopub
    messages, in order, until the kernel is idle again, and the execute_reply."""
    msg_id = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": session,
                   "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    iopub, reply, idle = [], None, False
    while reply is None or not idle:
        raw = await asyncio.wait_for(ws.read_message(), CELL_TIMEOUT)
        assert raw is not None, "the kernel's websocket closed"
        if isinstance(raw, bytes):  # a binary frame (buffers of a widget message): not ours to read
            continue
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
            reply = msg["content"]
        elif msg["channel"] == "iopub":
            if msg["msg_type"] == "status":
                idle = msg["content"]["execution_state"] == "idle"
            else:
                iopub.append(msg)
    return {"reply": reply, "iopub": iopub}


def _text(result: dict, name: str) -> str:
    return "".join(m["content"]["text"] for m in result["iopub"]
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def _data(result: dict, mime: str) -> list:
    return [m["content"]["data"][mime] for m in result["iopub"]
            if m["msg_type"] in ("display_data", "execute_result", "update_display_data")
            and mime in m["content"].get("data", {})]


def _first_cells() -> list[str]:
    """The sources of the notebook's code cells up to the first one that shows a figure (section 1's class
    balance), papermill's injected cell (if any) left out."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"
             and "injected-parameters" not in c["metadata"].get("tags", [])]
    sources = ["".join(c["source"]) for c in cells]
    last = next(i for i, s in enumerate(sources) if "log.show(" in s)
    return sources[:last + 1]


def test_notebook_first_cells_run_in_a_jupyter_server_kernel(jupyter_server, tmp_path):
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    from cxr.data import SAMPLE_ZIP

    base, token = jupyter_server
    sources = _first_cells()
    assert sources[0].startswith("REPO_URL = ") and "MODE = " in sources[1] and "study.data(" in sources[3]
    # what a person types into the parameters cell (the notebook's own cell runs first, as in "Run All")
    parameters = (f'MODE = "smoke"\nSETTINGS = {{"source": {str(SAMPLE_ZIP)!r}, '
                  f'"output_dir": {str(tmp_path / "run")!r}, "data_dir": {str(tmp_path / "data")!r}}}')
    kernel = _request(base, token, "POST", "/api/kernels", {"name": "python3", "path": ""})
    assert kernel["execution_state"] in ("starting", "idle", "busy")

    async def run_all() -> list[dict]:
        url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel['id']}/channels"
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}),
                                     max_message_size=256 * 1024 * 1024)
        session = uuid.uuid4().hex
        try:
            results = []
            # last: the data cell again with progress switched off, as the headless runner switches it off
            headless = 'import os\nos.environ["CXR_PROGRESS"] = "0"\n' + sources[3]
            for code in [sources[0], sources[1], parameters, *sources[2:], headless]:
                results.append(await _execute(ws, code, session))
                assert results[-1]["reply"]["status"] == "ok", (code[:200], results[-1]["reply"])
            return results
        finally:
            ws.close()

    try:
        results = asyncio.run(asyncio.wait_for(run_all(), 600))
    finally:
        _request(base, token, "DELETE", f"/api/kernels/{kernel['id']}")
    setup, _, _, header, prep, summary, balance = results[:7]
    assert _text(setup, "stdout") == "cxr is importable: nothing to install\n"  # cxr imports: nothing done
    headers = [t for t in _data(header, "text/plain") if "Keras backend:" in t]
    assert headers and "mode: smoke" in headers[0] and "hardware:" in headers[0]
    assert "chest-xray-sample.zip" in _text(prep, "stdout") and "readable images found" in _text(prep, "stdout")
    assert "bundled 104-image sample" in _data(prep, "text/plain")[-1]  # note_data updated the header in place
    html = _data(summary, "text/html")
    assert html and "<table" in html[0] and "NORMAL" in html[0] and "PNEUMONIA" in html[0]
    assert len(_data(balance, "image/png")) == 1  # shown once, with the kernel's own (inline) matplotlib backend
    # progress in a person's session: tqdm.auto widgets with ipywidgets (the lab extra), text bars without
    widgets = _data(prep, "application/vnd.jupyter.widget-view+json")
    if importlib.util.find_spec("ipywidgets") is not None:
        assert widgets, "no progress widget in the data cell"
        assert all(m["msg_type"] != "stream" or "%|" not in m["content"]["text"] for m in prep["iopub"])
    else:
        assert not widgets and "%|" in _text(prep, "stderr")
    quiet = results[-1]
    assert "readable images found" in _text(quiet, "stdout")
    assert not _data(quiet, "application/vnd.jupyter.widget-view+json") and "%|" not in _text(quiet, "stderr")
    for result in results:
        assert not [m for m in result["iopub"] if m["msg_type"] == "error"]
    assert (tmp_path / "run" / "figures" / "class_balance.png").stat().st_size > 1000


SLUG = r"([A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+)"
BADGE_LINKS = (rf"https://colab\.research\.google\.com/github/{SLUG}/blob/([\w.\-]+)/notebook\.ipynb",
               rf"https://kaggle\.com/kernels/welcome\?src=https://github\.com/{SLUG}/blob/([\w.\-]+)/notebook\.ipynb")


def test_colab_and_kaggle_links_and_repo_url_name_one_repository():
    """The README's badges, the notebook's badges and the setup cell's REPO_URL point at the same repository."""
    import re

    nb = json.loads(NOTEBOOK.read_text())
    title = "".join(nb["cells"][0]["source"])
    setup = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    readme = (REPO / "README.md").read_text()
    found = set()
    for text in (readme, title):
        for pattern in BADGE_LINKS:
            links = re.findall(pattern, text)
            assert links, (pattern, text[:200])
            found |= set(links)
    url = re.match(rf'REPO_URL = "https://github\.com/{SLUG}"', setup)
    assert url, setup[:200]
    assert {slug for slug, _ in found} == {url.group(1)} and len({branch for _, branch in found}) == 1
    assert "open-in-kaggle.svg" in title and "colab-badge.svg" in title


def _run_setup_cell(tmp_path, repo_url: str | None = None) -> subprocess.CompletedProcess:
    """The notebook's first code cell in a fresh interpreter in tmp_path where `cxr` cannot be found (as on a fresh
    Colab or Kaggle session), REPO_URL optionally replaced."""
    nb = json.loads(NOTEBOOK.read_text())
    source = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    if repo_url is not None:
        source = source.replace('REPO_URL = "https://github.com/OWNER/REPO"', f"REPO_URL = {repo_url!r}", 1)
    harness = "import sys\nsys.modules['cxr'] = None  # importlib.util.find_spec('cxr') is then None\n" + source
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_DATA",)}
    return subprocess.run([sys.executable, "-c", harness], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


def test_setup_cell_without_cxr_and_the_placeholder_url_says_what_to_set(tmp_path):
    done = _run_setup_cell(tmp_path)
    assert done.returncode == 1
    assert "RuntimeError: cxr is not installed: set REPO_URL at the top of this cell" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing cloned, nothing installed


def test_setup_cell_without_cxr_reports_a_failed_clone(tmp_path):
    """A REPO_URL that cannot be cloned stops the cell (git's own message), before any pip install."""
    done = _run_setup_cell(tmp_path, repo_url=str(tmp_path / "no-such-repo"))
    assert done.returncode == 1 and "CalledProcessError" in done.stderr and "git" in done.stderr
    assert "pip" not in done.stderr.split("CalledProcessError", 1)[1]
