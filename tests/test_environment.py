"""environment.yml (the conda route) in step with pyproject.toml (the pip route): the same packages, the same pins."""
from __future__ import annotations

import re
import tomllib

import yaml  # PyYAML: a dependency of papermill
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

# in environment.yml without being a dependency of the package: the interpreter and its installer
CONDA_ONLY = {"python", "pip"}
# extras that environment.yml must carry in full (the runtime dependencies always): `make lab`'s
REQUIRED_EXTRAS = ("lab",)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(project: dict, extras: tuple[str, ...]) -> dict[str, Requirement]:
    """The runtime dependencies and those of `extras`, by canonical name (self-references like cxr[test] left out)."""
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    out = {}
    for text in reqs:
        req = Requirement(text)
        if canonicalize_name(req.name) != canonicalize_name(project["name"]):
            out[canonicalize_name(req.name)] = req
    return out


def _conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """A conda match spec written the pip way (`name>=1.2`, `name==1.2`, `name`) -> (canonical name, specifier)."""
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", text.strip())
    assert m, f"environment.yml: cannot read {text!r}"
    name, spec = m.groups()
    assert not re.fullmatch(r"=[^=].*", spec), f"environment.yml: write {text!r} with >= or == (as in pyproject.toml)"
    return canonicalize_name(name), SpecifierSet(spec)


def _environment() -> tuple[dict[str, SpecifierSet], dict[str, Requirement], list[str], str]:
    """(conda packages, pip packages, other pip lines such as `-e .`, the python pin) of environment.yml."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, pip, other, python = {}, {}, [], ""
    for item in env["dependencies"]:
        if isinstance(item, dict):
            for line in item["pip"]:
                if line.startswith("-"):
                    other.append(line)
                else:
                    req = Requirement(line)
                    assert canonicalize_name(req.name) not in pip, f"{req.name} twice under pip:"
                    pip[canonicalize_name(req.name)] = req
            continue
        if item.startswith("python"):
            python = item.split("=", 1)[1]
            continue
        name, spec = _conda_spec(item)
        assert name not in conda, f"{name} twice in environment.yml"
        conda[name] = spec
    return conda, pip, other, python


def test_environment_has_every_dependency_and_the_lab_extra_with_the_same_pins():
    conda, pip, other, _ = _environment()
    for name, req in _requirements(_pyproject(), REQUIRED_EXTRAS).items():
        where = [w for w, section in (("conda", conda), ("pip", pip)) if name in section]
        assert len(where) == 1, f"{req} of pyproject.toml is in environment.yml {where or 'nowhere'}"
        spec = conda[name] if name in conda else pip[name].specifier
        assert spec == req.specifier, f"{name}: environment.yml pins {spec or 'nothing'}, pyproject.toml {req.specifier or 'nothing'}"
        if name in pip:
            assert pip[name].extras == req.extras, name
    assert "-e ." in other  # the package itself, editable, as `make` installs it


def test_environment_has_nothing_pyproject_lacks():
    project = _pyproject()
    everything = _requirements(project, tuple(project["optional-dependencies"]))
    conda, pip, _, _ = _environment()
    for name, spec in [*conda.items(), *((n, r.specifier) for n, r in pip.items())]:
        if name in CONDA_ONLY:
            continue
        assert name in everything, f"environment.yml has {name}, which pyproject.toml does not declare"
        assert spec == everything[name].specifier, f"{name}: environment.yml {spec}, pyproject.toml {everything[name].specifier}"


def test_environment_python_satisfies_requires_python():
    *_, python = _environment()
    assert python, "environment.yml pins no python"
    assert Version(python) in SpecifierSet(_pyproject()["requires-python"])


def test_lab_extra_brings_jupyterlab_and_widgets():
    """`make lab` / pip install -e '.[lab]': JupyterLab 4 and ipywidgets 8 (tqdm.auto's widget bars)."""
    lab = _requirements(_pyproject(), ("lab",))
    assert Version("4.0") in lab["jupyterlab"].specifier and Version("3.6") not in lab["jupyterlab"].specifier
    assert Version("8.0") in lab["ipywidgets"].specifier and Version("7.8") not in lab["ipywidgets"].specifier
    makefile = (REPO / "Makefile").read_text()
    assert '-e ".[lab]"' in makefile and "ipykernel install --sys-prefix --name cxr" in makefile
    assert re.search(r"^lab: .*\n\t\$\(VENV\)/bin/jupyter lab notebook\.ipynb", makefile, re.M)
