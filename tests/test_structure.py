"""The package's shape: no import cycles, no global side effects on import or construction."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "cxr"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the cxr modules it imports (at any level, function-level imports included), from the source."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "sample" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert {"cxr.io", "cxr.config", "cxr.data", "cxr.data.split", "cxr.explain.cam", "cxr.pipeline"} <= set(graph)
    assert graph["cxr.io"] == set() and graph["cxr.presets"] == set()  # the bottom layer
    assert graph["cxr.config"] <= {"cxr.io", "cxr.presets"}  # the Config reads its named override sets
    assert find_cycle(graph) is None, find_cycle(graph)


NUMBERS = ("cxr/data", "cxr/evaluate", "cxr/explain", "cxr/train", "cxr/plots", "cxr/model.py")  # return numbers
REPORTING = PACKAGE / "reporting"


def _describe_functions(path: Path) -> list[str]:
    """The functions named describe_* that a module defines, at any level."""
    return [n.name for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("describe_")]


def test_numbers_modules_hold_no_words_and_never_import_reporting():
    """Numbers separate from words (issue 24): no module of data/, evaluate/, explain/, train/, plots/ or model.py
    defines a describe_* function or imports cxr.reporting (at any level); every describe_* of the package lives in
    cxr/reporting, whose modules stay under 500 lines."""
    graph = import_graph()
    numbers = [p for part in NUMBERS for p in ([REPO / part] if part.endswith(".py") else sorted((REPO / part).rglob("*.py")))]
    assert len(numbers) > 20 and all(p.is_file() for p in numbers)
    words = {_module_name(p): found for p in numbers if (found := _describe_functions(p))}
    assert not words, f"describe_* outside cxr.reporting (move them there): {words}"
    upward = {_module_name(p): sorted(d for d in graph[_module_name(p)] if d.split(".")[:2] == ["cxr", "reporting"])
              for p in numbers}
    assert not {k: v for k, v in upward.items() if v}, f"numbers modules importing cxr.reporting: {upward}"
    elsewhere = {_module_name(p): found for p in PACKAGE.rglob("*.py")
                 if REPORTING not in p.parents and (found := _describe_functions(p))}
    assert not elsewhere, f"describe_* outside cxr.reporting: {elsewhere}"
    ours = sorted(REPORTING.glob("*.py"))
    assert sum(len(_describe_functions(p)) for p in ours) >= 30  # the package's sentences are all here
    long = {p.name: n for p in ours if (n := len(p.read_text().splitlines())) >= 500}
    assert not long, f"cxr.reporting modules of 500 lines or more: {long}"
    assert not (PACKAGE / "report.py").exists()  # one home: no compatibility module


def test_every_module_imports_alone_and_leaves_keras_and_matplotlib_state_alone():
    """Each module imports in a fresh interpreter; importing everything and building a RunLog changes neither
    Keras' dtype policy nor matplotlib's rc parameters."""
    names = sorted(import_graph())
    code = f"""
import importlib, json, os, tempfile
names = {names!r}
import matplotlib
before = dict(matplotlib.rcParams)
for n in names:
    importlib.import_module(n)
import keras
from cxr.config import Config
from cxr.reporting import RunLog
RunLog(Config.preset("smoke", output_dir=tempfile.mkdtemp(), mixed_precision="on"))
from cxr import plots
import numpy as np, pandas as pd
plots.confusion_matrix([[3, 1], [2, 4]], ["a", "b"])
changed = sorted(k for k, v in matplotlib.rcParams.items() if str(before.get(k)) != str(v) and k != "backend")
print(json.dumps({{"policy": keras.mixed_precision.global_policy().name, "rc": changed}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["policy"] == "float32"
    assert result["rc"] == []


def test_the_wheel_holds_every_subpackage_and_the_sample(tmp_path):
    """`pip install .` (not editable) gets the whole package: build the wheel from a copy of the sources and check
    that every package under cxr/ (every folder with an __init__.py) and the bundled sample are inside it."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"
    shutil.copytree(REPO / "cxr", source / "cxr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("cxr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "cxr").rglob("__init__.py"))
    assert {"cxr", "cxr/train", "cxr/data", "cxr/evaluate", "cxr/explain", "cxr/plots"} <= set(packages)
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"subpackages missing from the wheel: {missing}"
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "cxr").rglob("*.py") if "__pycache__" not in str(p))
    assert not [m for m in modules if m not in names]
    assert "cxr/sample/chest-xray-sample.zip" in names
